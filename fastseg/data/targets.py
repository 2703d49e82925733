"""Training targets from a batch's segmentation: regions and deep-supervision scales, on the device.

- Regions (region-based datasets): one channel per region, 1 where the voxel's label is one of the
  region's labels (nnU-Net's `ConvertSegmentationToRegionsTransform`; the ignore label, when there
  is one, becomes a last channel of its own, as nnU-Net appends it to the regions).
- Deep supervision: the network's outputs below full resolution are scored against the target
  resized to their shape, `round(size * scale)` per axis, by nearest-exact sampling (PyTorch's
  `nearest-exact`, which batchgeneratorsv2's `DownsampleSegForDSTransform` uses): output voxel i
  takes input voxel min(floor((i + 0.5) * in / out), in - 1). Done here by indexing, so integer
  targets need no float copy; evenly spaced indices (an integer factor) are a strided view, copied
  once per scale (index_select along an inner axis costs ~10x more on the CPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def deep_supervision_scales(configuration: dict) -> list[list[float]]:
    """nnU-Net's scales of the network's outputs: 1 / cumulative product of the strides (pooling),
    the coarsest stage left out; [[1, 1, 1], [1, 0.5, 0.5], ...]."""
    arch = configuration.get("architecture", {}).get("arch_kwargs", {})
    strides = arch.get("strides") or configuration.get("pool_op_kernel_sizes")
    if not strides:
        raise ValueError("the configuration names no strides (architecture.arch_kwargs.strides or pool_op_kernel_sizes)")
    cumulative = np.cumprod(np.vstack(strides), axis=0)
    return [list(map(float, 1 / row)) for row in cumulative][:-1]


def nearest_exact_indices(size_in: int, size_out: int) -> np.ndarray:
    """Source index of each output index of a nearest-exact resize along one axis."""
    return np.minimum(np.floor((np.arange(size_out) + 0.5) * (size_in / size_out)).astype(np.int64), size_in - 1)


def downsample_targets(target: Any, scales: Sequence[Sequence[float]]) -> list:
    """The target (B, C, *spatial torch tensor) at every scale (a list, full resolution first when
    the first scale is all ones), by nearest-exact sampling on the target's device."""
    import torch

    spatial = target.shape[2:]
    out = []
    for scale in scales:
        if len(scale) != len(spatial):
            raise ValueError(f"scale {list(scale)} does not fit a target of spatial shape {tuple(spatial)}")
        if all(s == 1 for s in scale):
            out.append(target)
            continue
        resized = target
        for axis, (n, s) in enumerate(zip(spatial, scale)):
            m = round(n * s)
            if m != n:
                indices = nearest_exact_indices(n, m)
                step = indices[1] - indices[0] if m > 1 else 1
                if step > 0 and np.array_equal(indices, indices[0] + step * np.arange(m)):
                    # evenly spaced (an integer factor, the usual case): a strided view, copied once below
                    view = [slice(None)] * resized.ndim
                    view[2 + axis] = slice(int(indices[0]), int(indices[-1]) + 1, int(step))
                    resized = resized[tuple(view)]
                else:
                    resized = resized.index_select(2 + axis, torch.as_tensor(indices, device=target.device))
        out.append(resized.contiguous())
    return out


def to_regions(seg: Any, regions: Sequence[Sequence[int] | int], ignore_label: int | None = None) -> Any:
    """(B, 1, *spatial) labels -> (B, R, *spatial) boolean region masks (as nnU-Net passes them to its loss) (plus the ignore label's
    channel last, when given)."""
    import torch

    channels = [list(r) if isinstance(r, (list, tuple)) else [int(r)] for r in regions]
    if ignore_label is not None:
        channels.append([int(ignore_label)])
    masks = []
    for members in channels:
        mask = torch.zeros_like(seg[:, 0], dtype=torch.bool)
        for m in members:
            mask |= seg[:, 0] == m
        masks.append(mask)
    return torch.stack(masks, dim=1)
