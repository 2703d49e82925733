"""Dtype rules for reading and writing segmentations and images.

Reading: segmentations come back as integers (int16, or int32 when a value leaves int16's range).
nnU-Net's readers return float32; integers are exact at any label value, take half the memory, and
every consumer (`==`, `> 0`, `np.unique`, resampling with `is_seg=True`) gives the same answer. A
float file whose values are not whole numbers, or that holds NaN/Inf, is refused instead of being
silently truncated.

Writing: segmentations are stored as uint8 when every value is below 255, else uint16 (nnU-Net's rule),
else uint32; images keep their dtype (bool becomes uint8 and float16 becomes float32, which no
format stores).
"""

from __future__ import annotations

import numpy as np

from fastseg.io.errors import ImageFileError

_INT16 = np.iinfo(np.int16)
_INT32 = np.iinfo(np.int32)


def to_label_array(array: np.ndarray, name: str) -> np.ndarray:
    """Casts a segmentation as read from a file to int16 (or int32 when needed).

    Args:
        array: the file's voxels, any numeric dtype.
        name: file name for error messages.

    Raises:
        ImageFileError: NaN/Inf, values that are not whole numbers, or values beyond int32.
    """
    if array.dtype == np.bool_:
        return array.astype(np.int16)
    if array.size == 0:
        return array.astype(np.int16)
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            n_nan = int(np.isnan(array).sum())
            n_inf = int(array.size - finite.sum() - n_nan)
            raise ImageFileError(
                f"{name}: segmentation holds {n_nan} NaN and {n_inf} Inf voxels; labels must be whole numbers "
                "(fix the file, e.g. replace NaN with 0)"
            )
        fractional = array != np.round(array)
        if fractional.any():
            example = float(array[fractional].flat[0])
            raise ImageFileError(
                f"{name}: segmentation holds non-integer values (e.g. {example:g}) in {int(fractional.sum())} voxels; "
                "labels must be whole numbers (was it resampled with linear interpolation? use nearest neighbour)"
            )
    elif array.dtype.kind not in "iu":
        raise ImageFileError(f"{name}: segmentation has dtype {array.dtype}; expected integer or float voxels")
    lo, hi = array.min(), array.max()
    if lo >= _INT16.min and hi <= _INT16.max:
        return array.astype(np.int16, copy=False)
    if lo >= _INT32.min and hi <= _INT32.max:
        return array.astype(np.int32, copy=False)
    raise ImageFileError(f"{name}: segmentation values span [{lo}, {hi}], beyond int32; labels must be small integers")


def seg_storage_dtype(seg: np.ndarray, max_dtype: type = np.uint32) -> np.dtype:
    """The unsigned dtype a segmentation is written with: uint8 below 255, else uint16, else uint32.

    Args:
        seg: integer-valued labels, none negative.
        max_dtype: the widest dtype the target format stores (PNG: uint16).

    Raises:
        ValueError: negative or non-integer labels, or labels the format cannot hold.
    """
    if seg.size == 0:
        return np.dtype(np.uint8)
    if seg.dtype.kind == "f" and (not np.isfinite(seg).all() or (seg != np.round(seg)).any()):
        raise ValueError("segmentation to write holds non-integer or non-finite values; argmax/round it first")
    lo, hi = seg.min(), seg.max()
    if lo < 0:
        raise ValueError(f"segmentation to write holds negative label {lo}; labels must be >= 0")
    if hi < 255:
        dtype = np.dtype(np.uint8)
    elif hi <= np.iinfo(np.uint16).max:
        dtype = np.dtype(np.uint16)
    elif hi <= np.iinfo(np.uint32).max:
        dtype = np.dtype(np.uint32)
    else:
        dtype = None
    if dtype is None or np.iinfo(dtype).max > np.iinfo(max_dtype).max:
        raise ValueError(
            f"segmentation to write has label {hi}, more than this format stores ({np.dtype(max_dtype).name}); "
            "write it as .nii.gz instead"
        )
    return dtype


def image_storage_array(image: np.ndarray) -> np.ndarray:
    """The array an image is written with: its own dtype, except bool -> uint8 and float16 -> float32."""
    if image.dtype == np.bool_:
        return image.astype(np.uint8)
    if image.dtype == np.float16:
        return image.astype(np.float32)
    if image.dtype.kind not in "iuf":
        raise ValueError(f"image to write has dtype {image.dtype}; expected integer or float voxels")
    return image
