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

from fastseg.io.format_base import (  # noqa: F401 -- Role and ImageFormat are part of this module's surface
    NATURAL_ENDINGS,
    SITK_ENDINGS,
    SUPPORTED_FILE_ENDINGS,
    TIFF_ENDINGS,
    ImageFormat,
    Role,
    split_ending,
)

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
    if ending in SITK_ENDINGS:
        from fastseg.io.sitk_format import SimpleITKFormat

        return SimpleITKFormat()
    if ending in NATURAL_ENDINGS:
        from fastseg.io.natural2d import NaturalImage2DFormat

        return NaturalImage2DFormat()
    if ending in TIFF_ENDINGS:
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
