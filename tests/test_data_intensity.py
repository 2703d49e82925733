"""The native intensity pass (fastseg.ops.intensity.augment_intensity, fastseg.data.intensity) against
batchgeneratorsv2: each step alone with pinned parameters on the transform nnU-Net uses (its blur's
blur_dimension per axis, SimulateLowResolutionTransform, GammaTransform, ContrastTransform,
MultiplicativeBrightnessTransform, MirrorTransform, MaskImageTransform), all of them chained in nnU-Net's
order, the separate pow against float64; the parameter draws' probabilities and ranges (4.5 binomial
standard deviations); and the loader's CPU batches leaving the source finished."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import blur_dimension
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from test_data_augment import ROT, image, only, removed, shapes_seg

from fastseg import threads
from fastseg.data.augment import DEFAULT_PROBABILITIES, AugmentSpec
from fastseg.data.intensity import apply_intensity, draw_intensity
from fastseg.ops.intensity import augment_intensity


def _neutral(batch, channels, ndim):
    nan = np.full((batch, channels), np.nan, np.float32)
    return dict(blur_sigma=np.zeros((batch, channels, ndim)), brightness=np.ones((batch, channels), np.float32),
                contrast=nan, lowres_size=np.zeros((batch, channels, ndim), np.int64), gamma_inverted=nan, gamma=nan,
                mirror=np.zeros((batch, ndim), bool))


def _run(data, seg=None, mask_channels=(), **parameters):
    """augment_intensity on one sample (C, *spatial) with the given parameters (per channel, unbatched)."""
    channels, ndim = data.shape[0], data.ndim - 1
    kwargs = _neutral(1, channels, ndim)
    for name, value in parameters.items():
        kwargs[name] = np.asarray(value).reshape(kwargs[name].shape)
    out = data[None].copy()
    out_seg = (seg if seg is not None else np.zeros((1, *data.shape[1:]), np.int16))[None].copy()
    augment_intensity(out, out_seg, mask_channels=mask_channels, **kwargs)
    return out[0], out_seg[0]


def _torch(transform, data):
    return transform(image=torch.from_numpy(data.copy()))["image"].numpy()


SHAPES = [pytest.param((32, 32), id="2d"), pytest.param((16, 24, 24), id="3d"),
          pytest.param((15, 23, 29), id="3d-odd")]


# --- each step against batchgeneratorsv2 ---------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sigma", [0.5, 0.83, 1.0, 1.7])
def test_blur_matches_nnunet_per_axis(shape, sigma):
    data = image(shape, 2)
    sigmas = np.array([[sigma * (1 + 0.15 * a) for a in range(len(shape))], [0.0] * len(shape)])  # channel 1 unblurred
    out, _ = _run(data, blur_sigma=sigmas)
    ref = torch.from_numpy(data[:1].copy())
    for axis, s in enumerate(sigmas[0]):
        ref = blur_dimension(ref, float(s), axis)
    np.testing.assert_allclose(out[:1], ref.numpy(), atol=1e-5)
    np.testing.assert_array_equal(out[1], data[1])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [0.5, 0.52, 0.63, 0.77, 0.8, 0.91, 1.0])
def test_low_resolution_matches_nnunet(shape, scale):
    data = image(shape, 2)
    size = [round(n * float(np.float32(scale))) for n in shape]
    out, _ = _run(data, lowres_size=[size, size])
    ref = _torch(SimulateLowResolutionTransform(scale, False, True, None, None, 1.0), data)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_low_resolution_sizes_and_ties_match_torch_everywhere():
    """Every (n, m) with n up to 64 (the tie planes included: n = 24, m = 19 reads voxel 12 for j = 9)."""
    for n in range(2, 65):
        data = np.random.default_rng(n).standard_normal((1, 3, n)).astype(np.float32)
        for m in range(max(1, n // 2), n + 1):
            out, _ = _run(data, lowres_size=[[0, m]])
            down = torch.nn.functional.interpolate(torch.from_numpy(data)[None], (3, m), mode="nearest-exact")
            ref = torch.nn.functional.interpolate(down, (3, n), mode="bilinear")[0].numpy()
            np.testing.assert_allclose(out, ref, atol=1e-5, err_msg=f"n={n} m={m}")  # an index off by one: O(1)


def test_low_resolution_leaves_axis_0_of_dummy_2d_alone():
    data = image((16, 24, 24), 1)
    out, _ = _run(data, lowres_size=[[0, 15, 15]])
    ref = _torch(SimulateLowResolutionTransform(0.63, False, True, (0,), None, 1.0), data)
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("inverted", [False, True], ids=["plain", "inverted"])
@pytest.mark.parametrize("gamma", [0.7, 1.0, 1.3, 1.5])
def test_gamma_matches_nnunet(shape, inverted, gamma):
    data = image(shape, 2)
    out, _ = _run(data, **{"gamma_inverted" if inverted else "gamma": [gamma, gamma]})
    ref = _torch(GammaTransform(gamma, float(inverted), False, 1, 1), data)
    np.testing.assert_allclose(out, ref, atol=2e-5)


def test_pow_is_within_float_rounding_of_float64():
    """The gamma's exp2(g log2 x) on [0, 1] (zero, one, tiny values included), read back through the
    retain-stats step, against the same step in float64."""
    rng = np.random.default_rng(0)
    x = np.concatenate([[0.0, 1.0], rng.random(50000) ** 4, np.logspace(-37, 0, 2000)]).astype(np.float32)
    for g in (0.3, 0.7, 1.0, 1.3, 1.5, 3.0):
        out, _ = _run(x[None, None], gamma=[g])
        y = x.astype(np.float64) ** np.float64(np.float32(g))
        y = (y - y.mean()) * (x.astype(np.float64).std(ddof=1) / y.std(ddof=1)) + x.astype(np.float64).mean()
        np.testing.assert_allclose(out.ravel(), y, atol=5e-7, err_msg=f"gamma {g}")


@pytest.mark.parametrize("factor", [0.8, 1.2])
def test_contrast_and_brightness_match_nnunet(factor):
    data = image((16, 24, 24), 2)
    out, _ = _run(data, contrast=[factor, factor])
    np.testing.assert_allclose(out, _torch(ContrastTransform(factor, True, False, 1), data), atol=1e-6)
    out, _ = _run(data, brightness=[factor, 1.0])
    ref = _torch(MultiplicativeBrightnessTransform(factor, False, 1), data)
    np.testing.assert_array_equal(out[0], ref[0])
    np.testing.assert_array_equal(out[1], data[1])


@pytest.mark.parametrize("shape,axes", [
    pytest.param((16, 24, 24), (0,), id="3d-axis-0"),
    pytest.param((16, 24, 24), (2,), id="3d-axis-2"),
    pytest.param((16, 24, 24), (0, 1, 2), id="3d-all"),
    pytest.param((32, 32), (1,), id="2d-axis-1"),
    pytest.param((32, 32), (0, 1), id="2d-all"),
])
def test_mirror_matches_nnunet(shape, axes):
    data, seg = image(shape, 2), shapes_seg(shape)
    flags = [a in axes for a in range(len(shape))]
    out, out_seg = _run(data, seg, mirror=flags)
    mirror = MirrorTransform(axes)
    np.testing.assert_array_equal(out, mirror._apply_to_image(torch.from_numpy(data.copy()), axes=list(axes)).numpy())
    ref_seg = mirror._apply_to_segmentation(torch.from_numpy(seg.copy()), axes=list(axes)).numpy()
    np.testing.assert_array_equal(out_seg, removed(ref_seg))


@pytest.mark.parametrize("channels", [pytest.param((0,), id="channel-0"), pytest.param((1, 2), id="channels-1-2"),
                                      pytest.param((1, 5), id="index-past-channels-ignored")])
def test_mask_and_label_removal_match_nnunet(channels):
    data, seg = image((16, 24, 24), 3), shapes_seg((16, 24, 24))
    out, out_seg = _run(data, seg, mask_channels=channels)
    ref = MaskImageTransform([c for c in channels if c < 3])(image=torch.from_numpy(data.copy()),
                                                            segmentation=torch.from_numpy(seg.copy()))
    np.testing.assert_array_equal(out, ref["image"].numpy())
    np.testing.assert_array_equal(out_seg, removed(seg))
    assert (out[:, seg[0] < 0] == 0).any() and (out_seg >= 0).all()


@pytest.mark.parametrize("shape", SHAPES)
def test_all_steps_chained_match_nnunet_in_its_order(shape):
    """Blur, brightness, contrast, low resolution, inverted gamma, gamma, mirror, mask, -1 -> 0 on three
    channels with different parameters each, against the same batchgeneratorsv2 steps in nnU-Net's order."""
    ndim = len(shape)
    data, seg = image(shape, 3), shapes_seg(shape)
    sigma = np.array([[0.6] * ndim, [0.0] * ndim, [0.9] * ndim])
    brightness, contrast = [1.1, 0.9, 1.0], [0.8, 1.2, 1.05]
    scales = [0.7, 1.0, 0.55]
    sizes = [[round(n * float(np.float32(s))) for n in shape] for s in scales]
    gamma_inverted, gamma = [1.2, 0.8, 1.4], [0.75, 1.3, 1.1]
    axes = (0, ndim - 1)
    out, out_seg = _run(data, seg, mask_channels=(1,), blur_sigma=sigma, brightness=brightness, contrast=contrast,
                        lowres_size=sizes, gamma_inverted=gamma_inverted, gamma=gamma,
                        mirror=[a in axes for a in range(ndim)])
    ref = data.copy()
    for c in range(3):
        x = torch.from_numpy(ref[c:c + 1].copy())
        for axis in range(ndim):
            if sigma[c, axis] > 0:
                x = blur_dimension(x, float(sigma[c, axis]), axis)
        x = MultiplicativeBrightnessTransform(brightness[c], False, 1)(image=x)["image"]
        x = ContrastTransform(contrast[c], True, False, 1)(image=x)["image"]
        x = SimulateLowResolutionTransform(scales[c], False, True, None, None, 1.0)(image=x)["image"]
        x = GammaTransform(gamma_inverted[c], 1.0, False, 1, 1)(image=x)["image"]
        x = GammaTransform(gamma[c], 0.0, False, 1, 1)(image=x)["image"]
        ref[c] = x.numpy()[0]
    mirror = MirrorTransform(axes)
    ref = mirror._apply_to_image(torch.from_numpy(ref), axes=list(axes))
    ref_seg = mirror._apply_to_segmentation(torch.from_numpy(seg.copy()), axes=list(axes))
    ref = MaskImageTransform([1])(image=ref, segmentation=ref_seg)["image"].numpy()
    np.testing.assert_allclose(out, ref, atol=5e-5)
    np.testing.assert_array_equal(out_seg, removed(ref_seg.numpy()))


def test_thread_count_does_not_change_the_result():
    spec = AugmentSpec((24, 28), ROT, False, (0, 1), probabilities={name: 0.6 for name in DEFAULT_PROBABILITIES})
    data, seg = np.stack([image((24, 28), 2, seed=s) for s in range(12)]), np.stack([shapes_seg((24, 28))] * 12)
    draw = draw_intensity(spec, np.random.default_rng(1), 12, 2)
    results = []
    for n in (1, 2, 3):
        d, s = data.copy(), seg.copy()
        with threads.num_threads(n):
            apply_intensity(d, s, draw, spec)
        results.append((d, s))
    for d, s in results[1:]:
        np.testing.assert_array_equal(d, results[0][0])
        np.testing.assert_array_equal(s, results[0][1])


def test_rejects_bad_input():
    data, seg = np.zeros((1, 1, 8, 8), np.float32), np.zeros((1, 1, 8, 8), np.int16)
    kwargs = _neutral(1, 1, 2)
    with pytest.raises(TypeError, match="float32"):
        augment_intensity(data.astype(np.float64), seg, **kwargs)
    with pytest.raises(ValueError, match=r"seg must be \(B, 1, \*spatial\)"):
        augment_intensity(data, seg[:, :, :4], **kwargs)
    with pytest.raises(ValueError, match=r"blur_sigma must have shape \(1, 1, 2\)"):
        augment_intensity(data, seg, **{**kwargs, "blur_sigma": np.zeros((1, 1, 3))})
    with pytest.raises(ValueError, match="lowres_size must lie in"):
        augment_intensity(data, seg, **{**kwargs, "lowres_size": np.full((1, 1, 2), 9)})
    with pytest.raises(ValueError, match="gamma exponents must be > 0"):
        augment_intensity(data, seg, **{**kwargs, "gamma": np.full((1, 1), -1.0)})
    with pytest.raises(ValueError, match="writable C-contiguous"):
        augment_intensity(np.zeros((1, 1, 8, 16), np.float32)[..., ::2], seg, **kwargs)


# --- the draws: nnU-Net's probabilities and ranges -------------------------------------------------------

def within(count, n, p):
    sd = math.sqrt(n * p * (1 - p))
    return abs(count - n * p) <= 4.5 * sd + 1


def _draws(spec, n=4000, channels=2, seed=0):
    return draw_intensity(spec, np.random.default_rng(seed), n, channels)


@pytest.mark.parametrize("patch,dummy", [pytest.param((16, 24, 24), False, id="3d"),
                                         pytest.param((16, 24, 24), True, id="3d-dummy-2d"),
                                         pytest.param((160, 160), False, id="2d")])
def test_draws_follow_nnunet_probabilities_and_ranges(patch, dummy):
    ndim, n, c = len(patch), 4000, 2
    spec = AugmentSpec(patch, ROT, dummy, tuple(range(ndim)))
    d = _draws(spec, n, c)
    p = DEFAULT_PROBABILITIES
    blurred = (d.blur_sigma > 0).all(2)
    assert ((d.blur_sigma > 0).any(2) == blurred).all()  # a chosen channel has a sigma on every axis
    assert within(int(blurred.any(1).sum()), n, p["blur"] * (1 - (1 - p["blur_per_channel"]) ** c))
    assert within(int(blurred.sum()), n * c, p["blur"] * p["blur_per_channel"])
    sigma = d.blur_sigma[blurred]
    assert sigma.min() >= 0.5 and sigma.max() <= 1.0 and np.ptp(sigma, axis=1).min() > 0  # per axis
    for name, values, neutral in (("brightness", d.brightness, lambda v: v == 1), ("contrast", d.contrast, np.isnan),
                                  ("gamma_inverted", d.gamma_inverted, np.isnan), ("gamma", d.gamma, np.isnan)):
        on = ~neutral(values).all(1)
        assert (~neutral(values[on])).all()  # every channel of a drawn sample
        assert within(int(on.sum()), n, p[name]), name
        lo, hi = (0.7, 1.5) if name.startswith("gamma") else (0.75, 1.25)
        v = values[on]
        assert v.min() >= lo and v.max() <= hi, name
        assert within(int((v < 1).sum()), v.size, 0.5), name  # BGContrast: half below one
        assert (np.ptp(v, axis=1) > 0).mean() > 0.99, name  # channels drawn independently
    resampled = (d.lowres_size > 0).any(2)
    assert within(int(resampled.any(1).sum()), n, p["lowres"] * (1 - (1 - p["lowres_per_channel"]) ** c))
    size = d.lowres_size[resampled]
    axes = slice(1, None) if dummy else slice(None)
    scale = size[:, axes] / np.array(patch)[axes]
    assert scale.min() >= 0.5 - 0.5 / min(patch) and scale.max() <= 1.0
    if dummy:
        assert (size[:, 0] == patch[0]).all()  # dummy 2D: axis 0 keeps its size
    if ndim == 2 or dummy:
        s = size[:, -2:] / np.array(patch[-2:])
        assert np.abs(s[:, 0] - s[:, 1]).max() <= 1 / min(patch[-2:])  # one scale for the axes
    for axis in range(ndim):
        assert within(int(d.mirror[:, axis].sum()), n, p["mirror"])
    assert within(int((d.mirror[:, 0] & d.mirror[:, -1]).sum()), n, p["mirror"] ** 2)  # independent axes


def test_pinned_ranges_and_validation_draws():
    spec = AugmentSpec((8, 12, 12), ROT, False, (0,), blur_sigma=(0.7, 0.7), gamma=(1.3, 1.3),
                       probabilities=only(blur=1, blur_per_channel=1, gamma=1))
    d = _draws(spec, 50)
    assert (d.blur_sigma == 0.7).all() and (d.gamma == np.float32(1.3)).all() and np.isnan(d.contrast).all()
    d = _draws(dataclasses.replace(spec, augment=False), 50)
    assert (d.blur_sigma == 0).all() and (d.brightness == 1).all() and (d.lowres_size == 0).all()
    assert np.isnan(d.gamma).all() and not d.mirror.any()
    data, seg = np.repeat(image((8, 12, 12), 2)[None], 50, 0), np.repeat(shapes_seg((8, 12, 12))[None], 50, 0)
    out, out_seg = data.copy(), seg.copy()
    apply_intensity(out, out_seg, d, dataclasses.replace(spec, augment=False, mask_channels=(0,)))
    np.testing.assert_array_equal(out, data)  # validation: not masked, only -1 -> 0
    np.testing.assert_array_equal(out_seg, removed(seg))


def test_each_step_changes_samples_with_its_probability():
    """End to end through the kernel: the fraction of samples a step changes (the others off)."""
    patch, n = (12, 12), 400
    data, seg = image(patch, 1), shapes_seg(patch)
    for name, extra in (("blur", {"blur_per_channel": 1.0}), ("brightness", {}), ("contrast", {}),
                        ("lowres", {"lowres_per_channel": 1.0}), ("gamma_inverted", {}), ("gamma", {})):
        spec = AugmentSpec(patch, ROT, False, (), lowres_scale=(0.5, 0.7),
                           probabilities=only(**{name: DEFAULT_PROBABILITIES[name]}, **extra))
        out, out_seg = np.repeat(data[None], n, 0), np.repeat(seg[None], n, 0)
        apply_intensity(out, out_seg, draw_intensity(spec, np.random.default_rng(2), n, 1), spec)
        changed = int((np.abs(out - data[None]).reshape(n, -1).max(1) > 1e-6).sum())
        assert within(changed, n, DEFAULT_PROBABILITIES[name]), (name, changed)


# --- the loader's CPU path -------------------------------------------------------------------------------

def test_cpu_loader_spec_passes_final_batches_through_dali():
    """With source_intensity the DALI graph adds nothing: the source's batch comes out as it went in."""
    from fastseg.data.augment import build_augmentation_pipeline, run_batches

    patch = (16, 20)
    spec = AugmentSpec(patch, ROT, False, (0, 1), source_spatial=True, source_intensity=True)
    data = np.stack([image(patch, 2, seed=s) for s in range(3)])
    seg = removed(np.stack([shapes_seg(patch)] * 3))
    pipe = build_augmentation_pipeline(lambda: (list(data), list(seg)), spec, 3, num_threads=1)
    out, out_seg = run_batches(pipe)
    np.testing.assert_array_equal(out, data)
    np.testing.assert_array_equal(out_seg, seg)
    with pytest.raises(ValueError, match="source_intensity needs source_spatial"):
        AugmentSpec(patch, ROT, False, (), source_intensity=True)
