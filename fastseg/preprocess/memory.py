"""Memory estimates of per-case work, for the scheduler's budget (`fastseg.preprocess.scheduler`).

Estimates, not measurements: they only need to be the right order of magnitude so that a few very
large cases run with less concurrency instead of exhausting RAM.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

logger = logging.getLogger(__name__)


def image_voxels(path: str | os.PathLike) -> int:
    """Voxels (times components) of an image file, from its header when SimpleITK can read one,
    else a guess from the file size (two voxels per byte: compressed 16-bit data)."""
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


def preprocess_bytes(channels: int, voxels_before: int, voxels_after: Sequence[int]) -> int:
    """Peak bytes of preprocessing one case into the configurations whose resampled sizes are
    `voxels_after`: the float32 image and its cropped, normalized copy, the segmentation with its
    masks, and per configuration the resampled image (plus one axis pass in flight), the resampled
    segmentation and the class-location index."""
    base = 4 * channels * voxels_before * 2 + 6 * voxels_before
    largest = max(voxels_after, default=voxels_before)
    return int(base + 4 * channels * largest * 2 + 12 * largest)
