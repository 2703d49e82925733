"""Fused export: logits at the network's spacing -> label map (and optionally probabilities) at the
original shape, in one pass.

nnU-Net's ``convert_predicted_logits_to_segmentation_with_correct_shape`` resamples every class
channel to the original shape (``resample_data_or_seg_to_shape(..., is_seg=False, order=1,
order_z=0, force_separate_z=None)``), then takes a softmax and an argmax (or, for region-based
models, a sigmoid and ``convert_probabilities_to_segmentation``). That materialises all classes at
full resolution, in float64 on the way. Here each output voxel interpolates every class with the same
linear taps and keeps only the running argmax, so the extra memory is the label map itself (plus the
probabilities when asked for). The kernels and their math: ``csrc/include/fastseg/inference.h``.

Labels agree with nnU-Net's wherever the two largest class values differ by more than float32
rounding (nnU-Net interpolates in float64 and rounds to float32 before its argmax).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fastseg import _native
from fastseg.ops._arrays import check_finite, check_result_size, dispatch, kind_of, torch
from fastseg.ops.resample import ANISO_THRESHOLD, _check_new_shape, _check_spacing, separate_z_axis


__all__ = ["export_orders", "export_segmentation"]

_ORDERS = (0, 1)
_NUMPY_LOGIT_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}


def export_orders(
    in_shape: Sequence[int], out_shape: Sequence[int], axis_z: int | None, order: int = 1, order_z: int = 0
) -> tuple[int, ...]:
    """Interpolation order per spatial axis: ``order_z`` for the separately resampled axis, ``order``
    for the others, and 0 (one tap, exact) for an axis whose size does not change."""
    orders = [order_z if a == axis_z else order for a in range(len(in_shape))]
    return tuple(0 if n_in == n_out else o for o, n_in, n_out in zip(orders, in_shape, out_shape))


def _label_dtype(num_classes: int, regions: tuple[int, ...] | None) -> np.dtype:
    largest = max(regions) if regions else num_classes - 1
    return np.dtype(np.uint8) if largest <= 255 else np.dtype(np.uint16)


def _check_regions(regions_class_order: Sequence[int] | None, num_classes: int) -> tuple[int, ...] | None:
    if regions_class_order is None:
        return None
    try:
        regions = tuple(int(r) for r in regions_class_order)
    except (TypeError, ValueError) as err:
        raise ValueError(f"regions_class_order must be a sequence of ints, got {regions_class_order!r}") from err
    if len(regions) != num_classes:
        raise ValueError(
            f"regions_class_order must hold one label per logit channel ({num_classes}), got {len(regions)}: "
            f"{regions_class_order!r}"
        )
    if any(r < 0 or r > 65535 for r in regions):
        raise ValueError(f"regions_class_order labels must lie in [0, 65535], got {regions_class_order!r}")
    return regions


def _logit_dtype_name(x: Any) -> str | None:
    """Name of the storage type the kernels read x as, or None when x must be converted first."""
    if isinstance(x, np.ndarray):
        return _NUMPY_LOGIT_DTYPES.get(x.dtype.newbyteorder("="))
    return {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(x.dtype)


def export_segmentation(
    logits: Any,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    *,
    weights: Any = None,
    regions_class_order: Sequence[int] | None = None,
    return_probabilities: bool = False,
    order: int = 1,
    order_z: int = 0,
    force_separate_z: bool | None = None,
    separate_z_anisotropy_threshold: float = ANISO_THRESHOLD,
) -> Any:
    """Resamples predicted logits to ``new_shape`` and labels them, in one fused pass.

    Equals nnU-Net's export (``resample_data_or_seg_to_shape`` with ``order=1, order_z=0,
    force_separate_z=None``, then argmax, or sigmoid and regions) up to float32 ties, without ever
    holding all class channels at the output resolution.

    Args:
        logits: ``(C, D, H, W)`` or ``(C, H, W)`` class logits at the network's spacing: numpy array
            (float32, float16; float64 is converted to float32) or torch tensor (float32, float16,
            bfloat16; CPU or CUDA). With ``weights``, the raw accumulator of
            :func:`fastseg.ops.accumulate_tiles`.
        new_shape: output spatial shape (the shape after cropping, before resampling), one positive
            int per spatial axis.
        current_spacing: spacing of ``logits`` per spatial axis (the configuration's spacing).
        new_spacing: spacing of the output per spatial axis (the image's original spacing).
        weights: ``(D, H, W)`` / ``(H, W)`` weight map to divide the logits by before resampling (the
            division of :func:`fastseg.ops.normalize_accumulated`, fused), or None (default: the
            logits are already normalised). Positive wherever the output reads it.
        regions_class_order: None (default) for softmax models: label = argmax over channels.
            For region-based (sigmoid) models, the label of each channel: a voxel gets the label of
            the last channel, in this order, whose logit is positive (sigmoid > 0.5), else 0.
        return_probabilities: also return the float32 ``(C, *new_shape)`` softmax of the resampled
            logits (sigmoid for region-based models), as nnU-Net's ``--save_probabilities``
            (default False); equal to torch's softmax/sigmoid within float32 rounding (the kernels'
            exp is within 1 ulp of expf). This array is O(C x output voxels) by nature. The labels
            are the argmax of the logits either way.
        order: interpolation order in-plane, 0 or 1 (default 1, nnU-Net's export).
        order_z: order along the separately resampled axis, 0 or 1 (default 0).
        force_separate_z: None (default) applies nnU-Net's anisotropy rule
            (:func:`fastseg.ops.separate_z_axis`); True/False force it. 3D only.
        separate_z_anisotropy_threshold: max/min spacing ratio of the rule (default 3).

    Returns:
        The label map ``new_shape``, uint8 when every label fits (at most 256 classes, or region
        labels up to 255), else uint16; with ``return_probabilities``, the tuple
        ``(labels, probabilities)``. Same kind (numpy or torch, same device) as ``logits``.

    Raises:
        TypeError: ``logits`` or ``weights`` is neither a numpy array nor a torch tensor.
        ValueError: wrong ndim or dtype, empty logits, a new_shape/spacing of the wrong length or
            with non-positive entries, weights whose shape differs from the logits' spatial shape,
            regions_class_order of the wrong length, an order other than 0 or 1, more classes
            than uint16 labels can hold, NaN or Inf in the logits or the weights (as float32), or
            results (labels, probabilities) larger than the memory of the machine, or of the GPU
            for CUDA tensors (checked before anything is allocated).
    """
    kind = kind_of(logits, "logits")
    if logits.ndim not in (3, 4):
        raise ValueError(f"logits must be (C, D, H, W) or (C, H, W), got shape {tuple(logits.shape)}")
    shape = tuple(int(s) for s in logits.shape)
    if 0 in shape:
        raise ValueError(f"logits are empty: shape {shape}")
    spatial_ndim = logits.ndim - 1
    is_float = logits.dtype.kind == "f" if isinstance(logits, np.ndarray) else logits.is_floating_point()
    if not is_float:
        raise ValueError(f"logits must be a float array (float32, float16 or bfloat16), got {logits.dtype}")
    target = _check_new_shape(new_shape, "logits", shape)
    cur = _check_spacing("current_spacing", current_spacing, spatial_ndim)
    new = _check_spacing("new_spacing", new_spacing, spatial_ndim)
    if order not in _ORDERS:
        raise ValueError(
            f"order must be 0 or 1 for the fused export, got {order!r}; for order 3 resample with "
            "fastseg.ops.resample and take the argmax"
        )
    if order_z not in _ORDERS:
        raise ValueError(f"order_z must be 0 or 1 for the fused export, got {order_z!r}")
    num_classes = shape[0]
    regions = _check_regions(regions_class_order, num_classes)
    if regions is None and num_classes > 65536:
        raise ValueError(f"{num_classes} classes do not fit uint16 labels (at most 65536)")
    if weights is not None:
        kind_of(weights, "weights")
        if tuple(int(s) for s in weights.shape) != shape[1:]:
            raise ValueError(f"weights must have the logits' spatial shape {shape[1:]}, got {tuple(weights.shape)}")
        w_float = weights.dtype.kind == "f" if isinstance(weights, np.ndarray) else weights.is_floating_point()
        if not w_float:
            raise ValueError(f"weights must be a float array, got {weights.dtype}")

    axis_z = separate_z_axis(cur, new, force_separate_z, separate_z_anisotropy_threshold) if spatial_ndim == 3 else None
    in3 = shape[1:] if spatial_ndim == 3 else (1,) + shape[1:]
    out3 = target if spatial_ndim == 3 else (1,) + target
    orders = export_orders(in3, out3, axis_z, order, order_z)
    label_dtype = _label_dtype(num_classes, regions)
    results = [("labels", target, label_dtype)]
    if return_probabilities:
        results.append(("probabilities", (num_classes,) + target, np.float32))
    check_result_size(
        f"exporting logits of shape {shape} to new_shape {target}",
        results,
        kind,
        "Check new_shape (the shape of the image after cropping, before resampling).",
    )

    args = (in3, out3, orders, regions, label_dtype, return_probabilities)
    labels, probabilities = dispatch(
        logits,
        "logits",
        cpu=lambda host_logits: _export_cpu(host_logits, weights, *args),
        cuda=lambda t: _export_cuda(t, weights, *args),
        host=_host_logits,
    )
    labels = labels.reshape(target)
    if return_probabilities:
        return labels, probabilities.reshape((num_classes,) + target)
    return labels


_NONFINITE_LOGITS = "the labels there would be arbitrary; check the network's output (and the weights) first"


def _host_logits(logits: Any) -> tuple[np.ndarray, str]:
    """CPU logits as a C-contiguous numpy array and the storage name the kernel reads it as: float32 or
    float16, or bfloat16 as uint16 bits (numpy has no bfloat16); other float types become float32."""
    if isinstance(logits, np.ndarray):
        name = _logit_dtype_name(logits)
        with np.errstate(over="ignore"):  # float64 beyond float32's range: Inf, refused by _export_cpu
            x = np.ascontiguousarray(logits, dtype=np.float32 if name is None else logits.dtype.newbyteorder("="))
        return x, name or "float32"
    t = logits.detach()
    name = _logit_dtype_name(t)
    if name is None:
        t, name = t.float(), "float32"
    t = t.contiguous()
    return (t.view(torch.int16).numpy().view(np.uint16) if name == "bfloat16" else t.numpy()), name


def _export_cpu(host_logits, weights, in3, out3, orders, regions, label_dtype, return_probabilities):
    x, name = host_logits
    # After the conversion: float64 values beyond float32's range count as infinite.
    check_finite(x, "logits", _NONFINITE_LOGITS, storage=name if name == "bfloat16" else None)
    x = x.reshape((x.shape[0],) + tuple(in3))
    w = None
    if weights is not None:
        if isinstance(weights, np.ndarray):
            w = np.ascontiguousarray(weights, dtype=np.float32)
        else:
            if weights.device.type != "cpu":
                raise ValueError(f"weights must be on the logits' device (cpu), got {weights.device}")
            w = weights.detach().to(torch.float32).contiguous().numpy()
        check_finite(w, "weights", _NONFINITE_LOGITS)
        w = w.reshape(in3)
    result = _native.cpu().export_segmentation(
        x,
        name,
        w,
        list(out3),
        list(orders),
        None if regions is None else list(regions),
        label_dtype.name,
        bool(return_probabilities),
    )
    return result if return_probabilities else (result, None)


def _export_cuda(logits, weights, in3, out3, orders, regions, label_dtype, return_probabilities):
    device = logits.device
    t = logits.detach()
    if _logit_dtype_name(t) is None:
        t = t.float()
    check_finite(t, "logits", _NONFINITE_LOGITS)
    t = t.contiguous().view((logits.shape[0],) + tuple(in3))
    w = None
    if weights is not None:
        if not isinstance(weights, torch.Tensor) or weights.device != device:
            where = weights.device if isinstance(weights, torch.Tensor) else "host (numpy)"
            raise ValueError(f"weights must be on the logits' device {device}, got {where}")
        w = weights.detach().to(torch.float32).contiguous().view(in3)
        check_finite(w, "weights", _NONFINITE_LOGITS)
    region_tensor = None if regions is None else torch.tensor(regions, dtype=torch.int32, device=device)
    from fastseg.ops import _cuda_inference

    torch_label = torch.uint8 if label_dtype == np.uint8 else torch.uint16
    return _cuda_inference.export_segmentation(
        t, w, tuple(out3), tuple(orders), region_tensor, torch_label, bool(return_probabilities)
    )
