"""U-Net topology from a patch size and a spacing: how often each axis is pooled, the pooling and
convolution kernel sizes per stage, and the patch size rounded up to what the pooling can divide.

The rule (nnU-Net's `get_pool_and_conv_props`, re-derived):

    repeat:
        candidates = axes whose feature map is still >= 2 * min_edge voxels
        keep those whose current spacing is < 2 x the finest current spacing among the candidates
        a single remaining axis is pooled only while its feature map is >= 3 * min_edge
        stop when no axis remains
        kernel size of an axis becomes 3 (and stays 3) once its spacing is < 2 x the finest spacing
        pool the kept axes by 2: their spacing doubles, their feature map halves (rounded up)

    The bottleneck always gets a 3 x 3 (x 3) kernel. The patch size is then padded up to a multiple of
    2 ** (number of poolings) per axis.

Sizes are handled as floats: nnU-Net clips the initial patch size to the (possibly fractional) median
shape, and a fractional size pads differently from its integer part.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Topology:
    """A U-Net's resolution stages for one patch size.

    Attributes:
        num_pool_per_axis: how often each spatial axis is downsampled by 2.
        pool_kernel_sizes: per stage, the stride of each axis; the first stage is all ones.
        conv_kernel_sizes: per stage, the convolution kernel size of each axis (1 or 3).
        patch_size: the patch size padded to a multiple of `divisible_by`.
        divisible_by: 2 ** num_pool_per_axis.
    """

    num_pool_per_axis: tuple[int, ...]
    pool_kernel_sizes: tuple[tuple[int, ...], ...]
    conv_kernel_sizes: tuple[tuple[int, ...], ...]
    patch_size: tuple[int, ...]
    divisible_by: tuple[int, ...]

    @property
    def num_stages(self) -> int:
        return len(self.pool_kernel_sizes)


def pad_to_multiple(shape: Sequence[float], divisor: Sequence[int]) -> tuple[int, ...]:
    """Rounds each entry of `shape` up to the next multiple of `divisor` (an exact multiple stays),
    truncating the result to int as nnU-Net's `pad_shape` does."""
    if len(shape) != len(divisor):
        raise ValueError(f"shape and divisor must have equal lengths, got {list(shape)} and {list(divisor)}")
    out = []
    for s, d in zip(shape, divisor):
        rem = s % d
        out.append(int(s if rem == 0 else s + d - rem))
    return tuple(out)


def pool_and_conv_props(
    spacing: Sequence[float], patch_size: Sequence[float], min_feature_map_size: int = 4, max_numpool: int = 999999
) -> Topology:
    """Pooling and convolution topology of nnU-Net's U-Nets for one spacing and patch size.

    Args:
        spacing: target spacing per spatial axis (2 or 3 entries).
        patch_size: the patch size per axis (ints, or floats where it was clipped to a median shape).
        min_feature_map_size: smallest edge length of a bottleneck feature map (nnU-Net: 4).
        max_numpool: most poolings per axis (nnU-Net's planners: 999999, i.e. unlimited).

    Returns:
        The Topology.
    """
    if len(spacing) != len(patch_size):
        raise ValueError(f"spacing and patch_size must have equal lengths, got {list(spacing)} and {list(patch_size)}")
    if any(s <= 0 for s in spacing):
        raise ValueError(f"spacing must be positive, got {list(spacing)}")
    dim = len(spacing)
    cur_spacing = [float(s) for s in spacing]
    cur_size = [float(s) for s in patch_size]
    num_pool = [0] * dim
    kernel = [1] * dim
    pools: list[tuple[int, ...]] = [(1,) * dim]
    convs: list[tuple[int, ...]] = []
    while True:
        axes = [a for a in range(dim) if cur_size[a] >= 2 * min_feature_map_size]
        if not axes:
            break
        finest = min(cur_spacing[a] for a in axes)
        axes = [a for a in axes if cur_spacing[a] / finest < 2 and num_pool[a] < max_numpool]
        if len(axes) == 1 and cur_size[axes[0]] < 3 * min_feature_map_size:
            break
        if not axes:
            break
        finest_all = min(cur_spacing)
        kernel = [3 if k == 3 or cur_spacing[d] / finest_all < 2 else 1 for d, k in enumerate(kernel)]
        stride = [1] * dim
        for a in axes:
            stride[a] = 2
            num_pool[a] += 1
            cur_spacing[a] *= 2
            cur_size[a] = math.ceil(cur_size[a] / 2)
        pools.append(tuple(stride))
        convs.append(tuple(kernel))
    convs.append((3,) * dim)
    divisible = tuple(2**n for n in num_pool)
    return Topology(
        num_pool_per_axis=tuple(num_pool),
        pool_kernel_sizes=tuple(pools),
        conv_kernel_sizes=tuple(convs),
        patch_size=pad_to_multiple(patch_size, divisible),
        divisible_by=divisible,
    )
