"""CUDA backend of the inference ops: torch tensors on a CUDA device in, torch tensors on that device out.

Same contract as ``fastseg/ops/_cuda.py``: the kernels in ``fastseg._C_cuda`` (csrc/cuda/inference.cu)
take raw device pointers, shapes, dtype names and the current stream; this module allocates every
output with torch and keeps the inputs alive for the launch. Arguments arrive validated by
``fastseg.ops.accumulate`` / ``fastseg.ops.export`` and already in the kernels' layouts (3 spatial
axes, contiguous).
"""

from __future__ import annotations

import numpy as np
import torch

from fastseg.ops._cuda import _kernels

__all__ = ["FLOAT_STORAGE", "accumulate_tiles", "export_segmentation"]

# Float dtypes the kernels read, with the name the extension expects.
FLOAT_STORAGE: dict[torch.dtype, str] = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}
_LABEL_DTYPES: dict[torch.dtype, str] = {torch.uint8: "uint8", torch.uint16: "uint16"}


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def accumulate_tiles(
    accumulator: torch.Tensor,
    weights: torch.Tensor | None,
    tiles: torch.Tensor,
    offsets: np.ndarray,
    importance_map: torch.Tensor | None,
) -> None:
    """In place: ``accumulator[:, o_b + t] += tiles[b, :, t] * g[t]``, ``weights[o_b + t] += g[t]``.

    Args:
        accumulator: float32 ``(C, D, H, W)`` on a CUDA device, contiguous.
        weights: float32 ``(D, H, W)`` on that device, or None.
        tiles: ``(B, C, d, h, w)`` float32, float16 or bfloat16 on that device, contiguous.
        offsets: int64 ``(B, 3)`` numpy array on the host. The extension checks that every tile lies
            inside the image and copies them to the device itself, so that the kernel reads exactly
            the values it checked.
        importance_map: float32 ``(d, h, w)`` on that device, or None (weight 1).
    """
    kernels = _kernels()
    device = accumulator.device
    device_offsets = torch.empty(tuple(offsets.shape), dtype=torch.int64, device=device)
    with torch.cuda.device(device):
        kernels.accumulate_tiles(
            accumulator.data_ptr(),
            _ptr(weights),
            tiles.data_ptr(),
            FLOAT_STORAGE[tiles.dtype],
            np.ascontiguousarray(offsets, dtype=np.int64).ravel().tolist(),
            device_offsets.data_ptr(),
            _ptr(importance_map),
            list(accumulator.shape),
            list(tiles.shape),
            torch.cuda.current_stream(device).cuda_stream,
        )


def export_segmentation(
    logits: torch.Tensor,
    weights: torch.Tensor | None,
    out_shape: tuple[int, int, int],
    orders: tuple[int, int, int],
    region_labels: torch.Tensor | None,
    label_dtype: torch.dtype,
    return_probabilities: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fused resample + argmax (or region labels) on the GPU.

    Args:
        logits: ``(C, D, H, W)`` float32, float16 or bfloat16, contiguous, on a CUDA device.
        weights: float32 ``(D, H, W)`` to divide the logits by, or None.
        out_shape: ``(D', H', W')``.
        orders: 0 or 1 per spatial axis.
        region_labels: int32 ``(C,)`` on the device for region-based labelling, or None (argmax).
        label_dtype: torch.uint8 or torch.uint16.
        return_probabilities: also return float32 ``(C, D', H', W')`` softmax (or sigmoid) values.

    Returns:
        (labels ``(D', H', W')``, probabilities or None).
    """
    kernels = _kernels()
    device = logits.device
    labels = torch.empty(out_shape, dtype=label_dtype, device=device)
    probabilities = (
        torch.empty((logits.shape[0], *out_shape), dtype=torch.float32, device=device) if return_probabilities else None
    )
    with torch.cuda.device(device):
        kernels.export_segmentation(
            logits.data_ptr(),
            FLOAT_STORAGE[logits.dtype],
            _ptr(weights),
            list(logits.shape),
            list(out_shape),
            list(orders),
            _ptr(region_labels),
            labels.data_ptr(),
            _LABEL_DTYPES[label_dtype],
            _ptr(probabilities),
            torch.cuda.current_stream(device).cuda_stream,
        )
    return labels, probabilities
