"""fastseg.ops.normalize against nnunetv2's normalization classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.preprocessing.normalization import default_normalization_schemes as schemes

from fastseg.ops import normalize


CT_PROPS = {"mean": 50.3, "std": 210.7, "percentile_00_5": -900.0, "percentile_99_5": 1100.0}


def ct_image(rng, shape=(23, 47, 61), dtype=np.float32):
    return (rng.normal(size=shape) * 400 + 40).clip(-1024, 3000).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.int32, np.uint16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(23, 47, 61), (1823, 781), (1,), (7, 1, 255)], ids=["3d", "2d-odd", "one", "255"])
def test_ct_matches_nnunet(rng, dtype, shape):
    img = ct_image(rng, shape, np.float64)
    if np.dtype(dtype).kind == "u":
        img = img + 1024
    img = img.astype(dtype)
    ref = schemes.CTNormalization(False, CT_PROPS).run(img.copy())
    out = normalize(img, "CTNormalization", intensity_properties=CT_PROPS)
    assert out.dtype == np.float32 and out.shape == img.shape
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("masked", [False, True], ids=["whole", "masked"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8], ids=lambda d: np.dtype(d).name)
def test_zscore_matches_nnunet(rng, masked, dtype):
    img = (rng.normal(size=(19, 33, 41)) * 30 + 120).clip(0, 255).astype(dtype)
    seg = rng.integers(-1, 3, size=img.shape).astype(np.int8)
    ref = schemes.ZScoreNormalization(masked, {}).run(img.copy(), seg if masked else None)
    out = normalize(img, "ZScoreNormalization", mask=(seg >= 0) if masked else None)
    # nnU-Net's mean/std are float32 pairwise sums, ours double: a few float32 ulps apart
    # (measured at most 9.6e-7 apart).
    np.testing.assert_allclose(out, ref, rtol=2e-6, atol=2e-6)
    if masked:
        np.testing.assert_array_equal(out[seg < 0], img[seg < 0].astype(np.float32))


def test_rescale_and_rgb_and_none_match_nnunet(rng):
    img = rng.normal(size=(31, 29)).astype(np.float32) * 7 - 3
    np.testing.assert_array_equal(
        normalize(img, "RescaleTo01Normalization"), schemes.RescaleTo01Normalization(False, {}).run(img.copy())
    )
    rgb = rng.integers(0, 256, size=(3, 64, 65)).astype(np.uint8)
    np.testing.assert_array_equal(normalize(rgb, "RGBTo01Normalization"), schemes.RGBTo01Normalization(False, {}).run(rgb.copy()))
    i16 = rng.integers(-100, 100, size=(5, 6)).astype(np.int16)
    np.testing.assert_array_equal(normalize(i16, "NoNormalization"), schemes.NoNormalization(False, {}).run(i16.copy()))


def test_constant_image_uses_eps(rng):
    img = np.full((4, 5, 6), 7.0, np.float32)
    np.testing.assert_array_equal(normalize(img, "ZScoreNormalization"), schemes.ZScoreNormalization(False, {}).run(img.copy()))
    np.testing.assert_array_equal(
        normalize(img, "RescaleTo01Normalization"), schemes.RescaleTo01Normalization(False, {}).run(img.copy())
    )


def test_layouts_byte_order_and_torch(rng):
    img = ct_image(rng)
    expected = normalize(img, "CTNormalization", intensity_properties=CT_PROPS)
    for variant in (np.asfortranarray(img), img.astype(">f4"), np.repeat(img, 2, axis=2)[:, :, ::2]):
        np.testing.assert_array_equal(normalize(variant, "CTNormalization", intensity_properties=CT_PROPS), expected)
    out = normalize(torch.from_numpy(img), "CTNormalization", intensity_properties=CT_PROPS)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_array_equal(out.numpy(), expected)


@pytest.mark.parametrize(
    "scheme,kwargs,data,match",
    [
        pytest.param("CTNormalisation", {}, None, "Did you mean 'CTNormalization'", id="typo"),
        pytest.param("CTNormalization", {}, None, "needs intensity_properties", id="ct-no-props"),
        pytest.param("CTNormalization", {"intensity_properties": {"mean": 1.0}}, None, "lacks", id="ct-missing-keys"),
        pytest.param(
            "CTNormalization",
            {"intensity_properties": {**CT_PROPS, "std": float("nan")}},
            None,
            "must be finite",
            id="ct-nan-props",
        ),
        pytest.param("ZScoreNormalization", {"mask": np.ones((2, 2), bool)}, None, "mask shape", id="mask-shape"),
        pytest.param("ZScoreNormalization", {"mask": np.zeros((3, 4), bool)}, None, "no voxels inside the mask", id="empty-mask"),
        pytest.param("RGBTo01Normalization", {}, np.full((3, 4), 300.0, np.float32), "\\[0, 255\\]", id="rgb-range"),
        pytest.param("ZScoreNormalization", {}, np.zeros((0, 4), np.float32), "no voxels in data", id="empty"),
    ],
)
def test_bad_input(scheme, kwargs, data, match):
    data = np.ones((3, 4), np.float32) if data is None else data
    with pytest.raises(ValueError, match=match):
        normalize(data, scheme, **kwargs)


@pytest.mark.parametrize("scheme", ["CTNormalization", "ZScoreNormalization", "RescaleTo01Normalization", "NoNormalization"])
def test_nonfinite_rejected(scheme):
    img = np.ones((4, 5), np.float32)
    img[1, 2] = np.nan
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        normalize(img, scheme, intensity_properties=CT_PROPS)


def test_wrong_type():
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        normalize([1.0, 2.0], "NoNormalization")
    with pytest.raises(TypeError, match="float or integer"):
        normalize(np.ones(3, np.complex64), "NoNormalization")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("masked", [False, True], ids=["whole", "masked"])
def test_native_moments_leave_out_nonfinite(rng, dtype, masked):
    """The statistics pass against numpy in float64, with NaN/Inf in some blocks and not in others."""
    from fastseg import _native

    x = (rng.normal(size=20011) * 300 + 1e4).astype(dtype)
    if x.dtype.kind == "f":
        x[[5, 700, 19999]] = [np.nan, np.inf, -np.inf]
    mask = rng.random(x.size) > 0.4 if masked else None
    got = _native.cpu().moments(x, mask)
    finite = np.isfinite(x.astype(np.float64))
    keep = finite & (mask if masked else True)
    ref = x[keep].astype(np.float64)
    assert got["nonfinite"] == int((~finite).sum())
    assert got["count"] == ref.size
    assert got["min"] == ref.min() and got["max"] == ref.max()
    # float32 and 16-bit inputs sum in float lanes per block of 512, then in double
    np.testing.assert_allclose(got["mean"], ref.mean(), rtol=1e-8)  # measured <= 2e-9
    np.testing.assert_allclose(got["std"], ref.std(), rtol=1e-5)
