"""CUDA backend of fastseg.ops: torch tensors on a CUDA device in, torch tensors on that device out.

The kernels live in the extension ``fastseg._C_cuda`` (csrc/cuda), which does not link libtorch: this
module allocates every output and scratch buffer with torch, then hands the kernels raw device
pointers (``tensor.data_ptr()``), the shapes and the current stream of the tensor's device. Work is
therefore ordered with the caller's other torch work on that stream, and buffers return to torch's
caching allocator.

The extension is imported on first use, so importing this module never needs it; without it every
function raises a RuntimeError that says how to build it.
"""

from __future__ import annotations

from types import ModuleType

import torch

__all__ = ["resample_axis", "resample_seg"]

# Label dtypes the kernels are instantiated for, with the name the extension expects.
_SEG_DTYPES: dict[torch.dtype, str] = {
    torch.int8: "int8",
    torch.uint8: "uint8",
    torch.int16: "int16",
    torch.uint16: "uint16",
    torch.int32: "int32",
    torch.int64: "int64",
}


def _kernels() -> ModuleType:
    """The compiled extension ``fastseg._C_cuda``, imported on first use."""
    try:
        from fastseg import _C_cuda
    except ImportError as err:
        raise RuntimeError(
            "fastseg's CUDA kernels were not built (fastseg._C_cuda could not be imported: "
            f"{err}). Reinstall fastseg on a machine where nvcc is on PATH (the build prints "
            "'building fastseg._C_cuda' when it finds it), or pass CPU tensors."
        ) from err
    return _C_cuda


def _check_cuda_tensor(x: torch.Tensor, name: str, ndim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cuda":
        raise ValueError(f"{name} must be on a CUDA device, got device {x.device}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() first), got strides {x.stride()}")


def resample_axis(x: torch.Tensor, n_out: int, order: int) -> torch.Tensor:
    """Resample one axis of a separable resample on the GPU.

    Args:
        x: float32 CUDA tensor of shape ``(outer, n_in, inner)``, contiguous; the middle axis is
            resampled. ``n_in`` must be positive.
        n_out: output length of the middle axis, positive.
        order: interpolation order, 0 (nearest), 1 (linear) or 3 (cubic B-spline, prefiltered on
            lines extended by ``_C_cuda.SPLINE_PAD`` edge samples on each side).

    Returns:
        float32 tensor ``(outer, n_out, inner)`` on ``x.device``. No clipping is applied.
    """
    _check_cuda_tensor(x, "x", ndim=3)
    if x.dtype != torch.float32:
        raise ValueError(f"x must be float32, got {x.dtype}")
    if order not in (0, 1, 3):
        raise ValueError(f"order must be 0, 1 or 3, got {order}")
    if n_out <= 0:
        raise ValueError(f"n_out must be positive, got {n_out}")
    outer, n_in, inner = x.shape
    if n_in == 0:
        raise ValueError(f"the resampled axis of x is empty, got shape {tuple(x.shape)}")
    kernels = _kernels()
    out = torch.empty((outer, n_out, inner), dtype=torch.float32, device=x.device)
    # Order 3 scratch: B-spline coefficients of the edge-padded lines, (outer, n_in + 2 * pad, inner),
    # in float64 as the CPU keeps them (csrc/include/fastseg/hd.h: one precision on both devices).
    coef = None
    if order == 3:
        coef = torch.empty((outer, n_in + 2 * kernels.SPLINE_PAD, inner), dtype=torch.float64, device=x.device)
    with torch.cuda.device(x.device):
        kernels.resample_axis(
            x.data_ptr(),
            out.data_ptr(),
            coef.data_ptr() if coef is not None else 0,
            outer,
            n_in,
            inner,
            n_out,
            order,
            torch.cuda.current_stream(x.device).cuda_stream,
        )
    return out


def resample_seg(
    seg: torch.Tensor, new_shape: tuple[int, int, int], orders: tuple[int, int, int], strict: bool
) -> torch.Tensor:
    """Resample a label map on the GPU by nnU-Net's per-label linear vote.

    Args:
        seg: integer CUDA tensor ``(C, D, H, W)`` (int8, uint8, int16, uint16, int32 or int64),
            contiguous, with non-empty spatial axes.
        new_shape: output spatial shape ``(D', H', W')``, positive entries.
        orders: per spatial axis (z, y, x), 0 (nearest) or 1 (linear vote).
        strict: the vote rule (``SegVote`` in csrc/include/fastseg/resample.h). True: nnU-Net's
            out-of-plane step of the separate-z path, the largest label whose summed corner weight
            exceeds 0.5, else 0 (or the heaviest label when 0 is no label of ``seg``). False:
            batchgenerators' ``resize_segmentation``, the label with the largest summed weight,
            an exact tie going to the nearest-neighbour label if tied, else to the smallest.

    Returns:
        tensor ``(C, D', H', W')`` of ``seg.dtype`` on ``seg.device``.
    """
    _check_cuda_tensor(seg, "seg", ndim=4)
    if seg.dtype not in _SEG_DTYPES:
        raise ValueError(f"seg must have an integer dtype of {sorted(_SEG_DTYPES.values())}, got {seg.dtype}")
    new_shape = tuple(int(n) for n in new_shape)
    orders = tuple(int(o) for o in orders)
    if len(new_shape) != 3 or any(n <= 0 for n in new_shape):
        raise ValueError(f"new_shape must hold 3 positive sizes (D', H', W'), got {new_shape}")
    if len(orders) != 3 or any(o not in (0, 1) for o in orders):
        raise ValueError(f"orders must hold 3 entries (z, y, x), each 0 or 1, got {orders}")
    if any(n == 0 for n in seg.shape[1:]):
        raise ValueError(f"seg must not have empty spatial axes, got shape {tuple(seg.shape)}")
    kernels = _kernels()
    # A zero test on the int16 view of uint16 (same bits), whose CUDA comparisons torch may lack.
    bits = seg.view(torch.int16) if seg.dtype == torch.uint16 else seg
    zero_is_label = bool((bits == 0).any())
    out = torch.empty((seg.shape[0], *new_shape), dtype=seg.dtype, device=seg.device)
    with torch.cuda.device(seg.device):
        kernels.resample_seg(
            seg.data_ptr(),
            out.data_ptr(),
            list(seg.shape),
            list(out.shape),
            list(orders),
            bool(strict),
            zero_is_label,
            _SEG_DTYPES[seg.dtype],
            torch.cuda.current_stream(seg.device).cuda_stream,
        )
    return out
