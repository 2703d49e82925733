"""fastseg.ops.components against cc3d, scipy.ndimage, nnunetv2 and hand-made cases."""

from __future__ import annotations

import contextlib
import ctypes

import cc3d
import numpy as np
import pytest
import torch
from helpers import requires_cuda_kernels, smooth_labels
from hypothesis import given, settings
from hypothesis import strategies as st
from nilearn import datasets as nilearn_datasets
from nnunetv2.postprocessing import remove_connected_components
from scipy import ndimage

from fastseg.ops import components as cc_ops
from fastseg.ops.components import (
    component_stats,
    connected_components,
    fill_holes,
    remove_all_but_largest_component,
)
from fastseg.threads import get_num_threads, num_threads


# scipy structures per connectivity: 3D faces / edges / corners, 2D edges / corners.
STRUCTURES = {
    6: ndimage.generate_binary_structure(3, 1),
    18: ndimage.generate_binary_structure(3, 2),
    26: ndimage.generate_binary_structure(3, 3),
    4: ndimage.generate_binary_structure(2, 1),
    8: ndimage.generate_binary_structure(2, 2),
}


def canonical(labels: np.ndarray) -> np.ndarray:
    """Each voxel's component named by the raster index of the component's first voxel (-1: background).
    Two labellings describe the same partition exactly when their canonical forms are equal."""
    flat = np.asarray(labels).ravel().astype(np.int64)
    if flat.size == 0:
        return flat
    values, first = np.unique(flat, return_index=True)
    lut = np.full(int(values.max()) + 1, -1, dtype=np.int64)
    lut[values] = first
    lut[0] = -1
    return lut[flat]


def assert_raster_numbered(labels: np.ndarray, n: int) -> None:
    """Labels are exactly 1..n, in the raster order of each component's first voxel."""
    flat = labels.ravel()
    values, first = np.unique(flat, return_index=True)
    values, first = values[values != 0], first[values != 0]
    assert np.array_equal(values, np.arange(1, n + 1))
    assert np.all(np.diff(first) > 0)


def scipy_multilabel(x: np.ndarray, connectivity: int) -> np.ndarray:
    """scipy.ndimage.label applied per nonzero value, the label sets offset to stay distinct."""
    out = np.zeros(x.shape, dtype=np.int64)
    offset = 0
    for value in np.unique(x):
        if value == 0:
            continue
        lab, n = ndimage.label(x == value, STRUCTURES[connectivity])
        out[lab > 0] = lab[lab > 0] + offset
        offset += n
    return out


def check_labelling(x: np.ndarray, connectivity: int, *, with_cc3d: bool = True) -> None:
    labels, n = connected_components(x, connectivity)
    assert labels.shape == x.shape and labels.dtype == np.uint32
    if with_cc3d:
        ref, ref_n = cc3d.connected_components(x, connectivity=connectivity, return_N=True)
        assert n == ref_n
        assert np.array_equal(canonical(labels), canonical(ref))
    sp = ndimage.label(x, STRUCTURES[connectivity])[0] if x.dtype == bool else scipy_multilabel(x, connectivity)
    assert np.array_equal(canonical(labels), canonical(sp))
    assert_raster_numbered(labels, n)


# --- partitions against cc3d and scipy -----------------------------------------------------------


@pytest.mark.parametrize("density", [0.05, 0.2, 0.5, 0.8])
@pytest.mark.parametrize("connectivity", [26, 18, 6])
def test_noise_3d(rng, density, connectivity):
    x = rng.random((23, 37, 41)) < density
    check_labelling(x, connectivity)


@pytest.mark.parametrize("density", [0.2, 0.5, 0.7])
@pytest.mark.parametrize("connectivity", [8, 4])
def test_noise_2d(rng, density, connectivity):
    x = rng.random((117, 131)) < density
    check_labelling(x, connectivity)


@pytest.mark.parametrize(
    "dtype,values",
    [
        pytest.param(np.uint8, [0, 1, 2, 255], id="uint8"),
        pytest.param(np.int8, [0, -1, 3, -128], id="int8-negative"),
        pytest.param(np.int16, [0, 1, 2, 3], id="int16"),
        pytest.param(np.uint16, [0, 7, 65535], id="uint16-max"),
        pytest.param(np.int32, [0, -5, 2**30], id="int32"),
        pytest.param(np.uint32, [0, 1, 2**32 - 1], id="uint32-max"),
        pytest.param(np.int64, [0, -(2**40), 2**62, 5], id="int64"),
        pytest.param(np.uint64, [0, 2**64 - 1, 2**63], id="uint64-max"),
    ],
)
@pytest.mark.parametrize("connectivity", [26, 6])
def test_multilabel_dtypes(rng, dtype, values, connectivity):
    x = rng.choice(np.array(values, dtype=dtype), size=(19, 22, 25), p=None)
    check_labelling(x, connectivity)


@pytest.mark.parametrize("connectivity", [26, 18, 6])
def test_smooth_label_map(rng, connectivity):
    x = smooth_labels(rng, (40, 48, 44), n_labels=5, blobs=10)
    check_labelling(x, connectivity)


@pytest.mark.parametrize("connectivity", [8, 4])
def test_multilabel_2d(rng, connectivity):
    x = rng.integers(0, 4, size=(90, 70)).astype(np.int32)
    check_labelling(x, connectivity)


@pytest.fixture(scope="module")
def mni():
    """nilearn's MNI152 template (2 mm, shipped in the wheel: no download)."""
    return np.asarray(nilearn_datasets.load_mni152_template(resolution=2).dataobj, dtype=np.float32)


@pytest.mark.parametrize("connectivity", [26, 18, 6])
def test_mni152_thresholded(mni, connectivity):
    check_labelling(mni > 0.35, connectivity)
    # A label map: intensity bins, so that tissues touch with different labels.
    bins = np.digitize(mni, [0.1, 0.3, 0.5, 0.7]).astype(np.uint8)
    check_labelling(bins, connectivity)


# --- edge cases -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param((1, 1, 1), id="one-voxel"),
        pytest.param((3, 4, 255), id="x-255"),
        pytest.param((3, 4, 256), id="x-256"),
        pytest.param((3, 4, 257), id="x-257"),
        pytest.param((2, 256, 3), id="y-256"),
        pytest.param((255, 2, 3), id="z-255"),
        pytest.param((256, 1, 1), id="z-line-256"),
        pytest.param((1, 1, 300), id="x-line"),
    ],
)
@pytest.mark.parametrize("connectivity", [26, 18, 6])
def test_shapes(rng, shape, connectivity):
    # cc3d 4.1 fails on (256, 1, 1) ("Label 66 cannot be mapped to union-find array of length 66"):
    # scipy alone is the reference there.
    with_cc3d = shape != (256, 1, 1)
    check_labelling(rng.random(shape) < 0.5, connectivity, with_cc3d=with_cc3d)
    check_labelling(rng.integers(0, 3, size=shape).astype(np.uint8), connectivity, with_cc3d=with_cc3d)


@pytest.mark.parametrize("connectivity", [26, 6])
def test_empty_full_single(connectivity):
    zeros = np.zeros((9, 10, 11), dtype=bool)
    labels, n = connected_components(zeros, connectivity)
    assert n == 0 and not labels.any()
    labels, n = connected_components(~zeros, connectivity)
    assert n == 1 and (labels == 1).all()
    one = zeros.copy()
    one[4, 5, 6] = True
    labels, n = connected_components(one, connectivity)
    assert n == 1 and labels[4, 5, 6] == 1 and labels.sum() == 1


def test_zero_size():
    for shape in [(0, 4, 5), (3, 0, 5), (3, 4, 0), (0, 0)]:
        labels, n = connected_components(np.zeros(shape, dtype=bool))
        assert n == 0 and labels.shape == shape


def test_diagonals_hand_made():
    # Two voxels touching at a corner, at an edge, at a face.
    x = np.zeros((2, 2, 2), dtype=bool)
    x[0, 0, 0] = x[1, 1, 1] = True
    assert [connected_components(x, c)[1] for c in (26, 18, 6)] == [1, 2, 2]
    x = np.zeros((2, 2, 2), dtype=bool)
    x[0, 0, 0] = x[1, 1, 0] = True
    assert [connected_components(x, c)[1] for c in (26, 18, 6)] == [1, 1, 2]
    x = np.zeros((2, 2), dtype=bool)
    x[0, 1] = x[1, 0] = True
    assert [connected_components(x, c)[1] for c in (8, 4)] == [1, 2]


def test_touching_labels_stay_apart():
    x = np.array([[[1, 1, 2, 2, 0, 2]]], dtype=np.uint8)
    labels, n = connected_components(x)
    assert n == 3 and labels.tolist() == [[[1, 1, 2, 2, 0, 3]]]


@pytest.mark.parametrize("connectivity", [26, 6])
def test_memory_layouts(rng, connectivity):
    x = rng.integers(0, 3, size=(21, 17, 33)).astype(np.int16)
    labels, n = connected_components(x, connectivity)
    for variant in [np.asfortranarray(x), x.astype(">i2"), np.ascontiguousarray(x[:, ::-1])[:, ::-1]]:
        other, m = connected_components(variant, connectivity)
        assert m == n and np.array_equal(other, labels)
    # A strided view labels like its copy.
    view = x[::2, 1::3, ::-1]
    assert np.array_equal(connected_components(view, connectivity)[0], connected_components(view.copy(), connectivity)[0])


def test_bool_and_uint8_masks_agree(rng):
    x = rng.random((20, 30, 40)) < 0.4
    a, n = connected_components(x)
    b, m = connected_components(x.astype(np.uint8))
    assert n == m and np.array_equal(a, b)


def test_torch_cpu_tensor(rng):
    x = rng.integers(0, 3, size=(12, 13, 14)).astype(np.int64)
    labels, n = connected_components(torch.from_numpy(x), 18)
    assert isinstance(labels, torch.Tensor) and labels.dtype == torch.int32
    ref, m = connected_components(x, 18)
    assert n == m and np.array_equal(labels.numpy(), ref.astype(np.int32))


@pytest.mark.parametrize("connectivity", [26, 18, 6])
@pytest.mark.parametrize("density", [0.2, 0.5])
def test_slabs_and_seams(rng, density, connectivity):
    # Large enough for one slab per thread, with slab seams inside a plane (H and D odd).
    check_labelling(rng.random((21, 61, 53)) < density, connectivity)
    check_labelling((rng.integers(1, 3, size=(21, 61, 53)) * (rng.random((21, 61, 53)) < density)).astype(np.uint8), connectivity)


def x_segments(rng, shape: tuple, count: int, max_len: int) -> np.ndarray:
    """Mask of random x-segments (lengths 1..max_len, clipped at the row's end): runs that cross 64-bit
    words, end exactly at W, and start in any of the four rows of a 2 x 2 row block."""
    x = np.zeros(shape, dtype=bool)
    for _ in range(count):
        z, y = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        x0 = int(rng.integers(0, shape[2]))
        x[z, y, x0 : x0 + int(rng.integers(1, max_len + 1))] = True
    return x


@pytest.mark.parametrize("connectivity", [26, 8])
@pytest.mark.parametrize(
    "shape",
    [
        pytest.param((5, 7, 64), id="x-64"),
        pytest.param((5, 7, 128), id="x-128"),
        pytest.param((6, 9, 191), id="x-191"),
        pytest.param((1, 9, 130), id="one-plane"),
        pytest.param((7, 1, 130), id="one-row-per-plane"),
        pytest.param((9, 5, 1), id="one-column"),
        pytest.param((33, 37, 129), id="odd-multi-slab"),
    ],
)
def test_block_runs_cross_words(rng, shape, connectivity):
    # The bit-packed path for masks (26 / 8): run ends and the rows that meet a run are found with
    # word arithmetic that carries across 64-bit words; links go through per-x run tables.
    x = x_segments(rng, shape, count=shape[0] * shape[1] // 2 + 1, max_len=150)
    if connectivity == 8:
        # cc3d (3.x) mislabels some 2D images of long x-segments (and (1, W) images): it disagrees with
        # scipy there, so these are checked against scipy alone.
        for sl in x:
            check_labelling(sl, 8, with_cc3d=False)
        check_labelling(x.reshape(-1, shape[2]), 8, with_cc3d=False)
    else:
        check_labelling(x, 26)
    noisy = x | (rng.random(shape) < 0.15)
    check_labelling(noisy if connectivity == 26 else noisy.reshape(-1, shape[2]), connectivity, with_cc3d=connectivity == 26)


def test_cached_outputs_never_alias(rng):
    # Labels come from the scratch cache and go back to it when freed: live results must keep their
    # own memory, and a recycled block must be fully rewritten.
    volumes = [rng.random((30, 40, 70)) < d for d in (0.2, 0.5, 0.05)]
    refs = [cc3d.connected_components(v, connectivity=26) for v in volumes]
    first, _ = connected_components(volumes[0], 26)
    second, _ = connected_components(volumes[1], 26)
    assert not np.shares_memory(first, second)
    assert np.array_equal(first, refs[0]) and np.array_equal(second, refs[1])
    del first
    third, _ = connected_components(volumes[2], 26)  # may reuse the first result's block
    assert np.array_equal(third, refs[2]) and np.array_equal(second, refs[1])


def test_release_cached_memory(rng):
    x = rng.random((64, 64, 64)) < 0.3
    labels, _ = connected_components(x, 26)
    del labels
    assert cc_ops.release_cached_memory() >= 64**3 * 4  # at least the labels' block was cached
    assert cc_ops.release_cached_memory() == 0
    labels, n = connected_components(x, 26)
    ref, m = ndimage.label(x, STRUCTURES[26])
    assert n == m and np.array_equal(canonical(labels), canonical(ref))


def test_concurrent_calls_share_the_cache(rng):
    # The GIL is released while labelling: callers on several Python threads take and return
    # blocks of the (locked) cache at the same time.
    from concurrent.futures import ThreadPoolExecutor

    volumes = [rng.random((24, 50, 90)) < d for d in (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)] * 3
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda v: connected_components(v, 26), volumes))
    for v, (labels, n) in zip(volumes, results):
        assert np.array_equal(labels, cc3d.connected_components(v, connectivity=26))


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_block_path_seams_per_thread_count(rng, threads):
    # Slab seams of the bit-packed path (26-connectivity): the seam pass rebuilds run tables that the
    # scan kept in a ring; labels must not depend on the thread count.
    volumes = [rng.random((40, 41, 70)) < d for d in (0.1, 0.3, 0.6)] + [x_segments(rng, (40, 41, 130), 900, 140)]
    ref = [connected_components(v, 26) for v in volumes]
    with num_threads(threads):
        assert get_num_threads() == threads
        got = [connected_components(v, 26) for v in volumes]
    for v, (a, n), (b, m) in zip(volumes, ref, got):
        assert n == m and np.array_equal(a, b)
        check_labelling(v, 26)


@pytest.mark.parametrize("threads", [1, 3, 7])
def test_thread_count_does_not_change_labels(rng, threads):
    # Every volume above the 2**16 voxels under which the kernels run on one thread.
    x = rng.random((33, 48, 48)) < 0.3
    multi = (rng.integers(1, 4, size=x.shape) * x).astype(np.int16)
    # Sparse blobs: many empty rows, so slabs end (and begin) with rows that hold no run.
    sparse = np.zeros((60, 50, 40), dtype=np.uint8)
    sparse[10:50:7] = smooth_labels(rng, (50, 40), 4, blobs=3)[None].astype(np.uint8)
    volumes = (x, multi, sparse)
    ref = [connected_components(v, c) for v in volumes for c in (26, 6)]
    with num_threads(threads):
        assert get_num_threads() == threads
        got = [connected_components(v, c) for v in volumes for c in (26, 6)]
        filled = fill_holes(x)
    for (a, n), (b, m) in zip(ref, got):
        assert n == m and np.array_equal(a, b)
    for v in volumes:
        check_labelling(v, 26)
    assert np.array_equal(filled, ndimage.binary_fill_holes(x))


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x,error,match",
    [
        pytest.param(np.zeros((3, 3, 3), np.float32), TypeError, "float32", id="float"),
        pytest.param(np.zeros((3, 3, 3), np.complex64), TypeError, "complex64", id="complex"),
        pytest.param(torch.zeros((3, 3, 3)), TypeError, "float32", id="torch-float"),
        pytest.param(np.zeros(5, bool), ValueError, r"shape \(5,\)", id="1d"),
        pytest.param(np.zeros((2, 2, 2, 2), bool), ValueError, "4D", id="4d"),
        pytest.param([[1, 0], [0, 1]], TypeError, "list", id="list"),
    ],
)
def test_bad_input(x, error, match):
    with pytest.raises(error, match=match):
        connected_components(x)


@pytest.mark.parametrize(
    "shape,connectivity", [((3, 3, 3), 8), ((3, 3, 3), 4), ((3, 3, 3), 27), ((3, 3), 6), ((3, 3), 26), ((3, 3), 0)]
)
def test_bad_connectivity(shape, connectivity):
    with pytest.raises(ValueError, match=f"got {connectivity}"):
        connected_components(np.zeros(shape, bool), connectivity)


def test_native_checks_second_line():
    C = cc_ops._native.cpu()
    with pytest.raises(ValueError, match="connectivity"):
        C.connected_components(np.zeros((2, 2, 2), np.uint8), 5, True)
    with pytest.raises(ValueError, match="C-contiguous"):
        C.connected_components(np.zeros((2, 2, 2), np.uint8, order="F")[:, :, ::2], 26, True)
    with pytest.raises(ValueError, match="integers or bools"):
        C.connected_components(np.zeros((2, 2, 2), np.float32), 26, True)


# --- statistics -----------------------------------------------------------------------------------


def reference_stats(labels: np.ndarray, n: int, image: np.ndarray):
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=n + 1)[1:]
    boxes, values = [], []
    for i in range(1, n + 1):
        where = np.nonzero(labels == i)
        if where[0].size == 0:  # an absent label: count 0, zero box, zero value
            boxes.append([0] * 2 * labels.ndim)
            values.append(0)
            continue
        boxes.append([int(w.min()) for w in where] + [int(w.max()) + 1 for w in where])
        values.append(image[tuple(w[0] for w in where)])  # np.nonzero is in raster order
    return counts, np.array(boxes, dtype=np.int64).reshape(n, -1), np.array(values, dtype=image.dtype)


@pytest.mark.parametrize("shape", [(17, 19, 23), (41, 37)], ids=["3d", "2d"])
def test_stats_match_numpy(rng, shape):
    x = rng.integers(0, 4, size=shape).astype(np.int16) * (rng.random(shape) < 0.3)
    labels, n, stats = connected_components(x, return_stats=True)
    counts, boxes, values = reference_stats(labels, n, x)
    assert np.array_equal(stats.counts, counts)
    assert np.array_equal(stats.bboxes, boxes)
    assert stats.values.dtype == x.dtype and np.array_equal(stats.values, values)
    i = int(np.argmax(counts)) + 1
    assert np.array_equal(labels[stats.slices(i)] == i, (labels == i)[stats.slices(i)])
    assert (labels[stats.slices(i)] == i).sum() == counts[i - 1]


def fast_reference_stats(labels: np.ndarray, n: int, image: np.ndarray):
    """Counts (bincount), boxes (scipy's find_objects) and first-voxel values (np.unique's first index)."""
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=n + 1)[1:]
    boxes = np.array(
        [[s.start for s in sl] + [s.stop for s in sl] for sl in ndimage.find_objects(labels.astype(np.int64))],
        dtype=np.int64,
    ).reshape(n, -1)
    flat = labels.ravel()
    found, first = np.unique(flat, return_index=True)
    values = image.ravel()[first[found != 0]]
    return counts, boxes, values


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param((17, 19, 23), id="odd"),
        pytest.param((8, 10, 130), id="x-130"),
        pytest.param((5, 7, 64), id="x-64"),
        pytest.param((1, 33, 200), id="one-plane"),
        pytest.param((45, 38), id="2d"),
    ],
)
@pytest.mark.parametrize("density", [0.1, 0.4])
def test_stats_in_the_labelling_pass(rng, shape, density):
    # Statistics come from the run tables while labelling: the row-block path (bool masks, 26 / 8),
    # the run path (6 / 18 / 4 and label maps), runs across words and longer than a word.
    x = rng.random(shape) < density
    if len(shape) == 3:
        x |= x_segments(rng, shape, count=shape[0] * shape[1] // 3 + 1, max_len=140)
    maps = (rng.integers(1, 4, size=shape) * x).astype(np.uint16)
    for image, connectivities in ((x, cc_ops.CONNECTIVITIES[len(shape)]), (maps, cc_ops.CONNECTIVITIES[len(shape)][:1])):
        for connectivity in connectivities:
            labels, n, stats = connected_components(image, connectivity, return_stats=True)
            counts, boxes, values = fast_reference_stats(labels, n, image)
            assert np.array_equal(stats.counts, counts), connectivity
            assert np.array_equal(stats.bboxes, boxes), connectivity
            assert stats.values.dtype == image.dtype and np.array_equal(stats.values, values), connectivity
            separate = component_stats(labels, n, image=image)  # the separate pass over the labels
            assert np.array_equal(separate.counts, stats.counts) and np.array_equal(separate.values, stats.values)


def test_stats_standalone(rng):
    labels = rng.integers(0, 6, size=(10, 11, 12)).astype(np.int64)
    labels[labels == 3] = 0  # a label that does not occur: count 0, zero box
    stats = component_stats(labels)
    counts, *_ = reference_stats(labels, 5, labels)
    assert np.array_equal(stats.counts, counts) and stats.values is None
    assert stats.counts[2] == 0 and not stats.bboxes[2].any()
    stats = component_stats(labels.astype(np.uint8), 7, image=labels)
    assert stats.counts.shape == (7,) and np.array_equal(stats.values[:5], [1, 2, 0, 4, 5])
    with pytest.raises(ValueError, match="label 5 but n is 4"):
        component_stats(labels, 4)
    with pytest.raises(ValueError, match="non-negative"):
        component_stats(labels - 1)
    with pytest.raises(ValueError, match="shape"):
        component_stats(labels, image=labels[:, :, :3])


def test_stats_bool_mask_values(rng):
    x = rng.random((15, 16, 17)) < 0.2
    _, _, stats = connected_components(x, return_stats=True)
    assert stats.values.dtype == bool and stats.values.all() and stats.counts.sum() == x.sum()


# --- nnU-Net's largest-component filter -------------------------------------------------------------


@pytest.fixture(scope="module")
def nnunet_remove():
    return remove_connected_components.remove_all_but_largest_component_from_segmentation


SEG_CASES = [
    pytest.param(1, 0, id="label"),
    pytest.param((1, 2), 0, id="region"),
    pytest.param([1, 2], 0, id="list-of-labels"),
    pytest.param([1, (2, 3)], 0, id="list-label-and-region"),
    pytest.param([(1, 3)], 0, id="list-of-one-region"),
    pytest.param(2, 4, id="background-4"),
    pytest.param(9, 0, id="absent-label"),
]


@pytest.mark.parametrize("labels_or_regions,background", SEG_CASES)
def test_remove_largest_smooth_map(rng, nnunet_remove, labels_or_regions, background):
    seg = smooth_labels(rng, (36, 40, 38), n_labels=4, blobs=12).astype(np.uint8)
    # Sprinkle small islands so that there is something to remove.
    seg[rng.random(seg.shape) < 0.01] = 1
    ref = nnunet_remove(seg, labels_or_regions, background)
    ours = remove_all_but_largest_component(seg, labels_or_regions, background)
    assert ours.dtype == seg.dtype and np.array_equal(ours, ref)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64, np.uint16])
def test_remove_largest_noise_dtypes(rng, nnunet_remove, dtype):
    seg = rng.integers(0, 4, size=(20, 25, 30)).astype(dtype) * (rng.random((20, 25, 30)) < 0.25)
    for labels_or_regions in (1, [2, 3], (1, 3)):
        ref = nnunet_remove(seg, labels_or_regions, 0)
        assert np.array_equal(remove_all_but_largest_component(seg, labels_or_regions), ref)


def test_remove_largest_2d_and_mni(rng, nnunet_remove, mni):
    seg2d = rng.integers(0, 3, size=(80, 90)).astype(np.uint8)
    assert np.array_equal(remove_all_but_largest_component(seg2d, [1, 2]), nnunet_remove(seg2d, [1, 2], 0))
    bins = np.digitize(mni, [0.1, 0.3, 0.5, 0.7]).astype(np.int16)
    for labels_or_regions in (2, (3, 4), [1, (2, 4)]):
        ref = nnunet_remove(bins, labels_or_regions, 0)
        assert np.array_equal(remove_all_but_largest_component(bins, labels_or_regions), ref)


def test_remove_largest_keeps_ties(nnunet_remove):
    seg = np.zeros((5, 5, 9), dtype=np.uint8)
    seg[1:3, 1:3, 0:2] = 1
    seg[1:3, 1:3, 6:8] = 1  # the same size: nnU-Net keeps both
    seg[4, 4, 4] = 1
    ours = remove_all_but_largest_component(seg, 1)
    assert np.array_equal(ours, nnunet_remove(seg, 1, 0))
    assert ours.sum() == 16


def test_remove_largest_does_not_modify_input_and_torch(rng):
    seg = rng.integers(0, 3, size=(10, 12, 14)).astype(np.uint8)
    copy = seg.copy()
    out = remove_all_but_largest_component(torch.from_numpy(seg), 1)
    assert np.array_equal(seg, copy)
    assert isinstance(out, torch.Tensor) and np.array_equal(out.numpy(), remove_all_but_largest_component(seg, 1))


def test_remove_largest_bad_input(rng):
    seg = rng.integers(0, 3, size=(5, 6, 7)).astype(np.uint8)
    with pytest.raises(ValueError, match="300"):
        remove_all_but_largest_component(seg, 1, background_label=300)
    with pytest.raises(TypeError, match="1.5"):
        remove_all_but_largest_component(seg, [1.5])
    with pytest.raises(TypeError, match="float64"):
        remove_all_but_largest_component(seg.astype(np.float64), 1)


# --- hole filling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("density", [0.3, 0.6, 0.8])
@pytest.mark.parametrize("connectivity", [None, 6, 18, 26])
def test_fill_holes_3d(rng, density, connectivity):
    mask = rng.random((18, 21, 24)) < density
    structure = STRUCTURES[connectivity or 6]
    ref = ndimage.binary_fill_holes(mask, structure)
    out = fill_holes(mask, connectivity=connectivity)
    assert out.dtype == bool and np.array_equal(out, ref)


@pytest.mark.parametrize("connectivity", [None, 4, 8])
def test_fill_holes_2d_and_slices(rng, connectivity):
    mask = rng.random((7, 40, 33)) < 0.65
    structure = STRUCTURES[connectivity or 4]
    ref = np.stack([ndimage.binary_fill_holes(s, structure) for s in mask])
    assert np.array_equal(fill_holes(mask, slice_wise=True, connectivity=connectivity), ref)
    assert np.array_equal(fill_holes(mask[3], connectivity=connectivity), ref[3])


def test_fill_holes_shapes_and_kinds(rng, mni):
    brain = mni > 0.35
    assert np.array_equal(fill_holes(brain), ndimage.binary_fill_holes(brain))
    ball = np.zeros((9, 9, 9), dtype=np.uint8)
    ball[1:8, 1:8, 1:8] = 3
    ball[3:6, 3:6, 3:6] = 0
    assert not fill_holes(ball).all() and fill_holes(ball)[4, 4, 4]
    for shape in [(1, 1, 1), (2, 2, 2), (1, 5, 5), (0, 3, 3)]:
        mask = np.ones(shape, bool)
        assert np.array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))
    out = fill_holes(torch.from_numpy(ball))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bool and bool(out[4, 4, 4])
    with pytest.raises(ValueError, match="slice_wise"):
        fill_holes(ball[0], slice_wise=True)
    with pytest.raises(ValueError, match="got 26"):
        fill_holes(ball, slice_wise=True, connectivity=26)
    with pytest.raises(TypeError, match="float"):
        fill_holes(ball.astype(np.float32))


# --- properties -----------------------------------------------------------------------------------

small_shapes = st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 12))


@settings(max_examples=40, deadline=None)
@given(shape=small_shapes, seed=st.integers(0, 2**31 - 1), connectivity=st.sampled_from([26, 18, 6]))
def test_label_permutation_invariance(shape, seed, connectivity):
    g = np.random.default_rng(seed)
    x = g.integers(0, 4, size=shape).astype(np.int16)
    perm = np.concatenate([[0], g.permutation(np.arange(1, 4)) * 7])  # renames 1..3, keeps 0
    a, n = connected_components(x, connectivity)
    b, m = connected_components(perm[x].astype(np.int16), connectivity)
    # Numbered by first voxel, the labels themselves (not only the partitions) are equal.
    assert n == m and np.array_equal(a, b)


@settings(max_examples=40, deadline=None)
@given(shape=small_shapes, seed=st.integers(0, 2**31 - 1), keep=st.sampled_from([1, (1, 2), [2, 3]]))
def test_remove_largest_idempotent(shape, seed, keep):
    g = np.random.default_rng(seed)
    seg = g.integers(0, 4, size=shape).astype(np.uint8)
    once = remove_all_but_largest_component(seg, keep)
    assert np.array_equal(remove_all_but_largest_component(once, keep), once)
    # What survives is connected (one component of the union, or ties of equal size).
    members = [keep] if not isinstance(keep, list) else keep
    union = np.isin(once, np.array([m for k in members for m in np.atleast_1d(k)]))
    labels, n = connected_components(union)
    assert n <= 1 or len(set(np.bincount(labels.ravel())[1:])) == 1


@settings(max_examples=30, deadline=None)
@given(shape=small_shapes, seed=st.integers(0, 2**31 - 1))
def test_fill_holes_idempotent_and_superset(shape, seed):
    mask = np.random.default_rng(seed).random(shape) < 0.6
    filled = fill_holes(mask)
    assert (filled >= mask).all() and np.array_equal(fill_holes(filled), filled)


# --- CUDA -----------------------------------------------------------------------------------------


class _FakeKernels:
    """The three CUDA entry points written in numpy over host memory (CPU tensors' data_ptr()), from
    their documented contracts; lets the torch glue of _cuda_components run without a GPU."""

    CC_NO_LABEL = 0xFFFFFFFF

    @staticmethod
    def _view(ptr, count, ctype, dtype):
        return np.frombuffer((ctype * count).from_address(ptr), dtype=dtype)

    def cc_label(self, in_ptr, labels_ptr, shape, itemsize, connectivity, binary, stream):
        total = int(np.prod(shape))
        ctype = {1: ctypes.c_uint8, 2: ctypes.c_uint16, 4: ctypes.c_uint32, 8: ctypes.c_uint64}[itemsize]
        values = self._view(in_ptr, total, ctype, f"u{itemsize}").reshape(shape)
        # The CPU kernel takes in-plane connectivities (4, 8) on a stack of slices too.
        lab = cc_ops._native.cpu().connected_components(np.ascontiguousarray(values), connectivity, binary)[0]
        flat = lab.ravel().astype(np.int64)
        first = np.full(flat.max() + 1 if flat.size else 1, self.CC_NO_LABEL, dtype=np.int64)
        np.minimum.at(first, flat, np.arange(flat.size))
        first[0] = self.CC_NO_LABEL
        out = self._view(labels_ptr, total, ctypes.c_uint32, np.uint32)
        np.copyto(out, first[flat].astype(np.uint32))

    def cc_mark_roots(self, labels_ptr, flags_ptr, total, stream):
        labels = self._view(labels_ptr, total, ctypes.c_uint32, np.uint32)
        flags = self._view(flags_ptr, total, ctypes.c_int32, np.int32)
        np.copyto(flags, (labels == np.arange(total, dtype=np.uint32)).astype(np.int32))

    def cc_relabel(self, labels_ptr, rank_ptr, total, stream):
        labels = self._view(labels_ptr, total, ctypes.c_uint32, np.uint32)
        rank = self._view(rank_ptr, total, ctypes.c_int32, np.int32)
        root = labels.astype(np.int64)
        np.copyto(labels, np.where(root == self.CC_NO_LABEL, 0, rank[np.minimum(root, total - 1)]).astype(np.uint32))


def test_cuda_glue_on_fake_kernels(rng, monkeypatch):
    """The renumbering, statistics, largest-component and hole-filling glue of the CUDA path, run on CPU
    tensors through numpy stand-ins of the kernels, against the CPU path."""
    from fastseg.ops import _cuda_components as glue

    monkeypatch.setattr(glue, "_kernels", lambda: _FakeKernels())
    monkeypatch.setattr(glue, "_stream", lambda device: 0)
    monkeypatch.setattr(glue.torch.cuda, "device", lambda device: contextlib.nullcontext())
    x = rng.integers(0, 3, size=(14, 15, 16)).astype(np.int16) * (rng.random((14, 15, 16)) < 0.5)
    labels, n = glue.connected_components(torch.from_numpy(x), 26, False)
    ref, m = connected_components(x, 26)
    assert n == m and np.array_equal(labels.numpy(), ref.astype(np.int32))
    stats = glue.component_stats(labels, n, torch.from_numpy(x))
    _, _, ref_stats = connected_components(x, 26, return_stats=True)
    assert np.array_equal(stats.counts.numpy(), ref_stats.counts)
    assert np.array_equal(stats.bboxes.numpy(), ref_stats.bboxes)
    assert np.array_equal(stats.values.numpy(), ref_stats.values)
    seg = torch.from_numpy(x.astype(np.uint8))
    assert np.array_equal(glue.remove_all_but_largest(seg, [1, 2], 0, 26).numpy(), remove_all_but_largest_component(x.astype(np.uint8), [1, 2]))
    mask = torch.from_numpy(rng.random((9, 20, 21)) < 0.7)
    assert np.array_equal(glue.fill_holes(mask, 6).numpy(), fill_holes(mask.numpy()))
    assert np.array_equal(glue.fill_holes(mask, 4).numpy(), fill_holes(mask.numpy(), slice_wise=True))


@requires_cuda_kernels
@pytest.mark.parametrize("connectivity", [26, 18, 6])
@pytest.mark.parametrize("density", [0.2, 0.5])
def test_cuda_matches_cpu(rng, connectivity, density):
    shape = (37, 70, 129)  # several tiles per axis, ragged edges
    x = rng.random(shape) < density
    multi = (rng.integers(1, 4, size=shape) * x).astype(np.int32)
    for host in (x, multi, smooth_labels(rng, shape, 4)):
        ref, n = connected_components(host, connectivity)
        labels, m = connected_components(torch.from_numpy(host).cuda(), connectivity)
        assert labels.is_cuda and labels.dtype == torch.int32
        assert m == n and np.array_equal(labels.cpu().numpy(), ref.astype(np.int32))


@requires_cuda_kernels
def test_cuda_2d_stats_filters(rng):
    img = rng.random((300, 257)) < 0.45
    for c in (8, 4):
        ref, n = connected_components(img, c)
        labels, m = connected_components(torch.from_numpy(img).cuda(), c)
        assert m == n and np.array_equal(labels.cpu().numpy(), ref.astype(np.int32))
    seg = smooth_labels(rng, (30, 40, 50), 4).astype(np.uint8)
    seg[rng.random(seg.shape) < 0.02] = 2
    gpu = torch.from_numpy(seg).cuda()
    assert np.array_equal(remove_all_but_largest_component(gpu, [1, 2]).cpu().numpy(), remove_all_but_largest_component(seg, [1, 2]))
    mask = rng.random((20, 30, 40)) < 0.7
    assert np.array_equal(fill_holes(torch.from_numpy(mask).cuda()).cpu().numpy(), fill_holes(mask))
    _, _, stats = connected_components(gpu, return_stats=True)
    _, _, ref_stats = connected_components(seg, return_stats=True)
    assert np.array_equal(stats.counts.cpu().numpy(), ref_stats.counts)
    assert np.array_equal(stats.bboxes.cpu().numpy(), ref_stats.bboxes)
