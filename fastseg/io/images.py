"""Reading one case's images and segmentation, and writing results back onto their grid.

This is the API the rest of fastseg builds on:

- `read_images(paths)` -> float32 (C, z, y, x) and properties ('spacing' (z, y, x), plus what the
  writer needs: 'sitk_stuff' for SimpleITK formats);
- `read_seg(path)` -> integer (1, z, y, x) and the same properties;
- `write_seg(seg, path, properties)` / `write_image(image, path, properties)`: atomic, restoring the
  geometry recorded in `properties` (those from the reader, or nnU-Net's own properties files).

2D images read as (C, 1, y, x) with spacing (999, 1, 1) (natural images) or (999 * max, sy, sx)
(2D SimpleITK files), as nnU-Net reads them. The format is chosen by file ending (`reader_for`).
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fastseg.io.dtypes import to_label_array
from fastseg.io.errors import ImageFileError
from fastseg.io.formats import format_of, split_ending
from fastseg.io.geometry import compare_geometry

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


def read_images(paths: Sequence[PathLike]) -> tuple[np.ndarray, dict]:
    """Reads the channel files of one case into one float32 array.

    Args:
        paths: the case's files in channel order (`case_0000.nii.gz`, `case_0001.nii.gz`, ...), all
            with the same file ending. An RGB(A) natural image contributes 3 (4) channels.

    Returns:
        `(data, properties)`: data is float32 (C, z, y, x), 2D images (C, 1, y, x); properties are the
        first file's: 'spacing' [z, y, x] and, for SimpleITK formats, 'sitk_stuff' {'spacing',
        'origin', 'direction'} in SimpleITK order.

    Raises:
        ValueError: no paths, or paths with different file endings.
        ImageFileError: a file that cannot be read, or channels whose shapes or spacings differ
            (differing origins or directions are logged as warnings, as nnU-Net does).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("read_images needs at least one file, got an empty list")
    endings = {split_ending(p)[1].lower() for p in paths}
    if len(endings) != 1:
        raise ValueError(
            f"all channel files of a case must share one file ending, got {sorted(endings)} in {[p.name for p in paths]}"
        )
    arrays, props = [], []
    for p in paths:
        array, properties = format_of(p).read(p, "image")
        arrays.append(array)
        props.append(properties)
    errors = []
    for p, a, pr in zip(paths[1:], arrays[1:], props[1:]):
        for issue in compare_geometry(paths[0].name, arrays[0].shape[1:], props[0], p.name, a.shape[1:], pr):
            if issue.severity == "error":
                errors.append(issue.message)
            else:
                logger.warning("%s", issue.message)
    if errors:
        raise ImageFileError("channels of one case must share a grid: " + "; ".join(errors))
    return stack_channels(arrays), copy.deepcopy(props[0])


def stack_channels(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """The (c, z, y, x) arrays of a case's channel files (same spatial shape) as one float32
    (C, z, y, x) array, channels in file order: what `read_images` returns.

    Raises:
        ValueError: no arrays.
    """
    if not arrays:
        raise ValueError("stack_channels needs the arrays of at least one channel file, got none")
    out = np.empty((sum(a.shape[0] for a in arrays), *arrays[0].shape[1:]), dtype=np.float32)
    c = 0
    for a in arrays:
        out[c : c + a.shape[0]] = a
        c += a.shape[0]
    return out


def read_seg(path: PathLike) -> tuple[np.ndarray, dict]:
    """Reads a segmentation.

    Args:
        path: the label file (`labelsTr/case.nii.gz`).

    Returns:
        `(seg, properties)`: seg is (1, z, y, x), 2D (1, 1, y, x), int16, or int32 when a label
        leaves int16's range (nnU-Net returns float32; integers are exact and half the size);
        properties as in `read_images`.

    Raises:
        ImageFileError: unreadable file, more than one channel, NaN/Inf or non-integer values.
    """
    path = Path(path)
    seg, props = format_of(path).read(path, "seg")
    if seg.shape[0] != 1:
        raise ImageFileError(f"{path}: a segmentation must have one channel, got {seg.shape[0]} (a 4D file?)")
    return to_label_array(seg, str(path)), props


def _squeeze_channel(array: np.ndarray, what: str) -> np.ndarray:
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ValueError(f"{what} must be (z, y, x), (y, x) or (1, z, y, x); got shape {array.shape}")
        return array[0]
    if array.ndim not in (2, 3):
        raise ValueError(f"{what} must be (z, y, x), (y, x) or (1, z, y, x); got shape {array.shape}")
    return array


def write_seg(seg: np.ndarray, path: PathLike, properties: dict) -> None:
    """Writes a segmentation onto the grid described by `properties`, atomically.

    Args:
        seg: integer labels (z, y, x); 2D as (y, x) or (1, y, x); a leading channel axis of size 1
            (as `read_seg` returns) is accepted. Stored as uint8 when every label is below 255,
            else uint16 (nnU-Net's rule), else uint32 where the format allows.
        path: output file; its ending picks the format. The folder must exist.
        properties: from `read_images`/`read_seg` (or nnU-Net's properties): SimpleITK formats
            restore 'sitk_stuff' (or fall back to 'spacing' with origin 0 and identity direction),
            3D TIFF writes the 'spacing' sidecar, PNG needs nothing.

    Raises:
        ValueError: wrong shape, negative or non-integer labels, labels the format cannot hold.
    """
    path = Path(path)
    seg = _squeeze_channel(np.asarray(seg), "seg")
    format_of(path).write(seg, path, properties, "seg")


def write_image(image: np.ndarray, path: PathLike, properties: dict) -> None:
    """Writes one image channel onto the grid described by `properties`, atomically.

    Args:
        image: (z, y, x), 2D (y, x) or (1, y, x), or (1, z, y, x). The dtype is kept (float32
            probabilities, int16 CT), except bool -> uint8 and float16 -> float32. PNG/BMP store
            whole numbers only (uint8, PNG also uint16) and also take RGB(A) as (3|4, y, x).
        path: output file; its ending picks the format. The folder must exist.
        properties: as for `write_seg`.

    Raises:
        ValueError: wrong shape, or values the format cannot store.
    """
    path = Path(path)
    image = np.asarray(image)
    if not (image.ndim == 4 and image.shape[0] in (3, 4) and image.shape[1] == 1):
        image = _squeeze_channel(image, "image")
    format_of(path).write(image, path, properties, "image")


def image_voxels(path: str | os.PathLike) -> int:
    """Voxels (times components) of an image file, from its header when SimpleITK can read one
    (a NIfTI header is parsed here, which is faster), else a guess from the file size (two voxels
    per byte: compressed 16-bit data)."""
    from fastseg.io.integrity import nifti_voxel_count

    count = nifti_voxel_count(path)
    if count is not None:
        return count
    try:
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return int(math.prod(reader.GetSize()) * reader.GetNumberOfComponents())
    except (RuntimeError, OSError, ImportError):  # unsupported format or no header: fall back to the size
        try:
            return 2 * os.path.getsize(path)
        except OSError:
            return 0
