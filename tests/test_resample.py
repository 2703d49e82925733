"""fastseg.ops.resample against nnunetv2's resample_data_or_seg_to_shape, scipy and skimage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import smooth_labels
from hypothesis import given, settings
from hypothesis import strategies as st
from nnunetv2.preprocessing.resampling import default_resampling as nnunet_resampling
from scipy import ndimage
from skimage import transform as skimage_transform

from fastseg.ops import compute_new_shape, resample, separate_z_axis


def reference(data, new_shape, cur, new, **kw):
    """nnU-Net's function as nnU-Net's plans call it (force_separate_z=None by default here)."""
    kw.setdefault("force_separate_z", None)
    return nnunet_resampling.resample_data_or_seg_to_shape(data, new_shape, cur, new, **kw)


# Intensities: max |ours - reference| as a fraction of the input's range. Measured at most 6.1e-8
# (order 3, float32 output); float32 rounding of the output alone is ~3e-8 of the range.
RANGE_TOL = 1e-6


def assert_data_close(ours, ref, data):
    assert ours.shape == ref.shape
    assert ours.dtype == np.float32
    span = float(data.max() - data.min())
    err = float(np.abs(ours.astype(np.float64) - ref.astype(np.float64)).max())
    assert err <= RANGE_TOL * span, f"max |diff| {err} > {RANGE_TOL} x range {span}"


DATA_CASES = [
    pytest.param((1, 20, 31, 17), (33, 20, 40), (1, 1, 1), (1, 1, 1), id="3d-iso-up-odd"),
    pytest.param((2, 40, 41, 38), (20, 21, 19), (1, 1, 1), (2, 2, 2), id="3d-iso-down-2ch"),
    pytest.param((1, 12, 40, 40), (30, 33, 50), (3.5, 1, 1), (1.4, 1.2, 0.8), id="3d-aniso-separate-z-axis0"),
    pytest.param((3, 40, 12, 40), (33, 30, 50), (1, 3.5, 1), (1.2, 1.4, 0.8), id="3d-aniso-separate-z-axis1-3ch"),
    pytest.param((1, 40, 40, 12), (33, 50, 30), (1, 1, 3.5), (1.2, 0.8, 1.4), id="3d-aniso-separate-z-axis2"),
    pytest.param((1, 30, 40, 40), (10, 52, 52), (1, 1, 1), (3, 0.77, 0.77), id="3d-new-spacing-anisotropic"),
    pytest.param((1, 1, 57, 43), (1, 29, 80), (1, 1, 1), (1, 2, 0.54), id="2d-as-one-slice"),
    pytest.param((1, 25, 25, 25), (25, 25, 25), (1, 1, 1), (1, 1, 1), id="3d-same-shape"),
    pytest.param((1, 9, 300, 7), (4, 255, 9), (1, 1, 1), (2, 1.18, 0.78), id="3d-255-boundary"),
]


@pytest.mark.parametrize("shape,new_shape,cur,new", DATA_CASES)
@pytest.mark.parametrize("order,order_z", [(3, 0), (3, 1), (1, 0), (0, 0)], ids=["o3z0", "o3z1", "o1z0", "o0z0"])
def test_data_matches_nnunet(rng, shape, new_shape, cur, new, order, order_z):
    data = rng.normal(size=shape).astype(np.float32) * 100 + 20
    ours = resample(data, new_shape, cur, new, order=order, order_z=order_z)
    ref = reference(data, new_shape, cur, new, order=order, order_z=order_z)
    assert_data_close(ours, ref.astype(np.float32), data)


@pytest.mark.parametrize("dtype", [np.float64, np.int16, np.uint8, np.int32, np.float16])
def test_data_dtypes(rng, dtype):
    data = (rng.normal(size=(1, 14, 23, 19)) * 60 + 100).clip(0, 250).astype(dtype)
    ours = resample(data, (21, 17, 30), (1, 1, 1), (1, 1, 1))
    ref = reference(data.astype(np.float32), (21, 17, 30), (1, 1, 1), (1, 1, 1))
    assert_data_close(ours, ref, data.astype(np.float32))


@pytest.mark.parametrize("force", [True, False], ids=["forced-on", "forced-off"])
def test_force_separate_z(rng, force):
    data = rng.normal(size=(1, 10, 30, 30)).astype(np.float32)
    ours = resample(data, (22, 20, 41), (2, 1, 1), (1, 1.5, 0.75), force_separate_z=force)
    ref = reference(data, (22, 20, 41), (2, 1, 1), (1, 1.5, 0.75), force_separate_z=force)
    assert_data_close(ours, ref.astype(np.float32), data)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_data_matches_skimage_resize(rng, order):
    img = rng.normal(size=(37, 29)).astype(np.float64)
    ref = skimage_transform.resize(img, (50, 13), order=order, mode="edge", anti_aliasing=False)
    ours = resample(img[None].astype(np.float32), (50, 13), (1, 1), (1, 1), order=order)[0]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=RANGE_TOL * np.ptp(img))  # measured <= 3.1e-8 x range


@pytest.mark.parametrize("order", [0, 1, 3])
def test_data_matches_scipy_zoom(rng, order):
    vol = rng.normal(size=(11, 16, 13))
    out_shape = (22, 9, 26)
    ref = ndimage.zoom(vol, np.divide(out_shape, vol.shape), order=order, mode="nearest", grid_mode=True)
    ours = resample(vol[None].astype(np.float32), out_shape, (1, 1, 1), (1, 1, 1), order=order)[0]
    if order == 3:  # skimage (and so nnU-Net) clips order-3 results to the input range; zoom does not
        ref = np.clip(ref, vol.min(), vol.max())
    np.testing.assert_allclose(ours, ref, rtol=0, atol=RANGE_TOL * np.ptp(vol))  # measured <= 3.7e-8 x range


SEG_CASES = [
    pytest.param((1, 20, 31, 17), (33, 20, 40), (1, 1, 1), (1, 1, 1), id="3d-iso-up"),
    pytest.param((1, 40, 41, 38), (20, 21, 19), (1, 1, 1), (2, 2, 2), id="3d-iso-down-even-ties"),
    pytest.param((1, 12, 40, 40), (30, 33, 50), (3.5, 1, 1), (1.4, 1.2, 0.8), id="3d-separate-z-axis0"),
    pytest.param((2, 40, 40, 12), (33, 50, 30), (1, 1, 3.5), (1.2, 0.8, 1.4), id="3d-separate-z-axis2-2ch"),
    pytest.param((1, 1, 64, 48), (1, 100, 30), (1, 1, 1), (1, 0.64, 1.6), id="2d-as-one-slice"),
]


@pytest.mark.parametrize("shape,new_shape,cur,new", SEG_CASES)
@pytest.mark.parametrize("order,order_z", [(1, 0), (1, 1), (0, 0)], ids=["o1z0", "o1z1", "o0z0"])
@pytest.mark.parametrize("labels", ["noise", "blobs"])
def test_seg_matches_nnunet(rng, shape, new_shape, cur, new, order, order_z, labels):
    if labels == "noise":
        seg = rng.integers(0, 5, size=shape).astype(np.int16)
    else:
        seg = np.stack([smooth_labels(rng, shape[1:], 6) for _ in range(shape[0])])
    ours = resample(seg, new_shape, cur, new, is_seg=True, order=order, order_z=order_z)
    ref = reference(seg, new_shape, cur, new, is_seg=True, order=order, order_z=order_z)
    assert ours.dtype == seg.dtype and ours.shape == ref.shape
    # Every voxel, exact ties included: where two labels' interpolated indicators are equal (each
    # boundary voxel of an even downsampling), both take the nearest input voxel's label.
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64, np.float32, np.bool_])
def test_seg_dtypes(rng, dtype):
    seg = smooth_labels(rng, (13, 17, 19), 3 if dtype == np.bool_ else 5)
    seg = (seg > 0) if dtype == np.bool_ else seg
    seg = seg.astype(dtype)[None]
    ours = resample(seg, (20, 11, 25), (1, 1, 1), (1, 1, 1), is_seg=True, order=1)
    ref = reference(seg.astype(np.int16), (20, 11, 25), (1, 1, 1), (1, 1, 1), is_seg=True, order=1)
    assert ours.dtype == seg.dtype
    np.testing.assert_array_equal(ours.astype(np.int16), ref)


def test_seg_negative_labels(rng):
    """nnU-Net marks voxels outside the nonzero crop with -1; they resample like any label."""
    seg = smooth_labels(rng, (16, 20, 20), 4).astype(np.int8)
    seg[:, :3] = -1
    ours = resample(seg[None], (24, 13, 31), (1, 1, 1), (1, 1, 1), is_seg=True, order=1)
    ref = reference(seg[None], (24, 13, 31), (1, 1, 1), (1, 1, 1), is_seg=True, order=1)
    np.testing.assert_array_equal(ours, ref)


def test_layouts_and_byte_order(rng):
    data = rng.normal(size=(1, 12, 14, 16)).astype(np.float32)
    expected = resample(data, (7, 20, 9), (1, 1, 1), (1, 1, 1))
    fortran = np.asfortranarray(data)
    strided = np.repeat(data, 2, axis=3)[..., ::2]
    big_endian = data.astype(">f4")
    for variant in (fortran, strided, big_endian):
        np.testing.assert_array_equal(resample(variant, (7, 20, 9), (1, 1, 1), (1, 1, 1)), expected)


def test_torch_in_torch_out(rng):
    data = rng.normal(size=(2, 8, 9, 10)).astype(np.float32)
    out = resample(torch.from_numpy(data), (5, 12, 7), (1, 1, 1), (1, 1, 1))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.device.type == "cpu"
    np.testing.assert_array_equal(out.numpy(), resample(data, (5, 12, 7), (1, 1, 1), (1, 1, 1)))
    seg = torch.from_numpy(smooth_labels(rng, (8, 9, 10), 4)[None])
    out = resample(seg, (5, 12, 7), (1, 1, 1), (1, 1, 1), is_seg=True, order=1)
    assert isinstance(out, torch.Tensor) and out.dtype == seg.dtype


def test_separate_z_rule_matches_nnunet():
    cases = [
        ((3.5, 1, 1), (1, 1, 1), None),
        ((1, 1, 1), (1, 1, 5), None),
        ((1, 1, 1), (1, 1, 1), None),
        ((0.24, 1.25, 1.25), (1, 1, 1), None),
        ((2.9, 1, 1), (1, 1, 1), None),
        ((3.1, 1, 1), (1, 1, 1), None),
        ((1, 1, 1), (2, 2, 2), True),
        ((2, 1, 1), (1, 1, 1), True),
        ((5, 1, 1), (1, 1, 1), False),
    ]
    for cur, new, force in cases:
        do_sep, axis = nnunet_resampling.determine_do_sep_z_and_axis(force, cur, new)
        assert separate_z_axis(cur, new, force) == (axis if do_sep else None), (cur, new, force)


def test_compute_new_shape_matches_nnunet():
    for shape, cur, new in [((120, 256, 256), (2.5, 0.8, 0.8), (1.25, 1, 1)), ((17, 33, 9), (1.1, 0.7, 3), (1, 1, 1))]:
        assert compute_new_shape(shape, cur, new) == tuple(nnunet_resampling.compute_new_shape(shape, cur, new))


# --- properties -------------------------------------------------------------------------------------

shapes = st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9))


@settings(max_examples=40, deadline=None)
@given(shape=shapes, new=shapes, value=st.floats(-1e4, 1e4, allow_nan=False, width=32), order=st.sampled_from([0, 1, 3]))
def test_constant_stays_constant(shape, new, value, order):
    data = np.full((1, *shape), value, dtype=np.float32)
    out = resample(data, new, (1, 1, 1), (1, 1, 1), order=order)
    assert out.shape == (1, *new)
    np.testing.assert_allclose(out, value, rtol=1e-6, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, new=shapes, seed=st.integers(0, 2**31 - 1), order=st.sampled_from([0, 1]))
def test_seg_label_set_preserved(shape, new, seed, order):
    g = np.random.default_rng(seed)
    labels = g.choice([1, 3, 7, 9], size=3, replace=False)  # no 0: no background to fall back to
    seg = g.choice(labels, size=(1, *shape)).astype(np.int16)
    out = resample(seg, new, (1, 1, 1), (1, 1, 1), is_seg=True, order=order)
    assert out.shape == (1, *new)
    assert set(np.unique(out)) <= set(np.unique(seg))


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        pytest.param(dict(data=np.zeros((10, 10), np.float32)), "leading channel axis", id="ndim-2"),
        pytest.param(dict(data=np.zeros((1, 2, 3, 4, 5), np.float32)), "leading channel axis", id="ndim-5"),
        pytest.param(dict(data=np.zeros((1, 0, 4, 4), np.float32)), "empty", id="empty"),
        pytest.param(dict(new_shape=(4, 4)), "new_shape must hold 3", id="new-shape-length"),
        pytest.param(dict(new_shape=(4, 0, 4)), "new_shape must hold 3 positive", id="new-shape-zero"),
        pytest.param(dict(new_shape=(4, 4.5, 4)), "new_shape", id="new-shape-fraction"),
        pytest.param(dict(current_spacing=(1, 1)), "current_spacing must have 3", id="spacing-length"),
        pytest.param(dict(new_spacing=(1, 0, 1)), "new_spacing entries must be finite and positive", id="spacing-zero"),
        pytest.param(dict(order=2), "order must be one of", id="order-2"),
        pytest.param(dict(order_z=5), "order_z must be one of", id="order-z-5"),
        pytest.param(dict(is_seg=True, order=3), "order must be one of \\(0, 1\\) for segmentations", id="seg-order-3"),
    ],
)
def test_bad_input_raises_value_error(kwargs, match):
    args = dict(data=np.zeros((1, 4, 4, 4), np.float32), new_shape=(5, 5, 5), current_spacing=(1, 1, 1), new_spacing=(1, 1, 1))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        resample(**args)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_data_rejected(bad):
    data = np.zeros((1, 4, 5, 6), np.float32)
    data[0, 2, 3, 1] = bad
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        resample(data, (5, 5, 5), (1, 1, 1), (1, 1, 1))


def test_wrong_types_raise_type_error():
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        resample([[[[1.0]]]], (1, 1, 1), (1, 1, 1), (1, 1, 1))
    with pytest.raises(TypeError, match="dtype"):
        resample(np.zeros((1, 2, 2, 2), np.complex64), (3, 3, 3), (1, 1, 1), (1, 1, 1))
    with pytest.raises(ValueError, match="integer label values"):
        resample(np.full((1, 2, 2, 2), 0.5, np.float32), (3, 3, 3), (1, 1, 1), (1, 1, 1), is_seg=True, order=1)


def test_native_binding_checks_second_line():
    """The compiled module itself refuses what the wrapper would never pass."""
    from fastseg import _native

    C = _native.cpu()
    with pytest.raises(ValueError, match="order must be 0, 1 or 3"):
        C.resample_axis(np.zeros((1, 4, 1), np.float32), 3, 2)
    with pytest.raises(ValueError, match="C-contiguous"):
        C.resample_axis(np.zeros((1, 4, 2), np.float32)[:, :, :1], 3, 1)
    with pytest.raises(ValueError, match="integer type"):
        C.resample_seg(np.zeros((1, 2, 2, 2), np.float32), [3, 3, 3], [1, 1, 1], False)
