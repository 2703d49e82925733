"""The two exceptions `fastseg.io` raises for bad input.

Both derive from `ValueError`, so callers that only know "the input was wrong" can catch that; the
CLI catches them and prints the message, which always names the file and says what to do.
"""

from __future__ import annotations


class ImageFileError(ValueError):
    """A file that cannot be read as an image or segmentation, or whose content is unusable
    (truncated, NaN labels, channels whose geometry disagrees)."""


class DatasetError(ValueError):
    """A raw dataset whose layout or dataset.json is wrong (missing keys, missing files, bad labels)."""
