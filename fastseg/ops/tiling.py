"""Sliding-window tiling: where the tiles go and how much each voxel of a tile counts.

Both follow nnU-Net's predictor (``compute_steps_for_sliding_window`` and ``compute_gaussian``), so
that a fastseg prediction and an nnU-Net prediction of the same network tile an image identically:

* Steps. Along an axis of ``n`` voxels a tile of ``t`` voxels moves by at most ``t * step_size``:
  ``k = ceil((n - t) / (t * step_size)) + 1`` tiles, spread evenly from 0 to ``n - t``; tile ``i``
  starts at ``round(i * (n - t) / (k - 1))`` (round half to even, as numpy rounds). One tile at 0
  when ``n == t``. The image must be at least as large as the tile on every axis: nnU-Net pads it to
  the tile size first, and so must the caller.
* Importance. A separable Gaussian centred on voxel ``t // 2`` of each axis with standard deviation
  ``t * sigma_scale``, cut off where scipy's ``gaussian_filter`` cuts its kernel
  (``int(4 * sigma + 0.5)`` voxels from the centre), scaled so that its maximum is
  ``value_scaling_factor``; values that are zero (cut off, or below the output dtype's range) are
  raised to the smallest non-zero value, so that no voxel of a tile has weight 0.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["gaussian_importance_map", "sliding_window_offsets", "sliding_window_steps"]

# scipy.ndimage.gaussian_filter's default truncate: the kernel reaches this many sigmas.
_TRUNCATE = 4.0


def _sizes(name: str, values: Sequence[int]) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in values)
    except TypeError as err:
        raise TypeError(f"{name} must be a sequence of ints, got {values!r}") from err
    if not sizes or any(s <= 0 for s in sizes) or any(s != v for s, v in zip(sizes, values)):
        raise ValueError(f"{name} must hold positive integers, got {tuple(values)!r}")
    return sizes


def sliding_window_steps(
    image_size: Sequence[int], tile_size: Sequence[int], step_size: float = 0.5
) -> list[list[int]]:
    """Tile start positions per axis, as nnU-Net's ``compute_steps_for_sliding_window``.

    Args:
        image_size: spatial size of the (padded) image, one positive int per axis.
        tile_size: spatial size of a tile, same length, no entry larger than the image's.
        step_size: largest step between tiles as a fraction of the tile size, in (0, 1]
            (default 0.5; nnU-Net's ``tile_step_size``).

    Returns:
        One list of start indices per axis, ascending, first 0 and last ``image - tile``.

    Raises:
        ValueError: lengths differ, sizes are not positive, a tile is larger than the image (pad the
            image to the tile size first, as nnU-Net does), or step_size is outside (0, 1].
    """
    image = _sizes("image_size", image_size)
    tile = _sizes("tile_size", tile_size)
    if len(image) != len(tile):
        raise ValueError(f"image_size {image} and tile_size {tile} must have the same length")
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    larger = [a for a, (n, t) in enumerate(zip(image, tile)) if t > n]
    if larger:
        raise ValueError(
            f"tile_size {tile} is larger than image_size {image} along axes {larger}; pad the image to at least "
            "the tile size first (nnU-Net pads with zeros)"
        )
    steps = []
    for n, t in zip(image, tile):
        count = math.ceil((n - t) / (t * step_size)) + 1
        if count == 1:
            steps.append([0])
            continue
        stride = (n - t) / (count - 1)
        steps.append([round(stride * i) for i in range(count)])  # round half to even, like np.round
    return steps


def sliding_window_offsets(image_size: Sequence[int], tile_size: Sequence[int], step_size: float = 0.5) -> np.ndarray:
    """Start corner of every tile, in nnU-Net's order (the last axis fastest).

    Args:
        image_size, tile_size, step_size: as for :func:`sliding_window_steps`.

    Returns:
        int64 array ``(n_tiles, ndim)``: the offsets :func:`fastseg.ops.accumulate_tiles` takes.
    """
    steps = sliding_window_steps(image_size, tile_size, step_size)
    return np.array(list(itertools.product(*steps)), dtype=np.int64).reshape(-1, len(steps))


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
    """scipy's normalised Gaussian kernel, sampled at the offsets of a line of `size` voxels from its
    centre ``size // 2``; zero beyond the kernel's radius."""
    radius = int(_TRUNCATE * sigma + 0.5)
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 / (sigma * sigma) * taps.astype(np.float64) ** 2)
    kernel /= kernel.sum()
    offsets = np.arange(size) - size // 2
    line = np.zeros(size, dtype=np.float64)
    inside = np.abs(offsets) <= radius
    line[inside] = kernel[offsets[inside] + radius]
    return line


def gaussian_importance_map(
    tile_size: Sequence[int],
    sigma_scale: float = 1.0 / 8,
    value_scaling_factor: float = 10.0,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Gaussian importance of each tile voxel, as nnU-Net's ``compute_gaussian``.

    Args:
        tile_size: spatial tile size, positive ints (2 or 3 entries in practice, any number works).
        sigma_scale: standard deviation per axis as a fraction of the tile size (default 1/8).
        value_scaling_factor: value at the centre (default 10, what nnU-Net's predictor passes).
        dtype: float dtype of the result (default float32, what fastseg accumulates with; nnU-Net's
            own default is float16, where more corner values underflow and are raised).

    Returns:
        numpy array of ``tile_size`` and ``dtype``; strictly positive: zeros are replaced by the
        smallest non-zero value of the map.

    Raises:
        ValueError: non-positive sizes, sigma_scale or value_scaling_factor, or a non-float dtype.
    """
    tile = _sizes("tile_size", tile_size)
    if not (math.isfinite(sigma_scale) and sigma_scale > 0):
        raise ValueError(f"sigma_scale must be positive and finite, got {sigma_scale}")
    if not (math.isfinite(value_scaling_factor) and value_scaling_factor > 0):
        raise ValueError(f"value_scaling_factor must be positive and finite, got {value_scaling_factor}")
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating-point type, got {dtype}")

    # gaussian_filter of a unit impulse is the product of the per-axis kernels, formed axis by axis.
    gaussian = np.ones((), dtype=np.float64)
    for t in tile:
        gaussian = np.multiply.outer(gaussian, _gaussian_1d(t, t * sigma_scale))
    gaussian /= gaussian.max() / value_scaling_factor
    # nnU-Net converts with torch, which rounds float64 to float16 through float32; so do we.
    out = gaussian.astype(np.float32).astype(dtype) if dtype.itemsize < 4 else gaussian.astype(dtype)
    zero = out == 0
    if zero.any():
        out[zero] = out[~zero].min()
    return out
