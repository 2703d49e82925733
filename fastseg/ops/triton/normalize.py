"""Intensity normalization on torch tensors with Triton: statistics (``moments``) and the fused map
(``normalize_apply``).

This is the GPU twin of the CPU path in ``csrc/cpu/normalize.cpp``; both follow
``csrc/include/fastseg/normalize.h``: every nnU-Net scheme is ``out = (clip(x, lo, hi) - shift) / denom``
in float32, and masked z-score leaves voxels outside the mask at ``float32(x)``.

Statistics. One pass over the data; each program reduces one block of ``BLOCK_SIZE`` elements to
partials, and torch combines the partials in float64:

* ``d = x - shift`` with one global ``shift`` (the first finite, in-mask element of a short prefix), so
  sums stay small for data far from zero;
* per block: ``n`` (valid elements), ``c = sum(d) / n`` (block centre), ``r = sum(d - c)`` and
  ``q = sum((d - c)^2)``, plus min, max and the number of non-finite elements;
* combined: ``mean_d = sum(n * c + r) / N`` and, since ``d - mean_d = (d - c) + (c - mean_d)``,
  ``M2 = sum(q + 2 (c - mean_d) r + n (c - mean_d)^2)``; ``std = sqrt(M2 / N)`` (population, ddof=0).

Centring each block on its own mean keeps the float32 per-block sums free of the cancellation of
"sum of squares minus squared sum"; ``r`` carries the rounding of ``c`` so that the float64 combination
is exact algebra. Inputs whose values float32 cannot hold exactly (float64, int32, int64) accumulate in
float64 instead. As on the CPU, non-finite values are counted over all elements (mask or not) and left
out of count, sums, min and max; a selection with no valid element reports mean = std = min = max = 0.

Apply. One element-wise pass: ``v = float32(x)``; ``out = (clamp(v, lo, hi) - shift) / denom`` where the
mask is set (everywhere without a mask), ``v`` elsewhere; non-finite ``v`` are counted per block. The
division is IEEE round-to-nearest (``tl.math.div_rn``), not Triton's default approximate ``/``, so the
result matches the C++ body bit for bit.

Layout: any shape, flattened C-contiguous (the launchers make a contiguous copy when needed); the mask
is bool or uint8 with as many elements as the image. Outputs live on ``x.device``.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

__all__ = ["moments", "normalize_apply", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (
    torch.float16,
    torch.float32,
    torch.float64,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
)
# Dtypes with values float32 cannot represent exactly: their moments accumulate in float64.
_WIDE_DTYPES = (torch.float64, torch.int32, torch.int64)
_MAX_BLOCK_SIZE = 4096
_MIN_BLOCK_SIZE = 128
# Elements scanned for the first finite, in-mask value used as the moments shift.
_SHIFT_PREFIX = 1024


@triton.jit
def _moments_kernel(
    X_ptr,  # [n] any numeric dtype
    M_ptr,  # [n] uint8 mask (unused unless HAS_MASK)
    Shift_ptr,  # [1] ACC_DTYPE
    Count_ptr,  # [blocks] int32: finite, in-mask elements
    Nonfinite_ptr,  # [blocks] int32: non-finite elements, mask ignored
    Center_ptr,  # [blocks] float64: c = mean of d over the block's valid elements (0 if none)
    Resid_ptr,  # [blocks] float64: r = sum(d - c)
    Sq_ptr,  # [blocks] float64: q = sum((d - c)^2)
    Min_ptr,  # [blocks] float64 (+inf if no valid element)
    Max_ptr,  # [blocks] float64 (-inf if no valid element)
    n_elements,
    HAS_MASK: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offsets = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    in_range = offsets < n_elements

    v = tl.load(X_ptr + offsets, mask=in_range, other=0).to(ACC_DTYPE)
    finite = tl.abs(v) < float("inf")  # false for NaN and +-Inf
    nonfinite = tl.sum((in_range & ~finite).to(tl.int32), axis=0)
    valid = in_range & finite
    if HAS_MASK:
        valid = valid & (tl.load(M_ptr + offsets, mask=in_range, other=0) != 0)
    count = tl.sum(valid.to(tl.int32), axis=0)

    shift = tl.load(Shift_ptr)
    d = tl.where(valid, v - shift, 0.0)
    center = tl.sum(d, axis=0) / tl.maximum(count, 1).to(ACC_DTYPE)
    e = tl.where(valid, d - center, 0.0)
    lo = tl.min(tl.where(valid, v, float("inf")), axis=0)
    hi = tl.max(tl.where(valid, v, -float("inf")), axis=0)

    tl.store(Count_ptr + pid, count)
    tl.store(Nonfinite_ptr + pid, nonfinite)
    tl.store(Center_ptr + pid, center.to(tl.float64))
    tl.store(Resid_ptr + pid, tl.sum(e, axis=0).to(tl.float64))
    tl.store(Sq_ptr + pid, tl.sum(e * e, axis=0).to(tl.float64))
    tl.store(Min_ptr + pid, lo.to(tl.float64))
    tl.store(Max_ptr + pid, hi.to(tl.float64))


@triton.jit
def _normalize_apply_kernel(
    X_ptr,  # [n] any numeric dtype
    M_ptr,  # [n] uint8 mask (unused unless HAS_MASK)
    Out_ptr,  # [n] float32
    Nonfinite_ptr,  # [blocks] int32: non-finite float32(x)
    n_elements,
    lo,  # float32 scalars, as in AffineParams
    hi,
    shift,
    denom,
    HAS_MASK: tl.constexpr,
    CLIP: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offsets = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    in_range = offsets < n_elements

    v = tl.load(X_ptr + offsets, mask=in_range, other=0).to(tl.float32)
    nonfinite = tl.sum((in_range & ~(tl.abs(v) < float("inf"))).to(tl.int32), axis=0)

    y = v
    if CLIP:
        # Same comparisons as clamp_value in hd.h: NaN stays NaN.
        y = tl.where(y < lo, lo, tl.where(y > hi, hi, y))
    y = tl.math.div_rn(y - shift, denom)
    if HAS_MASK:
        inside = tl.load(M_ptr + offsets, mask=in_range, other=0) != 0
        y = tl.where(inside, y, v)

    tl.store(Out_ptr + offsets, y, mask=in_range)
    tl.store(Nonfinite_ptr + pid, nonfinite)


def _launch_config(n: int) -> tuple[int, int]:
    """Block size (a power of two, at least 128, at most 4096) and warp count for n elements."""
    block_size = min(_MAX_BLOCK_SIZE, max(_MIN_BLOCK_SIZE, triton.next_power_of_2(n)))
    num_warps = 8 if block_size >= 2048 else 4
    return block_size, num_warps


def _check_inputs(x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate x and mask; return both flattened and contiguous, the mask as uint8."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
        raise TypeError(f"unsupported dtype {x.dtype} for x; expected one of {names}")
    x_flat = x.contiguous().view(-1)
    if mask is None:
        return x_flat, None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"mask must be bool or uint8, got {mask.dtype}")
    if mask.numel() != x.numel():
        raise ValueError(
            f"mask must have as many elements as x: {mask.numel()} vs {x.numel()} "
            f"(shapes {tuple(mask.shape)} and {tuple(x.shape)})"
        )
    if mask.device != x.device:
        raise ValueError(f"mask must be on the same device as x: {mask.device} vs {x.device}")
    return x_flat, mask.contiguous().view(-1).view(torch.uint8)


def _as_float32(value: float, name: str) -> float:
    """value rounded to float32, as the C++ binding's float parameters receive it."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def moments(x: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
    """Count, mean, population std, min and max of the finite elements of x inside mask.

    Args:
        x: image of any shape; float16/32/64, int8/16/32/64 or uint8; on any device Triton can run on
            (CPU tensors need ``TRITON_INTERPRET=1`` set before this module is imported).
        mask: bool or uint8 with ``x.numel()`` elements, or None (default) for all elements.

    Returns:
        dict with ``count`` (int, finite in-mask elements), ``nonfinite`` (int, NaN/Inf elements of x,
        counted whether in the mask or not), and floats ``mean``, ``std`` (ddof=0), ``min``, ``max``;
        the four floats are 0.0 when ``count`` is 0.
    """
    x_flat, mask_flat = _check_inputs(x, mask)
    n = x_flat.numel()
    if n == 0:
        return {"count": 0, "nonfinite": 0, "mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0}

    acc_torch = torch.float64 if x.dtype in _WIDE_DTYPES else torch.float32
    acc_triton = tl.float64 if x.dtype in _WIDE_DTYPES else tl.float32

    # Shift: the first finite in-mask value of a short prefix (0 if there is none), chosen on the
    # device without a host round trip. Any value near the data works; it only keeps sums small.
    head = x_flat[:_SHIFT_PREFIX].to(acc_torch)
    usable = torch.isfinite(head)
    if mask_flat is not None:
        usable &= mask_flat[:_SHIFT_PREFIX] != 0
    first = torch.argmax(usable.to(torch.uint8))
    shift = torch.where(usable[first], head[first], torch.zeros((), dtype=acc_torch, device=x.device)).reshape(1)

    block_size, num_warps = _launch_config(n)
    blocks = triton.cdiv(n, block_size)
    counts = torch.empty(blocks, dtype=torch.int32, device=x.device)
    nonfinite = torch.empty(blocks, dtype=torch.int32, device=x.device)
    partials = torch.empty((5, blocks), dtype=torch.float64, device=x.device)
    center, resid, sq, lo, hi = partials

    _moments_kernel[(blocks,)](
        x_flat,
        mask_flat if mask_flat is not None else x_flat,
        shift,
        counts,
        nonfinite,
        center,
        resid,
        sq,
        lo,
        hi,
        n,
        HAS_MASK=mask_flat is not None,
        ACC_DTYPE=acc_triton,
        BLOCK_SIZE=block_size,
        num_warps=num_warps,
    )

    n_b = counts.to(torch.float64)
    total = n_b.sum()
    mean_d = (n_b * center + resid).sum() / total.clamp(min=1.0)
    gap = center - mean_d
    m2 = (sq + 2.0 * gap * resid + n_b * gap * gap).sum()
    std = torch.sqrt((m2 / total.clamp(min=1.0)).clamp(min=0.0))
    stats = torch.stack([total, nonfinite.to(torch.float64).sum(), shift[0].to(torch.float64) + mean_d, std,
                         lo.min(), hi.max()]).tolist()  # one device-to-host copy
    count = int(stats[0])
    result = {"count": count, "nonfinite": int(stats[1]), "mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0}
    if count > 0:
        result.update(mean=stats[2], std=stats[3], min=stats[4], max=stats[5])
    return result


def normalize_apply(
    x: torch.Tensor,
    mask: torch.Tensor | None,
    lo: float,
    hi: float,
    shift: float,
    denom: float,
    clip: bool,
) -> tuple[torch.Tensor, int]:
    """Fused ``(clip(float32(x), lo, hi) - shift) / denom`` inside mask, ``float32(x)`` outside.

    Args:
        x: image of any shape; float16/32/64, int8/16/32/64 or uint8.
        mask: bool or uint8 with ``x.numel()`` elements, or None to map every element.
        lo, hi: clip bounds, used only when ``clip`` is true; rounded to float32.
        shift: subtracted after clipping; rounded to float32.
        denom: divided by afterwards (IEEE round-to-nearest); rounded to float32.
        clip: whether to clamp to ``[lo, hi]`` first (NaN stays NaN).

    Returns:
        (out, nonfinite): ``out`` is float32 with the shape of x on x.device; ``nonfinite`` is the
        number of elements whose float32 value is NaN or +-Inf (mask ignored).
    """
    x_flat, mask_flat = _check_inputs(x, mask)
    lo, hi = _as_float32(lo, "lo"), _as_float32(hi, "hi")
    shift, denom = _as_float32(shift, "shift"), _as_float32(denom, "denom")
    n = x_flat.numel()
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    if n == 0:
        return out, 0

    block_size, num_warps = _launch_config(n)
    blocks = triton.cdiv(n, block_size)
    nonfinite = torch.empty(blocks, dtype=torch.int32, device=x.device)
    _normalize_apply_kernel[(blocks,)](
        x_flat,
        mask_flat if mask_flat is not None else x_flat,
        out.view(-1),
        nonfinite,
        n,
        lo,
        hi,
        shift,
        denom,
        HAS_MASK=mask_flat is not None,
        CLIP=bool(clip),
        BLOCK_SIZE=block_size,
        num_warps=num_warps,
    )
    return out, int(nonfinite.sum().item())
