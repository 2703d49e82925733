"""The result type of component statistics, shared by the CPU path (fastseg.ops.components) and the
CUDA path (fastseg.ops._cuda_components), so that neither imports the other for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ComponentStats"]


@dataclass(frozen=True)
class ComponentStats:
    """Per-component statistics; row ``i`` describes label ``i + 1``.

    Attributes:
        counts: ``(n,)`` int64 voxel counts.
        bboxes: ``(n, 2 * ndim)`` int64 bounding boxes, starts then stops (exclusive), in axis order:
            ``(z0, y0, x0, z1, y1, x1)`` for 3D, ``(y0, x0, y1, x1)`` for 2D.
        values: ``(n,)`` value of the labelled image at each component's first voxel (its input label
            for multi-valued labelling), in the image's dtype; None when no image was given.

    Fields are numpy arrays or torch tensors, the kind (and device) of the labels.
    """

    counts: Any
    bboxes: Any
    values: Any = None

    def slices(self, label: int) -> tuple:
        """The bounding box of component ``label`` (1..n) as a tuple of slices, like scipy's find_objects."""
        row = self.bboxes[int(label) - 1]
        ndim = len(row) // 2
        return tuple(slice(int(row[a]), int(row[a + ndim])) for a in range(ndim))
