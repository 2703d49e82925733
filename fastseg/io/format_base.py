"""What every image format module shares: the `ImageFormat` protocol, roles, and file endings.

The format modules (`sitk_format`, `natural2d`, `tiff`) import this module; `fastseg.io.formats`,
which picks a format by file ending, imports them. Nothing here imports a format module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

Role = Literal["image", "seg"]

SITK_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".gipl")
NATURAL_ENDINGS = (".png", ".bmp")
TIFF_ENDINGS = (".tif", ".tiff")

#: Every file ending fastseg reads and writes, longest first so `.nii.gz` wins over `.gz`.
SUPPORTED_FILE_ENDINGS = tuple(sorted(SITK_ENDINGS + NATURAL_ENDINGS + TIFF_ENDINGS, key=len, reverse=True))


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
