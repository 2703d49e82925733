"""Connected components: fastseg vs cc3d, scipy.ndimage and nnunetv2, same process, same inputs.

Run (the conftest prints op | shape | dtype | fastseg | reference | ratio | GB/s at the end):
    OMP_NUM_THREADS=2 pytest benchmarks/test_bench_components.py --benchmark-columns=median,rounds
Goals (issue "Inference kernels", item 4): 26-connected labelling of 256^3 volumes >= 1.0x cc3d's
throughput and >= 10x scipy.ndimage.label's; remove_all_but_largest_component >= 10x nnunetv2's.
Each result is checked against its reference before it is timed.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastseg.ops.components import (
    connected_components,
    fill_holes,
    release_cached_memory,
    remove_all_but_largest_component,
)

cc3d = pytest.importorskip("cc3d")
ndimage = pytest.importorskip("scipy.ndimage")
nnunet_pp = pytest.importorskip("nnunetv2.postprocessing.remove_connected_components")

SIZE = 256
SHAPE = f"{SIZE}^3"
FULL = ndimage.generate_binary_structure(3, 3)


def noise(density: float) -> np.ndarray:
    return np.random.default_rng(0).random((SIZE,) * 3) < density


def smooth_label_map(n_labels: int = 6, blobs: int = 14) -> np.ndarray:
    """Organ-like label map: overlapping balls of labels 1..n_labels-1 on background 0, plus small
    islands of label 1 (the kind of debris nnU-Net's post-processing removes)."""
    rng = np.random.default_rng(1)
    seg = np.zeros((SIZE,) * 3, dtype=np.uint8)
    z, y, x = np.ogrid[:SIZE, :SIZE, :SIZE]
    for _ in range(blobs):
        c = rng.uniform(0, SIZE, 3)
        r = rng.uniform(0.1, 0.3) * SIZE
        seg[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r * r] = rng.integers(1, n_labels)
    seg[rng.random(seg.shape) < 0.001] = 1
    return seg


@pytest.fixture(scope="module")
def volumes() -> dict:
    return {"noise 20%": noise(0.2), "noise 50%": noise(0.5), "label map": smooth_label_map()}


def scipy_label(x: np.ndarray):
    """scipy.ndimage.label with 26-connectivity; per value for a label map (scipy labels masks only)."""
    if x.dtype == bool:
        return ndimage.label(x, FULL)
    out = np.zeros(x.shape, dtype=np.int32)
    n = 0
    for value in np.unique(x)[1:]:
        lab, k = ndimage.label(x == value, FULL)
        out[lab > 0] = lab[lab > 0] + n
        n += k
    return out, n


@pytest.mark.parametrize("case", ["noise 20%", "noise 50%", "label map"])
@pytest.mark.parametrize("impl", ["fastseg", "cc3d", "scipy"])
def test_connected_components_26(bench, volumes, case, impl):
    x = volumes[case]
    fns = {
        "fastseg": lambda: connected_components(x, 26),
        "cc3d": lambda: cc3d.connected_components(x, connectivity=26, return_N=True),
        "scipy": lambda: scipy_label(x),
    }
    labels, n = fns[impl]()
    ours, ours_n = connected_components(x, 26)
    assert n == ours_n
    if impl == "cc3d":  # both number components by first voxel in raster order
        assert np.array_equal(labels, ours)
    info = {"op": f"connected_components 26 {case}", "shape": SHAPE, "dtype": str(x.dtype), "impl": impl}
    bench(fns[impl], rounds=3 if impl == "scipy" else 7, bytes=x.nbytes + 4 * x.size, **info)


@pytest.mark.parametrize("impl", ["fastseg", "scipy"])
def test_connected_components_26_cold_cache(bench, volumes, impl):
    """As above, but fastseg's memory cache is emptied before every call (untimed): each call maps
    and faults in fresh pages for its buffers and the labels, as the first call on a new size does."""
    x = volumes["noise 20%"]
    fns = {"fastseg": lambda: connected_components(x, 26), "scipy": lambda: scipy_label(x)}

    def empty_cache() -> tuple:
        release_cached_memory()
        return ()

    info = {"op": "connected_components 26 noise 20% (cold cache)", "shape": SHAPE, "dtype": str(x.dtype), "impl": impl}
    bench(fns[impl], rounds=3 if impl == "scipy" else 7, setup=empty_cache, bytes=x.nbytes + 4 * x.size, **info)


@pytest.mark.parametrize("impl", ["fastseg", "cc3d", "scipy"])
def test_connected_components_with_stats(bench, volumes, impl):
    """Labels plus voxel counts and bounding boxes: fastseg gathers them while labelling; cc3d and
    scipy take a second pass over the labels (cc3d.statistics; find_objects + bincount)."""
    x = volumes["noise 20%"]

    def scipy_stats():
        labels, n = ndimage.label(x, FULL)
        return labels, ndimage.find_objects(labels), np.bincount(labels.ravel())

    def cc3d_stats():
        labels = cc3d.connected_components(x, connectivity=26)
        return labels, cc3d.statistics(labels, no_slice_conversion=True)

    fns = {"fastseg": lambda: connected_components(x, 26, return_stats=True), "cc3d": cc3d_stats, "scipy": scipy_stats}
    _, n, stats = connected_components(x, 26, return_stats=True)
    if impl == "cc3d":
        ref = cc3d_stats()[1]["voxel_counts"][1:]
        assert np.array_equal(stats.counts, ref)
    info = {"op": "connected_components 26 + counts + boxes, noise 20%", "shape": SHAPE, "dtype": "bool", "impl": impl}
    bench(fns[impl], rounds=3 if impl == "scipy" else 7, bytes=x.nbytes + 4 * x.size, **info)


@pytest.mark.parametrize("impl", ["fastseg", "nnunetv2"])
def test_remove_all_but_largest(bench, volumes, impl):
    seg = volumes["label map"]
    regions = [1, (2, 3)]
    fns = {
        "fastseg": lambda: remove_all_but_largest_component(seg, regions),
        "nnunetv2": lambda: nnunet_pp.remove_all_but_largest_component_from_segmentation(seg, regions),
    }
    assert np.array_equal(fns[impl](), remove_all_but_largest_component(seg, regions))
    info = {"op": "remove_all_but_largest_component [1, (2, 3)]", "shape": SHAPE, "dtype": str(seg.dtype), "impl": impl}
    bench(fns[impl], rounds=3 if impl == "nnunetv2" else 7, bytes=2 * seg.nbytes, **info)


@pytest.mark.parametrize("impl", ["fastseg", "scipy"])
def test_fill_holes(bench, volumes, impl):
    mask = volumes["noise 50%"]
    fns = {"fastseg": lambda: fill_holes(mask), "scipy": lambda: ndimage.binary_fill_holes(mask)}
    assert np.array_equal(fns[impl](), ndimage.binary_fill_holes(mask))
    info = {"op": "fill_holes noise 50%", "shape": SHAPE, "dtype": "bool", "impl": impl}
    bench(fns[impl], rounds=3 if impl == "scipy" else 7, bytes=2 * mask.nbytes, **info)
