"""Gaussian-weighted tile accumulation on torch tensors with Triton (GPU, or CPU under
``TRITON_INTERPRET=1``).

The GPU twin of ``accumulate_tiles`` in ``csrc/cpu/inference.cpp``; the math is the one of
``csrc/include/fastseg/inference.h``: for every tile ``b``, channel ``c`` and tile voxel ``t``

    accumulator[c, offsets[b] + t] += float32(tiles[b, c, t]) * importance[t]
    weights[offsets[b] + t]        += importance[t]

Decomposition: program ``(i, b, k)`` handles ``BLOCK_SIZE`` consecutive voxels ``k`` of channel
``i`` of tile ``b`` (flattened ``(z, y, x)`` order, so loads of the tile and of the importance map are
contiguous); channel ``i == C`` is the weight map. Tiles of one batch may overlap, so every add is a
``tl.atomic_add`` (float32, relaxed): no update is lost, though the order in which overlapping tiles
add, and so the last bit of a sum, may vary between runs.

Layout: accumulator ``(C, D, H, W)`` float32, weights ``(D, H, W)`` float32, tiles ``(B, C, d, h, w)``
float16, bfloat16 or float32, offsets ``(B, 3)`` int64 ``(z, y, x)``, importance ``(d, h, w)`` float32;
all contiguous and on one device. Validation of values (offsets inside the image) is the caller's
(``fastseg.ops.accumulate``); this launcher checks layouts.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["TILE_DTYPES", "accumulate_tiles"]

TILE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_BLOCK_SIZE = 1024


@triton.jit
def _accumulate_kernel(
    Acc_ptr,  # [C, D, H, W] float32, updated atomically
    W_ptr,  # [D, H, W] float32, updated atomically (unused unless HAS_WEIGHTS)
    Tiles_ptr,  # [B, C, d, h, w] float16 / bfloat16 / float32
    Offsets_ptr,  # [B, 3] int64 (z, y, x)
    G_ptr,  # [d, h, w] float32 importance (unused unless HAS_IMPORTANCE)
    C,
    D,
    H,
    W,
    td,
    th,
    tw,
    HAS_WEIGHTS: tl.constexpr,
    HAS_IMPORTANCE: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    channel = tl.program_id(0).to(tl.int64)  # 0..C-1: logits, C: the weight map
    b = tl.program_id(1).to(tl.int64)
    block = tl.program_id(2).to(tl.int64)
    tile_voxels = td * th * tw
    t = block * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE).to(tl.int64)
    inside = t < tile_voxels

    tz = t // (th * tw)
    ty = (t // tw) % th
    tx = t % tw
    oz = tl.load(Offsets_ptr + b * 3)
    oy = tl.load(Offsets_ptr + b * 3 + 1)
    ox = tl.load(Offsets_ptr + b * 3 + 2)
    voxel = ((oz + tz) * H + (oy + ty)) * W + (ox + tx)

    if HAS_IMPORTANCE:
        g = tl.load(G_ptr + t, mask=inside, other=0.0)
    else:
        g = tl.full((BLOCK_SIZE,), 1.0, tl.float32)

    if channel < C:
        logit = tl.load(Tiles_ptr + (b * C + channel) * tile_voxels + t, mask=inside, other=0.0).to(tl.float32)
        tl.atomic_add(Acc_ptr + channel * D * H * W + voxel, logit * g, mask=inside, sem="relaxed")
    elif HAS_WEIGHTS:
        tl.atomic_add(W_ptr + voxel, g, mask=inside, sem="relaxed")


def _check(t: torch.Tensor, name: str, ndim: int, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} must be on the accumulator's device {device}, got {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous, got strides {t.stride()}")


def accumulate_tiles(
    accumulator: torch.Tensor,
    weights: torch.Tensor | None,
    tiles: torch.Tensor,
    offsets: torch.Tensor,
    importance_map: torch.Tensor | None,
) -> None:
    """Adds ``tiles * importance_map`` into ``accumulator`` and ``importance_map`` into ``weights``.

    Args:
        accumulator: float32 ``(C, D, H, W)``, updated in place.
        weights: float32 ``(D, H, W)``, updated in place, or None to skip the weight map.
        tiles: ``(B, C, d, h, w)`` float16, bfloat16 or float32.
        offsets: int64 ``(B, 3)``, the ``(z, y, x)`` start of each tile in the image; every tile must
            lie inside the image (not checked here).
        importance_map: float32 ``(d, h, w)``, or None for weight 1 everywhere.
    """
    device = accumulator.device
    _check(accumulator, "accumulator", 4, device)
    _check(tiles, "tiles", 5, device)
    _check(offsets, "offsets", 2, device)
    if accumulator.dtype != torch.float32:
        raise ValueError(f"accumulator must be float32, got {accumulator.dtype}")
    if tiles.dtype not in TILE_DTYPES:
        raise ValueError(f"tiles must be float16, bfloat16 or float32, got {tiles.dtype}")
    if offsets.dtype != torch.int64 or tuple(offsets.shape) != (tiles.shape[0], 3):
        raise ValueError(f"offsets must be int64 ({tiles.shape[0]}, 3), got {offsets.dtype} {tuple(offsets.shape)}")
    C, D, H, W = accumulator.shape
    B, tc, td, th, tw = tiles.shape
    if tc != C:
        raise ValueError(f"tiles have {tc} channels but the accumulator has {C}")
    if weights is not None:
        _check(weights, "weights", 3, device)
        if weights.dtype != torch.float32 or tuple(weights.shape) != (D, H, W):
            raise ValueError(f"weights must be float32 {(D, H, W)}, got {weights.dtype} {tuple(weights.shape)}")
    if importance_map is not None:
        _check(importance_map, "importance_map", 3, device)
        if importance_map.dtype != torch.float32 or tuple(importance_map.shape) != (td, th, tw):
            raise ValueError(
                f"importance_map must be float32 {(td, th, tw)}, got {importance_map.dtype} {tuple(importance_map.shape)}"
            )
    tile_voxels = td * th * tw
    if B == 0 or C == 0 or tile_voxels == 0:
        return
    grid = (C + (weights is not None), B, triton.cdiv(tile_voxels, _BLOCK_SIZE))
    _accumulate_kernel[grid](
        accumulator,
        weights if weights is not None else accumulator,
        tiles,
        offsets,
        importance_map if importance_map is not None else accumulator,
        C,
        D,
        H,
        W,
        td,
        th,
        tw,
        HAS_WEIGHTS=weights is not None,
        HAS_IMPORTANCE=importance_map is not None,
        BLOCK_SIZE=_BLOCK_SIZE,
        num_warps=4,
    )
