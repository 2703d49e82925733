"""Resampling with nnU-Net's `resample_data_or_seg_to_shape` semantics, on native kernels.

The orchestration here is the same for every device: it decides which axes to resample with which
order (nnU-Net's separate-z rule), then runs one separable axis pass per axis through a backend
(`fastseg._C` for numpy arrays and CPU tensors, `fastseg._C_cuda` for CUDA tensors). The per-sample
math, and why a sequence of 1D passes equals nnU-Net's n-D interpolation, is documented in
`csrc/include/fastseg/resample.h`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fastseg import _native
from fastseg.ops._arrays import check_finite, check_result_size, dispatch, kind_of, native_contiguous

#: nnU-Net's ANISO_THRESHOLD: above this max/min spacing ratio the out-of-plane axis is resampled
#: separately.
ANISO_THRESHOLD = 3.0

_DATA_ORDERS = (0, 1, 3)
_SEG_ORDERS = (0, 1)


def compute_new_shape(old_shape: Sequence[int], old_spacing: Sequence[float], new_spacing: Sequence[float]) -> tuple:
    """Shape after resampling from `old_spacing` to `new_spacing`, rounded as nnU-Net rounds it."""
    if not len(old_shape) == len(old_spacing) == len(new_spacing):
        raise ValueError(
            f"old_shape, old_spacing and new_spacing must have equal lengths, got {len(old_shape)}, "
            f"{len(old_spacing)} and {len(new_spacing)}"
        )
    return tuple(int(round(s / t * n)) for s, t, n in zip(old_spacing, new_spacing, old_shape))


def _lowres_axes(spacing: Sequence[float]) -> list[int]:
    largest = max(spacing)
    return [i for i, s in enumerate(spacing) if largest / s == 1]


def _anisotropic(spacing: Sequence[float], threshold: float) -> bool:
    return max(spacing) / min(spacing) > threshold


def separate_z_axis(
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    force_separate_z: bool | None = None,
    threshold: float = ANISO_THRESHOLD,
) -> int | None:
    """The axis nnU-Net resamples separately (with `order_z`), or None.

    Args:
        current_spacing: spacing of the input, one value per spatial axis.
        new_spacing: spacing of the output.
        force_separate_z: None applies the anisotropy rule (the current spacing first, then the new
            one); True separates the current spacing's coarsest axis; False never separates.
        threshold: max/min spacing ratio above which a spacing counts as anisotropic (default 3).

    Returns:
        The spatial axis index, or None when all axes are resampled together (also when two or
        more axes tie for the coarsest spacing, as nnU-Net decides).
    """
    if force_separate_z is not None:
        if not force_separate_z:
            return None
        axes = _lowres_axes(current_spacing)
    elif _anisotropic(current_spacing, threshold):
        axes = _lowres_axes(current_spacing)
    elif _anisotropic(new_spacing, threshold):
        axes = _lowres_axes(new_spacing)
    else:
        return None
    return axes[0] if len(axes) == 1 else None


# --- backends -------------------------------------------------------------------------------------


class _CpuBackend:
    """numpy arrays through fastseg._C."""

    def __init__(self) -> None:
        self.C = _native.cpu()

    def axis(self, x, n_out: int, order: int):
        return self.C.resample_axis(x, int(n_out), int(order))

    def minmax(self, x, group_axis: int):
        lo, hi, _ = self.C.minmax_groups(x, group_axis)
        return lo, hi

    def clip(self, x, group_axis: int, lo, hi) -> None:
        self.C.clip_groups(x, group_axis, lo, hi)

    def seg(self, s, new_shape, orders, strict: bool):
        return self.C.resample_seg(s, list(new_shape), list(orders), bool(strict))


class _CudaBackend:
    """CUDA tensors through fastseg._C_cuda; reductions and clipping by torch on the device."""

    def __init__(self) -> None:
        from fastseg.ops import _cuda

        self.cuda = _cuda

    def axis(self, x, n_out: int, order: int):
        return self.cuda.resample_axis(x, int(n_out), int(order))

    def minmax(self, x, group_axis: int):
        g = x.reshape(x.shape[0], -1) if group_axis == 0 else x.movedim(group_axis, 1).reshape(
            x.shape[0] * x.shape[group_axis], -1
        )
        return g.amin(dim=1), g.amax(dim=1)

    def clip(self, x, group_axis: int, lo, hi) -> None:
        # lo/hi hold (C,) or (C, n_axis) values in channel-major order; broadcast them over x.
        shape = [x.shape[0], 1, 1, 1]
        if group_axis:
            shape[group_axis] = x.shape[group_axis]
        x.clamp_(min=lo.reshape(shape), max=hi.reshape(shape))

    def seg(self, s, new_shape, orders, strict: bool):
        return self.cuda.resample_seg(s, tuple(new_shape), tuple(orders), bool(strict))


def _axis_pass(backend, x, axis: int, n_out: int, order: int):
    """Resamples spatial axis `axis` (1..3 of a (C, D, H, W) array) to n_out samples."""
    shape = tuple(x.shape)
    outer = int(np.prod(shape[:axis]))
    inner = int(np.prod(shape[axis + 1 :]))
    out = backend.axis(x.reshape(outer, shape[axis], inner), n_out, order)
    return out.reshape(shape[:axis] + (n_out,) + shape[axis + 1 :])


def _resample_data(backend, x, new_shape, axis_z: int | None, order: int, order_z: int, clip: bool = True):
    """x: (C, D, H, W) float32 contiguous. axis_z: spatial index resampled separately, or None.
    clip: clip order-3 results to the input's range (per channel, or per slice with axis_z)."""
    # After the conversion to float32, so that float64 values beyond its range count as infinite.
    check_finite(x, "data", "resampling would spread them; replace them (e.g. with numpy.nan_to_num) first")
    group_axis = 0 if axis_z is None else axis_z + 1
    if order != 3 or (not clip and axis_z is None):
        clip = False
    if clip:
        lo, hi = backend.minmax(x, group_axis)
    spatial = [a for a in range(3) if axis_z is None or a != axis_z]
    # Shrinking axes first keeps the intermediate volumes small; the result does not depend on it.
    spatial.sort(key=lambda a: new_shape[a] / x.shape[a + 1])
    for a in spatial:
        if x.shape[a + 1] != new_shape[a]:
            x = _axis_pass(backend, x, a + 1, new_shape[a], order)
    if clip:
        # skimage clips every resize call's result to that call's input range.
        backend.clip(x, group_axis, lo, hi)
    if axis_z is not None and x.shape[axis_z + 1] != new_shape[axis_z]:
        x = _axis_pass(backend, x, axis_z + 1, new_shape[axis_z], order_z)
    return x


def _resample_seg(backend, s, new_shape, axis_z: int | None, order: int, order_z: int):
    """s: (C, D, H, W) integer labels, contiguous."""
    if axis_z is None:
        return backend.seg(s, new_shape, (order,) * 3, False)
    in_plane = list(new_shape)
    in_plane[axis_z] = s.shape[axis_z + 1]
    orders = [order] * 3
    orders[axis_z] = 0  # same size along z: order 0 is the identity there
    if tuple(in_plane) != tuple(s.shape[1:]):
        s = backend.seg(s, in_plane, orders, False)
    if s.shape[axis_z + 1] != new_shape[axis_z]:
        orders = [0, 0, 0]
        orders[axis_z] = order_z
        # nnU-Net keeps a label along z where np.round(weight) > 0.5, i.e. weight strictly above 0.5.
        s = backend.seg(s, new_shape, orders, True)
    return s


def _check_spacing(name: str, spacing: Sequence[float], ndim: int) -> tuple:
    try:
        values = tuple(float(v) for v in spacing)
    except TypeError as err:
        raise TypeError(f"{name} must be a sequence of {ndim} numbers, got {spacing!r}") from err
    if len(values) != ndim:
        raise ValueError(f"{name} must have {ndim} entries (one per spatial axis), got {len(values)}: {spacing!r}")
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{name} entries must be finite and positive, got {spacing!r}")
    return values


def _check_new_shape(new_shape: Sequence[int], name: str, shape: tuple) -> tuple:
    """new_shape as a tuple of positive ints, one per spatial axis of `name` (shape (C, *spatial))."""
    spatial_ndim = len(shape) - 1
    try:
        target = tuple(int(v) for v in new_shape)
    except TypeError as err:
        raise TypeError(f"new_shape must be a sequence of ints, got {new_shape!r}") from err
    if len(target) != spatial_ndim or any(t <= 0 for t in target) or any(t != v for t, v in zip(target, new_shape)):
        raise ValueError(f"new_shape must hold {spatial_ndim} positive integers for {name} of shape {shape}, got {new_shape!r}")
    return target


def resample(
    data: Any,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    *,
    is_seg: bool = False,
    order: int = 3,
    order_z: int = 0,
    force_separate_z: bool | None = None,
    separate_z_anisotropy_threshold: float = ANISO_THRESHOLD,
    clip_joint: bool = True,
) -> Any:
    """Resamples image data or a segmentation to `new_shape`, as nnU-Net's
    `resample_data_or_seg_to_shape` does.

    Args:
        data: (C, D, H, W) or (C, H, W) numpy array or torch tensor (CPU or CUDA). Any layout and
            byte order; non-contiguous input is copied once.
        new_shape: output spatial shape, one positive int per spatial axis.
        current_spacing: input spacing per spatial axis (used by the separate-z rule only).
        new_spacing: output spacing per spatial axis (used by the separate-z rule only).
        is_seg: False resamples intensities; True resamples labels by nnU-Net's per-label vote
            (labels in the output are labels of the input).
        order: interpolation order in-plane: 0, 1 or 3 for data (default 3, cubic B-spline with
            prefilter, then clipped to the input range like skimage's resize); 0 or 1 for segmentations.
        order_z: order along the separately resampled axis (default 0); 0, 1 or 3 for data, 0 or 1
            for segmentations.
        force_separate_z: None applies nnU-Net's anisotropy rule (default); True/False force it.
            3D only: 2D images are always resampled jointly.
        separate_z_anisotropy_threshold: max/min spacing ratio of the rule (default 3).
        clip_joint: with order 3 and all axes resampled together, clip the result to each channel's
            input range, as skimage does (default True). False leaves the overshoot, for an image
            resampled in parts whose caller clips to the whole image's range afterwards; the
            per-slice clip of separately resampled data is slice-local and always done.

    Returns:
        Data: float32, shape (C, *new_shape). Segmentation: the input's dtype. Same kind (numpy or
        torch, same device) as `data`.

    Raises:
        TypeError: `data` is neither a numpy array nor a torch tensor, or has an unsupported dtype.
        ValueError: wrong ndim, empty array, shape/spacing lengths that do not match, non-positive
            sizes or spacings, an unsupported order, NaN/Inf in the data (as float32), or a result
            larger than the memory of the machine, or of the GPU for CUDA tensors (checked before
            anything is allocated).
    """
    kind = kind_of(data, "data")
    if data.ndim not in (3, 4):
        raise ValueError(
            f"data must be (C, D, H, W) or (C, H, W) with a leading channel axis, got shape {tuple(data.shape)}"
        )
    spatial_ndim = data.ndim - 1
    if 0 in tuple(data.shape):
        raise ValueError(f"data is empty: shape {tuple(data.shape)}")
    target = _check_new_shape(new_shape, "data", tuple(data.shape))
    cur = _check_spacing("current_spacing", current_spacing, spatial_ndim)
    new = _check_spacing("new_spacing", new_spacing, spatial_ndim)
    allowed = _SEG_ORDERS if is_seg else _DATA_ORDERS
    what = "segmentations" if is_seg else "data"
    if order not in allowed:
        raise ValueError(f"order must be one of {allowed} for {what}, got {order!r}")
    if order_z not in allowed:
        raise ValueError(f"order_z must be one of {allowed} for {what}, got {order_z!r}")

    shape = tuple(int(s) for s in data.shape)
    check_result_size(
        f"resampling {what} of shape {shape} to new_shape {target}",
        [("result", (shape[0],) + target, data.dtype if is_seg else np.float32)],
        kind,
        "Check new_shape (compute_new_shape gives it from the spacings).",
    )

    axis_z = separate_z_axis(cur, new, force_separate_z, separate_z_anisotropy_threshold) if spatial_ndim == 3 else None
    shape3 = (1,) + target if spatial_ndim == 2 else target

    out = dispatch(
        data,
        "data",
        cpu=lambda a: _resample_cpu(a, shape3, axis_z, is_seg, order, order_z, clip_joint),
        cuda=lambda t: _resample_cuda(t, shape3, axis_z, is_seg, order, order_z, clip_joint),
    )
    return out.reshape((out.shape[0],) + target)


def _as_4d(a):
    return a.reshape((a.shape[0], 1) + tuple(a.shape[1:])) if a.ndim == 3 else a


def _seg_labels_dtype(dtype: np.dtype) -> np.dtype:
    """The integer type labels of `dtype` are resampled in."""
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    if np.issubdtype(dtype, np.integer):
        if dtype.itemsize == 8 and dtype.kind == "u":
            return np.dtype(np.int64)
        if dtype.kind == "u" and dtype.itemsize == 4:
            return np.dtype(np.int64)
        return dtype.newbyteorder("=")
    if np.issubdtype(dtype, np.floating):
        return np.dtype(np.int64)
    raise TypeError(f"segmentation dtype must be integer, bool or float with integer values, got {dtype}")


def _resample_cpu(a: np.ndarray, shape3, axis_z, is_seg: bool, order: int, order_z: int, clip: bool = True) -> np.ndarray:
    backend = _CpuBackend()
    if not is_seg:
        if a.dtype.kind not in "fiub":
            raise TypeError(f"data dtype must be a float or integer type, got {a.dtype}")
        with np.errstate(over="ignore"):  # float64 beyond float32's range: Inf, refused by _resample_data
            x = native_contiguous(_as_4d(a), np.float32)
        return _resample_data(backend, x, shape3, axis_z, order, order_z, clip)
    labels_dtype = _seg_labels_dtype(a.dtype)
    s = native_contiguous(_as_4d(a), labels_dtype)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.array_equal(s, _as_4d(a)):
            raise ValueError("a floating-point segmentation must hold integer label values (no fractions, NaN or Inf)")
    out = _resample_seg(backend, s, shape3, axis_z, order, order_z)
    return out.astype(a.dtype, copy=False) if out.dtype != a.dtype else out


def _resample_cuda(t, shape3, axis_z, is_seg: bool, order: int, order_z: int, clip: bool = True):
    import torch

    backend = _CudaBackend()
    t4 = _as_4d(t)
    if not is_seg:
        if t.is_complex():
            raise TypeError(f"data dtype must be a float or integer type, got {t.dtype}")
        return _resample_data(backend, t4.to(torch.float32).contiguous(), shape3, axis_z, order, order_z, clip)
    if t.dtype == torch.bool:
        s = t4.to(torch.uint8)
    elif t.is_floating_point():
        s = t4.to(torch.int64)
        if not torch.equal(s.to(t.dtype), t4):
            raise ValueError("a floating-point segmentation must hold integer label values (no fractions, NaN or Inf)")
    else:
        s = t4
    out = _resample_seg(backend, s.contiguous(), shape3, axis_z, order, order_z)
    return out.to(t.dtype)
