"""The native spatial augmentation (fastseg.ops.spatial.affine_patch, fastseg.data.spatial) against
independent references: scipy.ndimage.map_coordinates (order 1 with zero padding for the image, order 0
with -1 padding for the segmentation) on random matrices and boxes, batchgeneratorsv2's SpatialTransform
on the same parameters (as tests/test_data_augment.py checks the DALI version), numpy slicing for the
plain crop; the noise generator's distribution and determinism, and the parameter draws' probabilities
and ranges (4.5 binomial standard deviations)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.cropping import crop_tensor
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform
from scipy import stats
from scipy.ndimage import binary_dilation, map_coordinates
from test_data_augment import ROT, image, label_border, only, removed, shapes_seg

from fastseg import threads
from fastseg.data.augment import DEFAULT_PROBABILITIES, AugmentSpec
from fastseg.data.sampling import PatchSampler
from fastseg.data.spatial import SpatialDraw, affine_matrix, draw_spatial, index_matrix, transform_patch
from fastseg.ops.spatial import affine_patch


def _reference(data, seg, matrix, box, patch):
    """map_coordinates on the box: order 1 / zeros outside for data, order 0 / -1 outside for seg."""
    grid = np.stack(np.meshgrid(*[np.arange(p) for p in patch], indexing="ij")).reshape(3, -1)
    coords = matrix[:, :3] @ grid + matrix[:, 3:] - box[:, :1]
    inside = tuple(slice(lo, hi) for lo, hi in box)
    ref = np.stack([map_coordinates(c[inside].astype(np.float64), coords, order=1, mode="grid-constant", cval=0.0)
                    for c in data]).reshape(data.shape[0], *patch)
    ref_seg = map_coordinates(seg[0][inside].astype(np.int16), coords, order=0, mode="grid-constant",
                              cval=-1).reshape(1, *patch)
    return ref, ref_seg


def _run(data, seg, matrix, box, patch, **kwargs):
    out = np.empty((data.shape[0], *patch), np.float32)
    seg_out = np.empty((1, *patch), np.int16)
    affine_patch(data, seg, out, seg_out, matrix, np.asarray(box), **kwargs)
    return out, seg_out


@pytest.mark.parametrize("seg_dtype", [np.int8, np.int16])
@pytest.mark.parametrize("trial", range(4))
def test_affine_patch_equals_map_coordinates_on_random_matrices(trial, seg_dtype):
    rng = np.random.default_rng(trial)
    shape, patch = (17, 23, 29), (9, 14, 19)
    data = rng.standard_normal((2, *shape)).astype(np.float32)
    seg = rng.integers(-1, 5, (1, *shape)).astype(seg_dtype)
    matrix = np.zeros((3, 4))
    matrix[:, :3] = np.eye(3) + rng.normal(scale=0.6, size=(3, 3))
    matrix[:, 3] = rng.uniform(-4, 14, 3)
    box = np.array([[rng.integers(0, 4), shape[0] - rng.integers(0, 4)], [0, shape[1]],
                    [rng.integers(0, 6), shape[2] - rng.integers(0, 3)]])
    out, seg_out = _run(data, seg, matrix, box, patch)
    ref, ref_seg = _reference(data, seg, matrix, box, patch)
    # float32 coordinates and weights: a few float32 ulps of the data's scale
    np.testing.assert_allclose(out, ref, atol=2e-5 * np.abs(data).max())
    # nearest: equal except where a coordinate lies within float32 rounding of a half-voxel tie (none expected)
    assert (seg_out == ref_seg).mean() > 0.9999
    assert 0 < (out == 0).mean() < 1 and (seg_out == -1).any()  # the random patch reaches outside the box


@pytest.mark.parametrize("dz,dy,dx", [(0, 0, 0), (-3, 5, 11), (8, -6, -20), (30, 0, 0)])
def test_integer_translation_is_an_exact_padded_crop(dz, dy, dx):
    rng = np.random.default_rng(1)
    shape, patch = (12, 15, 18), (10, 12, 14)
    data = rng.standard_normal((2, *shape)).astype(np.float32)
    seg = rng.integers(0, 4, (1, *shape)).astype(np.int16)
    matrix = np.concatenate([np.eye(3), np.array([[dz], [dy], [dx]], float)], axis=1)
    box = np.array([[1, 12], [0, 14], [2, 18]])
    out, seg_out = _run(data, seg, matrix, box, patch)
    pad = 40
    padded = np.zeros((2, *(s + 2 * pad for s in shape)), np.float32)
    padded_seg = np.full((1, *(s + 2 * pad for s in shape)), -1, np.int16)
    inside = (slice(None),) + tuple(slice(pad + lo, pad + hi) for lo, hi in box)
    padded[inside] = data[(slice(None),) + tuple(slice(lo, hi) for lo, hi in box)]
    padded_seg[inside] = seg[(slice(None),) + tuple(slice(lo, hi) for lo, hi in box)]
    window = (slice(None),) + tuple(slice(pad + d, pad + d + p) for d, p in zip((dz, dy, dx), patch))
    np.testing.assert_array_equal(out, padded[window])
    np.testing.assert_array_equal(seg_out, padded_seg[window])


def test_flat_depth_axis_samples_one_slice_bilinearly():
    """A 2D transform (first row (0, 0, 0, slice)) reads only that slice, to the last row and column."""
    rng = np.random.default_rng(2)
    data = rng.standard_normal((1, 5, 20, 20)).astype(np.float32)
    seg = rng.integers(0, 3, (1, 5, 20, 20)).astype(np.int16)
    a = affine_matrix([0.4], 1.1, 2, False)
    m = np.zeros((3, 4))
    m[0, 3] = 3
    m[1:, 1:3] = a
    m[1:, 3] = a @ (0.5 - np.array([16, 16]) / 2) + 10 - 0.5
    box = np.array([[3, 4], [0, 20], [0, 20]])
    out, seg_out = _run(data, seg, m, box, (1, 16, 16))
    ref, ref_seg = _reference(data, seg, m, box, (1, 16, 16))
    np.testing.assert_allclose(out, ref, atol=2e-5 * np.abs(data).max())
    np.testing.assert_array_equal(seg_out, ref_seg)


def test_thread_count_does_not_change_the_result():
    rng = np.random.default_rng(3)
    data = rng.standard_normal((1, 20, 30, 30)).astype(np.float32)
    seg = rng.integers(0, 3, (1, 20, 30, 30)).astype(np.int16)
    m = index_matrix(affine_matrix([0.3, -0.2, 0.5], 0.9, 3, False), (20, 30, 30), (16, 24, 24), (0, 0, 0))
    box = np.array([[0, 20], [0, 30], [0, 30]])
    with threads.num_threads(1):
        one = _run(data, seg, m, box, (16, 24, 24), noise_std=0.1, noise_seed=5)
    with threads.num_threads(3):
        three = _run(data, seg, m, box, (16, 24, 24), noise_std=0.1, noise_seed=5)
    np.testing.assert_array_equal(one[0], three[0])
    np.testing.assert_array_equal(one[1], three[1])


# --- against batchgeneratorsv2 -----------------------------------------------------------------------------

def _bgv2_spatial(data, seg, patch, dummy, angle, scale):
    transform = SpatialTransform(patch[1:] if dummy else patch, 0, False, p_rotation=1, rotation=angle,
                                 p_scaling=1, scaling=scale, p_synchronize_scaling_across_axes=1,
                                 border_mode_seg="constant", padding_value_seg=-1)
    batch = {"image": torch.from_numpy(data.copy()), "segmentation": torch.from_numpy(seg.copy())}
    if dummy:
        batch = Convert3DTo2DTransform()(**batch)
    batch = transform(**batch)
    if dummy:
        batch = Convert2DTo3DTransform()(**batch)
    return batch["image"].numpy(), batch["segmentation"].numpy()


@pytest.mark.parametrize("patch,initial,dummy,angle,scale", [
    pytest.param((16, 24, 24), (20, 30, 30), False, 0.3, 1.0, id="3d-rotate"),
    pytest.param((16, 24, 24), (20, 30, 30), False, -0.4, 1.3, id="3d-rotate-scale-out-of-bounds"),
    pytest.param((16, 24, 24), (19, 29, 31), False, 0.2, 0.8, id="3d-odd-rotate-zoom"),
    pytest.param((16, 24, 24), (16, 31, 30), True, 0.5, 0.9, id="3d-dummy-2d"),
    pytest.param((32, 32), (41, 44), False, -0.7, 1.2, id="2d"),
])
def test_transform_patch_matches_nnunet_spatial_transform(patch, initial, dummy, angle, scale):
    """The initial patch placed inside a larger case (start (2, 3, 1)): the kernel reads the case."""
    data, seg = image(initial, 2), shapes_seg(initial)
    ref, ref_seg = _bgv2_spatial(data, seg, patch, dummy, angle, scale)
    two_d = len(patch) == 2
    case = np.zeros((2, 3 if two_d else initial[0] + 5, initial[-2] + 7, initial[-1] + 4), np.float32)
    case_seg = np.full((1, *case.shape[1:]), 7, np.int16)  # labels outside the initial patch must not leak in
    start = (1, 3, 1) if two_d else (2, 3, 1)
    inside = tuple(slice(s, s + n) for s, n in zip(start, (1, *initial) if two_d else initial))
    case[(slice(None),) + inside] = data[:, None] if two_d else data
    case_seg[(slice(None),) + inside] = seg[:, None] if two_d else seg
    case[:, 0] = 50.0  # and neither must values outside it
    n_angles = 1 if dummy or two_d else 3
    draw = SpatialDraw(affine_matrix([angle] * n_angles, scale, len(patch), dummy))
    out = np.empty((2, *patch), np.float32)
    seg_out = np.empty((1, *patch), np.int16)
    transform_patch(case, case_seg, start, initial, draw, out, seg_out)
    np.testing.assert_allclose(out, ref, atol=2e-4 * np.abs(data).max())
    agree = removed(seg_out) == removed(ref_seg)  # as the DALI test: -1 (outside) counts as background
    assert agree.mean() > 0.99, agree.mean()
    assert not (~agree[0] & ~binary_dilation(label_border(removed(ref_seg)[0]))).any()
    assert 7 not in np.unique(seg_out)


@pytest.mark.parametrize("patch,initial", [
    pytest.param((16, 24, 24), (20, 30, 30), id="3d-larger"),
    pytest.param((16, 24, 24), (15, 25, 23), id="3d-odd-and-smaller"),
    pytest.param((32, 32), (41, 40), id="2d"),
])
def test_plain_crop_equals_nnunet_crop_tensor(patch, initial):
    data, seg = image(initial, 2), shapes_seg(initial)
    centre = [s // 2 for s in initial]
    ref = crop_tensor(torch.from_numpy(data), centre, patch).numpy()
    ref_seg = crop_tensor(torch.from_numpy(seg), centre, patch, pad_kwargs={"value": -1}).numpy()
    two_d = len(patch) == 2
    out = np.empty((2, *patch), np.float32)
    seg_out = np.empty((1, *patch), np.int16)
    case = data[:, None] if two_d else data
    case_seg = seg[:, None] if two_d else seg
    transform_patch(np.ascontiguousarray(case), np.ascontiguousarray(case_seg), (0, 0, 0), initial,
                    SpatialDraw(None), out, seg_out)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(seg_out, ref_seg)


# --- noise -------------------------------------------------------------------------------------------------

def test_noise_is_gaussian_with_the_std_and_reproducible():
    data = np.zeros((2, 16, 40, 41), np.float32)  # odd rows: pairs of the generator straddle rows
    seg = np.zeros((1, 16, 40, 41), np.int16)
    box = np.array([[0, 16], [0, 40], [0, 41]])
    m = np.concatenate([np.eye(3), np.zeros((3, 1))], axis=1)
    out, _ = _run(data, seg, m, box, (16, 40, 41), noise_std=0.07, noise_seed=11)
    noise = out.ravel() / 0.07
    assert abs(noise.mean()) < 5 / math.sqrt(noise.size)
    assert abs(noise.std() - 1) < 0.01
    assert stats.kstest(noise, "norm").pvalue > 1e-3
    assert abs(np.corrcoef(noise[:-1], noise[1:])[0, 1]) < 0.01  # neighbours (cos / sin of one pair) uncorrelated
    np.testing.assert_allclose(out[0].std(), out[1].std(), rtol=0.03)  # one std for all channels
    again, _ = _run(data, seg, m, box, (16, 40, 41), noise_std=0.07, noise_seed=11)
    other, _ = _run(data, seg, m, box, (16, 40, 41), noise_std=0.07, noise_seed=12)
    np.testing.assert_array_equal(out, again)
    assert abs(np.corrcoef(out.ravel(), other.ravel())[0, 1]) < 0.01


# --- parameter draws ---------------------------------------------------------------------------------------

def within(count, n, p):
    return abs(count - n * p) <= 4.5 * math.sqrt(n * p * (1 - p)) + 1


@pytest.mark.parametrize("patch,dummy", [pytest.param((16, 24, 24), False, id="3d"),
                                         pytest.param((8, 48, 48), True, id="dummy-2d"),
                                         pytest.param((32, 32), False, id="2d")])
def test_draws_follow_nnunet_probabilities_and_ranges(patch, dummy):
    spec = AugmentSpec(patch, ROT, dummy, ())
    rng = np.random.default_rng(0)
    n = 4000
    draws = [draw_spatial(spec, rng) for _ in range(n)]
    transformed = [d.matrix for d in draws if d.matrix is not None]
    p_rot, p_scale = DEFAULT_PROBABILITIES["rotation"], DEFAULT_PROBABILITIES["scaling"]
    assert within(len(transformed), n, 1 - (1 - p_rot) * (1 - p_scale))
    ndim = len(patch)
    plane = slice(1, 3) if dummy else slice(0, ndim)
    scales = np.array([abs(np.linalg.det(a[plane, plane])) ** (1 / (2 if dummy else ndim)) for a in transformed])
    scaled = ~np.isclose(scales, 1.0)
    assert within(int(scaled.sum()), n, p_scale)
    assert scales.min() >= 0.7 - 1e-9 and scales.max() <= 1.4 + 1e-9
    assert abs(np.median(scales[scaled]) - 1.05) < 0.05  # U(0.7, 1.4)
    for a in transformed:
        if dummy:  # in-plane only: the depth axis untouched
            np.testing.assert_array_equal(a[0], [1, 0, 0])
            np.testing.assert_array_equal(a[:, 0], [1, 0, 0])
    rotations = [a[plane, plane] / s for a, s in zip(transformed, scales)]
    rotated = np.array([not np.allclose(r, np.eye(len(r))) for r in rotations])
    assert within(int(rotated.sum()), n, p_rot)
    angles = np.array([math.atan2(r[-1, -2], r[-1, -1]) if ndim == 2 or dummy else math.asin(-r[2, 0])
                       for r, rot in zip(rotations, rotated) if rot])
    assert angles.min() >= ROT[0] - 1e-9 and angles.max() <= ROT[1] + 1e-9
    noisy = np.array([d.noise_std for d in draws if d.noise_std > 0])
    assert within(len(noisy), n, DEFAULT_PROBABILITIES["noise"])
    assert noisy.max() <= 0.1 and abs(noisy.mean() - 0.05) < 0.01
    assert len({d.noise_seed for d in draws if d.noise_std > 0}) == len(noisy)


def test_validation_spec_draws_the_plain_crop():
    spec = AugmentSpec((8, 8), ROT, False, (), augment=False)
    rng = np.random.default_rng(0)
    assert all(draw_spatial(spec, rng) == SpatialDraw(None) for _ in range(50))


# --- the sampler's transformed batches ---------------------------------------------------------------------

@pytest.mark.parametrize("two_d", [False, True], ids=["3d", "2d"])
def test_sampler_transformed_batch_equals_transform_of_its_initial_patch(tmp_path, two_d):
    """Each sample of `sample_transformed_batch` is the spatial transform of the initial patch at its
    start (the crop nnU-Net's loader makes, padded with 0 / -1), computed by batchgeneratorsv2."""
    from fastseg.preprocess.locations import sample_class_locations
    from fastseg.preprocess.storage import save_case

    rng = np.random.default_rng(0)
    folder = tmp_path / "pre"
    for name, shape in (("a", (12, 30, 34)), ("b", (9, 26, 40))):
        data = image(shape, 1, seed=len(name) + shape[0]) * 3
        seg = shapes_seg(shape).astype(np.int8)
        save_case(folder, name, data, seg, {"class_locations": sample_class_locations(seg, [1, 2])})
    patch = (24, 24) if two_d else (8, 20, 20)
    initial = (30, 31) if two_d else (10, 27, 26)
    spec = AugmentSpec(patch, (0.35, 0.35), False, (), scaling=(1.2, 1.2), probabilities=only(rotation=1, scaling=1))
    sampler = PatchSampler(folder, ["a", "b"], initial, 4, final_patch_size=patch, two_d=two_d, seed=0)
    batch = sampler.sample_transformed_batch(spec, rng)
    assert batch.data.shape == (4, 1, *patch) and batch.seg.shape == (4, 1, *patch)
    for b in range(4):
        data = np.load(folder / f"{batch.keys[b]}.npy")
        seg = np.load(folder / f"{batch.keys[b]}_seg.npy").astype(np.int16)
        start = batch.starts[b][1:] if two_d else batch.starts[b]
        size = initial
        crop = np.zeros((1, *size), np.float32)
        crop_seg = np.full((1, *size), -1, np.int16)
        plane = (data[:, batch.starts[b][0]], seg[:, batch.starts[b][0]]) if two_d else (data, seg)
        src, dst = [slice(None)], [slice(None)]
        for lo, n, extent in zip(start, size, plane[0].shape[1:]):
            src.append(slice(max(lo, 0), min(lo + n, extent)))
            dst.append(slice(max(lo, 0) - lo, min(lo + n, extent) - lo))
        crop[tuple(dst)] = plane[0][tuple(src)]
        crop_seg[tuple(dst)] = plane[1][tuple(src)]
        ref, ref_seg = _bgv2_spatial(crop, crop_seg, patch, False, 0.35, 1.2)
        np.testing.assert_allclose(batch.data[b], ref, atol=2e-4 * np.abs(crop).max())
        agree = removed(batch.seg[b]) == removed(ref_seg)
        assert agree.mean() > 0.98
        assert not (~agree[0] & ~binary_dilation(label_border(removed(ref_seg)[0]))).any()


def test_sampler_refuses_a_spec_of_another_patch(tmp_path):
    from fastseg.preprocess.storage import save_case

    shape = (6, 12, 12)
    seg = shapes_seg(shape).astype(np.int8)
    save_case(tmp_path, "a", image(shape, 1), seg, {"class_locations": {1: np.zeros((0, 4), np.int64)}})
    sampler = PatchSampler(tmp_path, ["a"], (6, 12, 12), 1, final_patch_size=(4, 8, 8))
    with pytest.raises(ValueError, match=r"spec.patch_size \(4, 8, 9\) must be the sampler's final_patch_size"):
        sampler.sample_transformed_batch(AugmentSpec((4, 8, 9), ROT, False, ()))


# --- bad input ---------------------------------------------------------------------------------------------

def test_affine_patch_rejects_bad_input():
    data = np.zeros((1, 4, 5, 6), np.float32)
    seg = np.zeros((1, 4, 5, 6), np.int16)
    out = np.zeros((1, 2, 2, 2), np.float32)
    seg_out = np.zeros((1, 2, 2, 2), np.int16)
    m = np.concatenate([np.eye(3), np.zeros((3, 1))], axis=1)
    box = np.array([[0, 4], [0, 5], [0, 6]])
    with pytest.raises(TypeError, match="out must have dtype float32, got float64"):
        affine_patch(data, seg, out.astype(np.float64), seg_out, m, box)
    with pytest.raises(TypeError, match="seg must have dtype int8 or int16, got int32"):
        affine_patch(data, seg.astype(np.int32), out, seg_out, m, box)
    with pytest.raises(ValueError, match="both be given"):
        affine_patch(data, seg, out, None, m, box)
    with pytest.raises(ValueError, match=r"0 <= lo <= hi <= \(4, 5, 6\)"):
        affine_patch(data, seg, out, seg_out, m, np.array([[0, 5], [0, 5], [0, 6]]))
    with pytest.raises(ValueError, match="finite"):
        affine_patch(data, seg, out, seg_out, m * np.nan, box)
    with pytest.raises(ValueError, match="writable"):
        out.flags.writeable = False
        affine_patch(data, seg, out, seg_out, m, box)
    with pytest.raises(ValueError, match="channels"):
        affine_patch(data, seg, np.zeros((2, 2, 2, 2), np.float32), seg_out, m, box)
    with pytest.raises(ValueError, match="noise_std"):
        affine_patch(data, None, np.zeros((1, 2, 2, 2), np.float32), None, m, box, noise_std=-1.0)
