"""Memory estimate of preprocessing one case, for the worker pool's budget (`fastseg.runtime.workers`).

Estimates, not measurements: they only need to be the right order of magnitude so that a few very
large cases run with less concurrency instead of exhausting RAM.
"""

from __future__ import annotations

from collections.abc import Sequence


def preprocess_bytes(channels: int, voxels_before: int, voxels_after: Sequence[int]) -> int:
    """Peak bytes of preprocessing one case into the configurations whose resampled sizes are
    `voxels_after`: the float32 image and its cropped, normalized copy, the segmentation with its
    masks, and per configuration the resampled image (plus one axis pass in flight), the resampled
    segmentation and the class-location index."""
    base = 4 * channels * voxels_before * 2 + 6 * voxels_before
    largest = max(voxels_after, default=voxels_before)
    return int(base + 4 * channels * largest * 2 + 12 * largest)
