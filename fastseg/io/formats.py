"""Which image format reads and writes a file, chosen by its file ending.

Each format is a small object with `read(path, role)` and `write(array, path, properties, role)`:

============================  ===============================================  ==========================
endings                       format                                           nnU-Net counterpart
============================  ===============================================  ==========================
.nii.gz .nii .nrrd .mha .gipl `SimpleITKFormat` (geometry in `sitk_stuff`)      SimpleITKIO (NibabelIO for .nii)
.png .bmp                     `NaturalImage2DFormat` (C, 1, y, x), [999, 1, 1]  NaturalImage2DIO
.tif .tiff                    `TiffFormat`: 2D pages as natural images, 3D      NaturalImage2DIO / Tiff3DIO
                              stacks with a `<case>.json` spacing sidecar
============================  ===============================================  ==========================

`read` returns the file's own dtype, laid out (C, z, y, x); `fastseg.io.images` stacks channels and
casts. `role` is "image" or "seg": segmentations are single-channel, palette PNGs keep their indices,
and the TIFF sidecar of an image drops the `_XXXX` channel suffix.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

Role = Literal["image", "seg"]

_SITK_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".gipl")
_NATURAL_ENDINGS = (".png", ".bmp")
_TIFF_ENDINGS = (".tif", ".tiff")

#: Every file ending fastseg reads and writes, longest first so `.nii.gz` wins over `.gz`.
SUPPORTED_FILE_ENDINGS = tuple(sorted(_SITK_ENDINGS + _NATURAL_ENDINGS + _TIFF_ENDINGS, key=len, reverse=True))


class ImageFormat(Protocol):
    """A reader/writer for one family of file endings."""

    name: str
    file_endings: tuple[str, ...]

    def read(self, path: Path, role: Role) -> tuple[np.ndarray, dict]:
        """One file -> (array (C, z, y, x) in the file's dtype, properties with at least 'spacing')."""
        ...

    def write(self, array: np.ndarray, path: Path, properties: dict, role: Role) -> None:
        """Writes (z, y, x) or (y, x) (natural images also (C, y, x) with C in 3, 4), atomically."""
        ...


def split_ending(path: str | os.PathLike) -> tuple[str, str]:
    """Splits a file name into (stem, ending), recognising the supported endings case-insensitively.

    Args:
        path: a file path or name.

    Returns:
        `("case_0000", ".nii.gz")` for `.../case_0000.nii.gz`. An unsupported name splits at its
        last dot (`("notes", ".txt")`), or returns `(name, "")` when it has none.
    """
    name = Path(path).name
    lower = name.lower()
    for ending in SUPPORTED_FILE_ENDINGS:
        if lower.endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)], name[-len(ending) :]
    stem, dot, ext = name.rpartition(".")
    return (stem, dot + ext) if dot and stem else (name, "")


def reader_for(file_ending: str) -> ImageFormat:
    """The format that reads and writes files with this ending.

    Args:
        file_ending: with the leading dot, as dataset.json's `file_ending` spells it (".nii.gz",
            ".png"); matched case-insensitively.

    Returns:
        An `ImageFormat`.

    Raises:
        ValueError: for an ending no format supports; the message lists the supported ones.
    """
    ending = str(file_ending).lower()
    if ending in _SITK_ENDINGS:
        from fastseg.io.sitk_format import SimpleITKFormat

        return SimpleITKFormat()
    if ending in _NATURAL_ENDINGS:
        from fastseg.io.natural2d import NaturalImage2DFormat

        return NaturalImage2DFormat()
    if ending in _TIFF_ENDINGS:
        from fastseg.io.tiff import TiffFormat

        return TiffFormat()
    close = difflib.get_close_matches(ending if ending.startswith(".") else "." + ending, SUPPORTED_FILE_ENDINGS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"unsupported file ending {file_ending!r}; fastseg reads {', '.join(SUPPORTED_FILE_ENDINGS)} "
        f"(convert other formats to .nii.gz first, e.g. with `fastseg convert dicom`).{hint}"
    )


def format_of(path: str | os.PathLike) -> ImageFormat:
    """The format for `path`, by its ending (see `reader_for`)."""
    return reader_for(split_ending(path)[1])
