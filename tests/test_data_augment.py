"""fastseg.data.augment (nnU-Net's training augmentations on DALI's CPU operators) against batchgeneratorsv2.

Each augmentation is forced on alone (probability 1, the others 0) with its parameter pinned, and
compared with the batchgeneratorsv2 transform nnU-Net uses, on the same input. Probabilities are
checked by counting changed samples over a few hundred draws (tolerance 4.5 binomial standard
deviations); ranges by reading the drawn factors back from the outputs.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.cropping import crop_tensor
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform
from helpers import requires_cuda
from scipy.ndimage import binary_dilation, gaussian_filter

from fastseg.data.augment import DEFAULT_PROBABILITIES, AugmentSpec, build_augmentation_pipeline, run_batches

ROT = (-math.pi / 6, math.pi / 6)


# --- inputs and runners ---------------------------------------------------------------------------------

def image(shape, channels=2, seed=0):
    """Smooth random channels (C, *shape), float32, about unit scale, offset from zero."""
    rng = np.random.default_rng(seed)
    img = np.stack([gaussian_filter(rng.standard_normal(shape), 1.5) for _ in range(channels)])
    return (img / img.std() + 1.0).astype(np.float32)


def shapes_seg(shape):
    """(1, *shape) int16: background 0, a ball of label 1, a slab of label 2, a corner of -1."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    centre = np.array(shape, float).reshape(-1, *[1] * len(shape)) * 0.45
    seg = np.zeros(shape, np.int16)
    seg[np.sqrt(((grid - centre) ** 2).sum(0)) < min(shape) * 0.3] = 1
    seg[grid[-1] > shape[-1] * 0.75] = 2
    seg[(grid[0] < shape[0] * 0.2) & (grid[1] < shape[1] * 0.25)] = -1
    return seg[None]


def only(**probabilities):
    """Probabilities with every augmentation off except those given."""
    probs = {name: 0.0 for name in DEFAULT_PROBABILITIES}
    probs.update(probabilities)
    return probs


def run(data, seg, spec, batch_size=1, seed=0, iterations=1):
    """The pipeline on `batch_size` copies of one sample; returns stacked (data, seg) of all iterations."""
    def source():
        return [data.copy() for _ in range(batch_size)], [seg.copy() for _ in range(batch_size)]

    pipe = build_augmentation_pipeline(source, spec, batch_size, num_threads=2, seed=seed)
    batches = [run_batches(pipe) for _ in range(iterations)]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def removed(seg):
    seg = np.array(seg)
    seg[seg == -1] = 0
    return seg


def nnunet(transform, data, seg=None):
    """A batchgeneratorsv2 transform on copies of (data, seg) as numpy."""
    kwargs = {"image": torch.from_numpy(data.copy())}
    if seg is not None:
        kwargs["segmentation"] = torch.from_numpy(seg.copy())
    out = transform(**kwargs)
    return out["image"].numpy(), (out["segmentation"].numpy() if seg is not None else None)


# --- the spec ---------------------------------------------------------------------------------------------

def test_spec_validation():
    with pytest.raises(ValueError, match="did you mean 'rotation'"):
        AugmentSpec((8, 8), ROT, False, (0,), probabilities={"rotaton": 1.0})
    with pytest.raises(ValueError, match=r"in \[0, 1\], got 2"):
        AugmentSpec((8, 8), ROT, False, (0,), probabilities={"blur": 2})
    with pytest.raises(ValueError, match="2 or 3 positive sizes"):
        AugmentSpec((8,), ROT, False, ())
    with pytest.raises(ValueError, match="dummy_2d needs a 3D"):
        AugmentSpec((8, 8), ROT, True, ())
    with pytest.raises(ValueError, match="mirror_axes"):
        AugmentSpec((8, 8), ROT, False, (2,))
    with pytest.raises(ValueError, match="lowres_scale"):
        AugmentSpec((8, 8), ROT, False, (), lowres_scale=(0.25, 1))
    with pytest.raises(ValueError, match="low <= high"):
        AugmentSpec((8, 8), (1.0, -1.0), False, ())
    with pytest.raises(ValueError, match="batch_size"):
        build_augmentation_pipeline(lambda: None, AugmentSpec((8, 8), ROT, False, ()), 0)
    bad_seg = lambda: ([np.zeros((1, 8, 8), np.float32)], [np.zeros((1, 8, 9), np.int16)])  # noqa: E731
    pipe = build_augmentation_pipeline(bad_seg, AugmentSpec((8, 8), ROT, False, ()), 1, num_threads=1)
    with pytest.raises(Exception, match=r"seg \(1, same sizes\), got data \(1, 8, 8\) and seg \(1, 8, 9\)"):
        run_batches(pipe)
    spec = AugmentSpec([8, 9], ROT, False, [1])
    assert spec.patch_size == (8, 9) and spec.mirror_axes == (1,)
    assert spec.probability("blur") == 0.2
    assert dataclasses.replace(spec, probabilities={"blur": 1}).probability("blur") == 1
    overrides = {"blur": 1.0}
    spec = AugmentSpec((8, 8), ROT, False, (), probabilities=overrides)
    overrides["blur"] = 0.0  # the spec keeps its own read-only copy
    assert spec.probability("blur") == 1.0 and hash(spec) == hash(dataclasses.replace(spec))


# --- shapes, labels, determinism ------------------------------------------------------------------------

CASES = [
    pytest.param((16, 24, 24), (20, 30, 31), False, 2, id="3d"),
    pytest.param((16, 24, 24), (16, 31, 30), True, 1, id="3d-dummy-2d"),
    pytest.param((32, 32), (41, 44), False, 3, id="2d"),
    pytest.param((16, 24, 24), (13, 20, 25), False, 1, id="3d-input-smaller"),
]


@pytest.mark.parametrize("patch,initial,dummy,channels", CASES)
def test_shapes_dtypes_and_labels(patch, initial, dummy, channels):
    spec = AugmentSpec(patch, ROT, dummy, tuple(range(len(patch))),
                       probabilities={name: 1.0 for name in DEFAULT_PROBABILITIES})
    data, seg = run(image(initial, channels), shapes_seg(initial), spec, batch_size=3)
    assert data.shape == (3, channels, *patch) and data.dtype == np.float32
    assert seg.shape == (3, 1, *patch) and seg.dtype == np.int16
    assert np.isfinite(data).all()
    assert set(np.unique(seg)) <= {0, 1, 2}
    data, seg = run(image(initial, channels), shapes_seg(initial), dataclasses.replace(spec, probabilities=None),
                    batch_size=8)
    assert data.shape == (8, channels, *patch) and set(np.unique(seg)) <= {0, 1, 2}


def test_labels_stay_in_the_input_label_set():
    rng = np.random.default_rng(3)
    seg = rng.choice(np.array([-1, 0, 3, 7], np.int16), size=(1, 20, 28, 28))
    spec = AugmentSpec((16, 24, 24), ROT, False, (0, 1, 2), probabilities={"rotation": 1.0, "scaling": 1.0})
    _, out = run(image((20, 28, 28), 1), seg, spec, batch_size=6)
    assert set(np.unique(out)) <= {0, 3, 7}


def test_same_seed_same_batches():
    spec = AugmentSpec((16, 24, 24), ROT, False, (0, 1, 2),
                       probabilities={name: 0.5 for name in DEFAULT_PROBABILITIES})
    args = image((20, 30, 30), 2), shapes_seg((20, 30, 30))
    first = run(*args, spec, batch_size=6, seed=7, iterations=2)
    again = run(*args, spec, batch_size=6, seed=7, iterations=2)
    other = run(*args, spec, batch_size=6, seed=8, iterations=2)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


# --- against batchgeneratorsv2 ----------------------------------------------------------------------------

@pytest.mark.parametrize("patch,initial", [
    pytest.param((16, 24, 24), (20, 30, 30), id="3d-larger"),
    pytest.param((16, 24, 24), (15, 25, 23), id="3d-odd-and-smaller"),
    pytest.param((32, 32), (41, 40), id="2d"),
])
def test_validation_crop_equals_nnunet(patch, initial):
    data, seg = image(initial, 2), shapes_seg(initial)
    out, out_seg = run(data, seg, AugmentSpec(patch, ROT, False, (0,), augment=False))
    centre = [s // 2 for s in initial]
    ref = crop_tensor(torch.from_numpy(data), centre, patch).numpy()
    ref_seg = crop_tensor(torch.from_numpy(seg), centre, patch, pad_kwargs={"value": -1}).numpy()
    np.testing.assert_array_equal(out[0], ref)
    np.testing.assert_array_equal(out_seg[0], removed(ref_seg))
    # and with augment=True but no rotation or scaling: the same crop
    out2, out2_seg = run(data, seg, AugmentSpec(patch, ROT, False, (), probabilities=only()))
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(out2_seg, out_seg)


def label_border(seg):
    """Voxels with a differently labelled face neighbour."""
    border = np.zeros(seg.shape, bool)
    for axis in range(seg.ndim):
        diff = np.diff(seg, axis=axis) != 0
        lo = [slice(None)] * seg.ndim
        hi = [slice(None)] * seg.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        border[tuple(lo)] |= diff
        border[tuple(hi)] |= diff
    return border


@pytest.mark.parametrize("patch,initial,dummy,angle,scale", [
    pytest.param((16, 24, 24), (20, 30, 30), False, 0.3, 1.0, id="3d-rotate"),
    pytest.param((16, 24, 24), (20, 30, 30), False, -0.4, 1.3, id="3d-rotate-scale-out-of-bounds"),
    pytest.param((16, 24, 24), (19, 29, 31), False, 0.2, 0.8, id="3d-odd-rotate-zoom"),
    pytest.param((16, 24, 24), (16, 31, 30), True, 0.5, 0.9, id="3d-dummy-2d"),
    pytest.param((32, 32), (41, 44), False, -0.7, 1.2, id="2d"),
])
def test_spatial_transform_matches_nnunet(patch, initial, dummy, angle, scale):
    data, seg = image(initial, 2), shapes_seg(initial)
    spec = AugmentSpec(patch, (angle, angle), dummy, (), scaling=(scale, scale),
                       probabilities=only(rotation=1.0, scaling=1.0))
    out, out_seg = run(data, seg, spec)
    transform = SpatialTransform(patch[1:] if dummy else patch, 0, False, p_rotation=1, rotation=angle,
                                 p_scaling=1, scaling=scale, p_synchronize_scaling_across_axes=1,
                                 border_mode_seg="constant", padding_value_seg=-1)
    batch = {"image": torch.from_numpy(data.copy()), "segmentation": torch.from_numpy(seg.copy())}
    if dummy:
        batch = Convert3DTo2DTransform()(**batch)
    batch = transform(**batch)
    if dummy:
        batch = Convert2DTo3DTransform()(**batch)
    ref, ref_seg = batch["image"].numpy(), removed(batch["segmentation"].numpy())
    # the image: the same trilinear samples with zeros outside, to float32 rounding of the coordinates
    np.testing.assert_allclose(out[0], ref, atol=2e-4 * np.abs(data).max())
    # the seg: nearest neighbour here, per-label bilinear argmax in nnU-Net: equal except on label borders
    agree = out_seg[0, 0] == ref_seg[0]
    assert agree.mean() > 0.99, agree.mean()
    assert not (~agree & ~binary_dilation(label_border(ref_seg[0]))).any()


def test_rotation_is_in_plane_for_dummy_2d():
    initial = (6, 30, 30)
    data = np.repeat(image((1, 30, 30), 1)[:, :1], 6, axis=1) * np.arange(1, 7, dtype=np.float32)[:, None, None]
    spec = AugmentSpec((6, 24, 24), (0.6, 0.6), True, (), probabilities=only(rotation=1.0))
    out, _ = run(data, shapes_seg(initial), spec)
    # every slice is the first one times its factor: nothing moved between slices
    np.testing.assert_allclose(out[0, 0], out[0, 0, :1] * np.arange(1, 7)[:, None, None], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("patch", [pytest.param((16, 24, 24), id="3d"), pytest.param((32, 32), id="2d")])
@pytest.mark.parametrize("sigma", [0.5, 0.83, 1.0])
def test_blur_matches_nnunet(patch, sigma):
    data = image(patch, 3)
    spec = AugmentSpec(patch, ROT, False, (), blur_sigma=(sigma, sigma), probabilities=only(blur=1, blur_per_channel=1))
    out, _ = run(data, shapes_seg(patch), spec)
    ref, _ = nnunet(GaussianBlurTransform(sigma, False, False, 1.0), data)
    np.testing.assert_allclose(out[0], ref, atol=1e-5)


@pytest.mark.parametrize("patch,dummy", [
    pytest.param((16, 24, 24), False, id="3d"),
    pytest.param((16, 24, 24), True, id="3d-dummy-2d-ignores-axis-0"),
    pytest.param((15, 23, 29), False, id="3d-odd"),
    pytest.param((32, 32), False, id="2d"),
])
@pytest.mark.parametrize("channels", [pytest.param(1, id="one-channel-resize"), pytest.param(3, id="per-channel-warp")])
@pytest.mark.parametrize("scale", [0.52, 0.63, 0.77, 0.91])
def test_low_resolution_matches_nnunet(patch, dummy, channels, scale):
    data = image(patch, channels)
    spec = AugmentSpec(patch, ROT, dummy, (), lowres_scale=(scale, scale),
                       probabilities=only(lowres=1, lowres_per_channel=1))
    out, _ = run(data, shapes_seg(patch), spec)
    ref, _ = nnunet(SimulateLowResolutionTransform(scale, False, True, (0,) if dummy else None, None, 1.0), data)
    np.testing.assert_allclose(out[0], ref, atol=2e-5)


@pytest.mark.parametrize("channels", [pytest.param(1, id="one-channel-resize"), pytest.param(3, id="per-channel-warp")])
def test_low_resolution_tie_goes_up(channels):
    """n = 24, m = round(24 * 0.8) = 19: (9 + 1/2) * 24 / 19 = 12 exactly, which both take as 12."""
    data = image((16, 24, 24), channels)
    spec = AugmentSpec((16, 24, 24), ROT, False, (), lowres_scale=(0.8, 0.8),
                       probabilities=only(lowres=1, lowres_per_channel=1))
    out, _ = run(data, shapes_seg((16, 24, 24)), spec)
    ref, _ = nnunet(SimulateLowResolutionTransform(0.8, False, True, None, None, 1.0), data)
    np.testing.assert_allclose(out[0], ref, atol=2e-5)


def test_low_resolution_sizes_round_half_to_even():
    """s = 0.5 on (15, 23, 29): 7.5 -> 8, 11.5 -> 12, 14.5 -> 14, as Python's round() in nnU-Net."""
    patch = (15, 23, 29)
    data = image(patch, 1)
    spec = AugmentSpec(patch, ROT, False, (), lowres_scale=(0.5, 0.5),
                       probabilities=only(lowres=1, lowres_per_channel=1))
    out, _ = run(data, shapes_seg(patch), spec)
    ref, _ = nnunet(SimulateLowResolutionTransform(0.5, False, True, None, None, 1.0), data)
    np.testing.assert_allclose(out[0], ref, atol=2e-5)


@pytest.mark.parametrize("patch", [pytest.param((16, 24, 24), id="3d"), pytest.param((32, 32), id="2d")])
@pytest.mark.parametrize("inverted", [False, True], ids=["plain", "inverted"])
@pytest.mark.parametrize("gamma", [0.7, 1.3])
def test_gamma_matches_nnunet(patch, inverted, gamma):
    data = image(patch, 2)
    name = "gamma_inverted" if inverted else "gamma"
    out, _ = run(data, shapes_seg(patch), AugmentSpec(patch, ROT, False, (), gamma=(gamma, gamma),
                                                      probabilities=only(**{name: 1.0})))
    ref, _ = nnunet(GammaTransform(gamma, float(inverted), False, 1, 1), data)
    np.testing.assert_allclose(out[0], ref, atol=2e-5)


@pytest.mark.parametrize("factor", [0.8, 1.2])
def test_contrast_and_brightness_match_nnunet(factor):
    patch = (16, 24, 24)
    data = image(patch, 2)
    spec = AugmentSpec(patch, ROT, False, (), contrast=(factor, factor), brightness=(factor, factor))
    out, _ = run(data, shapes_seg(patch), dataclasses.replace(spec, probabilities=only(contrast=1)))
    ref, _ = nnunet(ContrastTransform(factor, True, False, 1), data)
    np.testing.assert_allclose(out[0], ref, atol=1e-5)
    out, _ = run(data, shapes_seg(patch), dataclasses.replace(spec, probabilities=only(brightness=1)))
    ref, _ = nnunet(MultiplicativeBrightnessTransform(factor, False, 1), data)
    np.testing.assert_allclose(out[0], ref, atol=1e-6)


@pytest.mark.parametrize("patch,axes", [
    pytest.param((16, 24, 24), (0,), id="3d-axis-0"),
    pytest.param((16, 24, 24), (2,), id="3d-axis-2"),
    pytest.param((16, 24, 24), (0, 1, 2), id="3d-all"),
    pytest.param((32, 32), (1,), id="2d-axis-1"),
    pytest.param((32, 32), (0, 1), id="2d-all"),
])
def test_mirror_matches_nnunet(patch, axes):
    data, seg = image(patch, 2), shapes_seg(patch)
    out, out_seg = run(data, seg, AugmentSpec(patch, ROT, False, axes, probabilities=only(mirror=1.0)))
    mirror = MirrorTransform(axes)  # draws each axis with p 0.5; here all of them are flipped
    ref = mirror._apply_to_image(torch.from_numpy(data.copy()), axes=list(axes)).numpy()
    ref_seg = mirror._apply_to_segmentation(torch.from_numpy(seg.copy()), axes=list(axes)).numpy()
    np.testing.assert_array_equal(out[0], ref)
    np.testing.assert_array_equal(out_seg[0], removed(ref_seg))


@pytest.mark.parametrize("channels", [pytest.param((0,), id="channel-0"), pytest.param((1, 2), id="channels-1-2"),
                                      pytest.param((1, 5), id="index-past-channels-ignored")])
def test_mask_image_matches_nnunet(channels):
    patch = (16, 24, 24)
    data, seg = image(patch, 3), shapes_seg(patch)
    spec = AugmentSpec(patch, ROT, False, (), mask_channels=channels, probabilities=only())
    out, out_seg = run(data, seg, spec)
    batch = MaskImageTransform([c for c in channels if c < 3])(image=torch.from_numpy(data.copy()),
                                                               segmentation=torch.from_numpy(seg.copy()))
    np.testing.assert_array_equal(out[0], batch["image"].numpy())
    np.testing.assert_array_equal(out_seg[0], removed(seg))
    assert (out[0][:, seg[0] < 0] == 0).any()
    # validation batches are not masked (nnU-Net's validation transforms only remove -1)
    out, _ = run(data, seg, dataclasses.replace(spec, augment=False))
    np.testing.assert_array_equal(out[0], data)


# --- probabilities and ranges -----------------------------------------------------------------------------

def within(count, n, p):
    sd = math.sqrt(n * p * (1 - p))
    return abs(count - n * p) <= 4.5 * sd + 1


PROBABILITY_CASES = [
    ("rotation", {}), ("scaling", {}), ("noise", {}), ("brightness", {}), ("contrast", {}),
    ("gamma_inverted", {}), ("gamma", {}), ("blur", {"blur_per_channel": 1.0}),
    ("lowres", {"lowres_per_channel": 1.0}),
]


@pytest.mark.parametrize("name,extra", [pytest.param(n, e, id=n) for n, e in PROBABILITY_CASES])
def test_each_augmentation_applies_with_its_probability(name, extra):
    patch, initial, n = (8, 12, 12), (10, 14, 14), 320
    data, seg = image(initial, 1), shapes_seg(initial)
    spec = AugmentSpec(patch, ROT, False, (), lowres_scale=(0.5, 0.7), probabilities=only(**{name: 1.0}, **extra))
    base, _ = run(data, seg, dataclasses.replace(spec, probabilities=only()))
    spec = dataclasses.replace(spec, probabilities=only(**{name: DEFAULT_PROBABILITIES[name]}, **extra))
    out, _ = run(data, seg, spec, batch_size=80, iterations=n // 80)
    changed = int((np.abs(out - base).reshape(n, -1).max(1) > 1e-6).sum())
    assert within(changed, n, DEFAULT_PROBABILITIES[name]), (name, changed, n)


@pytest.mark.parametrize("name", ["blur", "lowres"])
def test_per_channel_probability(name):
    patch, channels, n = (8, 12, 12), 4, 160
    data, seg = image(patch, channels), shapes_seg(patch)
    per_channel_name = f"{name}_per_channel"
    probabilities = only(**{name: 1.0, per_channel_name: DEFAULT_PROBABILITIES[per_channel_name]})
    spec = AugmentSpec(patch, ROT, False, (), lowres_scale=(0.5, 0.7), probabilities=probabilities)
    out, _ = run(data, seg, spec, batch_size=80, iterations=n // 80)
    per_channel = np.abs(out - data[None]).reshape(n, channels, -1).max(2) > 1e-6
    assert within(int(per_channel.sum()), n * channels, 0.5)
    # channels drawn independently: no channel changed in about 1 of 16 samples
    assert within(int((~per_channel.any(1)).sum()), n, 1 / 16)


def test_mirror_probability_per_axis():
    patch, n = (6, 8, 10), 320
    data, seg = image(patch, 1), shapes_seg(patch)
    spec = AugmentSpec(patch, ROT, False, (0, 2), probabilities=only(mirror=DEFAULT_PROBABILITIES["mirror"]))
    out, out_seg = run(data, seg, spec, batch_size=80, iterations=n // 80)
    def flip(x, flags):
        return np.flip(x, [axis + 1 for axis, flag in zip((0, 2), flags) if flag])

    variants = {(a, b): flip(data, (a, b)) for a in (0, 1) for b in (0, 1)}
    found = []
    for i in range(n):
        match = [k for k, v in variants.items() if np.array_equal(out[i], v)]
        assert len(match) == 1
        found.append(match[0])
        np.testing.assert_array_equal(out_seg[i], removed(flip(seg, match[0])))
    found = np.array(found)
    assert within(int(found[:, 0].sum()), n, 0.5) and within(int(found[:, 1].sum()), n, 0.5)
    assert within(int((found[:, 0] & found[:, 1]).sum()), n, 0.25)  # independent axes


def test_brightness_and_contrast_factors_follow_bgcontrast():
    patch, channels, n = (8, 12, 12), 3, 160
    data = image(patch, channels)
    spec = AugmentSpec(patch, ROT, False, ())
    out, _ = run(data, shapes_seg(patch), dataclasses.replace(spec, probabilities=only(brightness=1)),
                 batch_size=80, iterations=2)
    factors = (out / data[None]).reshape(n, channels, -1)
    assert np.ptp(factors, axis=2).max() < 1e-5  # one factor per channel
    factors = factors[..., 0]
    assert factors.min() >= 0.75 and factors.max() <= 1.25
    assert within(int((factors < 1).sum()), n * channels, 0.5)  # BGContrast: half below one
    assert np.ptp(factors, axis=1).min() > 0  # channels drawn independently
    out, _ = run(data, shapes_seg(patch), dataclasses.replace(spec, probabilities=only(contrast=1)),
                 batch_size=80, iterations=2)
    mean = data.reshape(channels, -1).mean(1)[:, None]
    x = data.reshape(channels, -1) - mean
    mid = np.abs(x) < 0.3  # well inside [min, max] for factors <= 1.25: no clipping
    slopes = np.array([[np.median((out[i, c].ravel() - mean[c])[mid[c]] / x[c][mid[c]]) for c in range(channels)]
                       for i in range(n)])
    assert slopes.min() >= 0.75 - 1e-4 and slopes.max() <= 1.25 + 1e-4
    assert within(int((slopes < 1).sum()), n * channels, 0.5)
    assert (out.reshape(n, channels, -1).min(2) >= data.reshape(channels, -1).min(1) - 1e-6).all()
    assert (out.reshape(n, channels, -1).max(2) <= data.reshape(channels, -1).max(1) + 1e-6).all()


def test_noise_std_is_shared_by_channels_and_in_range():
    patch, channels, n = (16, 24, 24), 2, 80
    data = image(patch, channels)
    out, _ = run(data, shapes_seg(patch), AugmentSpec(patch, ROT, False, (), probabilities=only(noise=1)),
                 batch_size=40, iterations=2)
    noise = (out - data[None]).reshape(n, channels, -1)
    std = noise.std(2)
    assert std.max() <= 0.1 * 1.05 and abs(noise.mean()) < 1e-3
    np.testing.assert_allclose(std[:, 0], std[:, 1], rtol=0.08, atol=2e-3)  # one std, independent noise
    assert abs(np.corrcoef(noise[:, 0].ravel(), noise[:, 1].ravel())[0, 1]) < 0.02
    assert abs(std.mean() - 0.05) < 0.01  # std ~ U(0, 0.1)


# --- GPU ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("patch,dummy,augment", [
    pytest.param((16, 24, 24), False, True, id="3d"),
    pytest.param((16, 24, 24), True, True, id="3d-dummy-2d"),
    pytest.param((32, 32), False, True, id="2d"),
    pytest.param((32, 32), False, False, id="2d-validation"),
])
def test_gpu_graph_uses_gpu_operators_only(patch, dummy, augment):
    """Without a GPU: trace the device_id=0 graph (DALI's private Pipeline._build_graph needs no CUDA) and
    check that every operator placed on the GPU has a GPU implementation and that GPU arithmetic only
    reads GPU tensors (parameters are moved with .gpu(); argument inputs stay on the CPU)."""
    from nvidia.dali.ops import _registry

    from fastseg.data import augment as module

    spec = AugmentSpec(patch, ROT, dummy, (0, 1), augment=augment, mask_channels=(0,),
                       probabilities={name: 1.0 for name in DEFAULT_PROBABILITIES})
    pipe = module._augmentation_pipeline(lambda: None, spec, "gpu", batch_size=2, num_threads=1, device_id=0)
    pipe._build_graph()
    gpu_ops = set(_registry.gpu_ops())
    on_gpu = [op for op in pipe._ops if op._op.device == "gpu"]
    assert {op._op.schema_name for op in on_gpu} <= gpu_ops
    for op in on_gpu:
        if "Arithmetic" in op._op.schema_name:
            assert all(node.device == "gpu" for node in op.inputs), op._op.schema_name
    assert any("WarpAffine" in op._op.schema_name for op in on_gpu) == augment


@requires_cuda
def test_gpu_matches_cpu_for_deterministic_augmentations():
    patch, initial = (16, 24, 24), (20, 30, 30)
    data, seg = image(initial, 2), shapes_seg(initial)
    spec = AugmentSpec(patch, (0.3, 0.3), False, (0, 1, 2), scaling=(0.9, 0.9), blur_sigma=(0.8, 0.8),
                       lowres_scale=(0.7, 0.7), gamma=(1.3, 1.3),
                       probabilities=only(rotation=1, scaling=1, blur=1, blur_per_channel=1, lowres=1,
                                          lowres_per_channel=1, gamma=1, mirror=1))
    cpu = run(data, seg, spec)
    source = lambda: ([data.copy()], [seg.copy()])  # noqa: E731
    gpu = run_batches(build_augmentation_pipeline(source, spec, 1, device_id=0))
    np.testing.assert_allclose(gpu[0], cpu[0], atol=1e-4)
    assert (gpu[1] == cpu[1]).mean() > 0.999
