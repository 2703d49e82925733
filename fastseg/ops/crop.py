"""Cropping to the nonzero region, with nnU-Net's semantics.

nnU-Net's `crop_to_nonzero`: the nonzero mask is "any channel != 0" with its holes filled
(`binary_fill_holes`, 6-connectivity), the crop is the mask's bounding box (the whole image when
the mask is empty), and in the cropped segmentation every background voxel outside the mask
becomes -1 (that region is what `use_mask_for_norm` excludes from normalization).

Two observations make this cheap:
- Filling holes never changes the bounding box: a hole is a background component that does not
  touch the image border, and everything outside the nonzero voxels' bounding box is background
  connected to the border. So the box comes from the raw mask (three axis projections), and holes
  are filled inside the box only.
- Inside the box, a background component touching the box's faces touches the image border or the
  all-background shell around the box, so it is "outside"; every other background component is a
  hole. One native 6-connected labelling of the box's background finds them (skipped entirely
  when the box holds no background, the common case for CT).
"""

from __future__ import annotations

import numpy as np

from fastseg.ops.components import fill_holes as ops_fill_holes

#: Value written into the cropped segmentation outside the nonzero mask.
OUTSIDE_LABEL = -1


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """True where any channel of `data` (C, *spatial) is nonzero (holes not filled)."""
    if data.ndim not in (3, 4):
        raise ValueError(f"data must be (C, z, y, x) or (C, y, x), got shape {data.shape}")
    mask = data[0] != 0
    for c in range(1, data.shape[0]):
        mask |= data[c] != 0
    return mask


def bounding_box(mask: np.ndarray) -> list[list[int]]:
    """Half-open [start, end) per axis of the True voxels; the whole array when there are none."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        box.append([int(hits[0]), int(hits[-1]) + 1] if hits.size else [0, int(mask.shape[axis])])
    return box


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """`scipy.ndimage.binary_fill_holes` semantics (6-connectivity), by the native labelling."""
    if mask.all():
        return mask
    return ops_fill_holes(mask)


def box_slices(box: list[list[int]]) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)


def crop_to_nonzero(
    data: np.ndarray, seg: np.ndarray | None = None, outside_label: int = OUTSIDE_LABEL
) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Crops data and segmentation to the nonzero region.

    Args:
        data: (C, z, y, x) image (any dtype); not modified.
        seg: (1, z, y, x) integer segmentation with data's spatial shape, or None (a test case).
        outside_label: written into the cropped segmentation where it is 0 outside the filled
            nonzero mask (default -1).

    Returns:
        (cropped data: a view of `data`, cropped segmentation: a new array (int8 when `seg` is
        None), bbox: [[start, end) per spatial axis]).
    """
    if seg is not None and tuple(seg.shape[1:]) != tuple(data.shape[1:]):
        raise ValueError(f"segmentation shape {seg.shape[1:]} does not match image shape {data.shape[1:]}")
    raw = nonzero_mask(data)
    box = bounding_box(raw)
    sl = box_slices(box)
    mask = fill_holes(np.ascontiguousarray(raw[sl]))
    cropped = data[(slice(None),) + sl]
    if seg is None:
        out = np.where(mask, np.int8(0), np.int8(outside_label))[None]
    else:
        out = np.array(seg[(slice(None),) + sl], copy=True)
        if not mask.all():
            out[(out == 0) & ~mask[None]] = outside_label
    return cropped, out, box
