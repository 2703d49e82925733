"""Foreground locations per class: where the training loader centres its oversampled patches.

Which classes (nnU-Net's LabelManager rules): the foreground labels (all labels except background
and the ignore label), or the foreground regions when dataset.json defines regions (label values
that are lists of more than one label). With an ignore label, one more entry collects the annotated
voxels: the region (-1, *all labels) -- background and the outside-the-mask -1 included.

How many and which voxels (nnU-Net's `_sample_foreground_locations` count rule): a class with `n`
voxels keeps `max(min(10000, n), ceil(0.01 * n))` of them, drawn without replacement by
`numpy.random.RandomState(1234).choice(n, k, replace=False)` -- one generator for the case, drawing
for the classes in order, and not drawing for absent classes. The `n` voxels of a class are indexed
label by label (a region's labels in the order listed), each label's voxels in C order, so the same
generator state picks the same voxels as nnU-Net.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: nnU-Net's sampling constants.
SAMPLING_SEED = 1234
MIN_SAMPLES = 10000
MIN_COVERAGE = 0.01

_ARGSORT_ABOVE = 8  # more requested labels than this: one stable sort instead of a scan per label


def _label_values(value: Any) -> list[int]:
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def _is_background(value: Any) -> bool:
    return all(v == 0 for v in _label_values(value))


def classes_to_sample(labels: Mapping[str, Any]) -> list[int | tuple[int, ...]]:
    """The classes (ints) or regions (tuples) whose locations are collected, in nnU-Net's order.

    Args:
        labels: dataset.json "labels": name -> label value or list of label values (a region);
            the name "ignore" marks the ignore label.
    """
    if "background" not in labels or _label_values(labels["background"]) != [0]:
        raise ValueError(f"dataset.json labels must declare background as 0, got {dict(labels)}")
    entries = {k: v for k, v in labels.items() if k != "ignore"}
    all_labels = sorted({v for value in entries.values() for v in _label_values(value)})
    has_regions = any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values())
    if has_regions:
        classes: list = [
            tuple(int(x) for x in v) if isinstance(v, (list, tuple)) else int(v)
            for v in entries.values()
            if not _is_background(v)
        ]
    else:
        classes = [v for v in all_labels if v != 0]
    ignore = labels.get("ignore")
    if ignore is not None:
        if isinstance(ignore, (list, tuple)):
            raise ValueError(f"the ignore label must be a single integer, got {ignore!r}")
        if int(ignore) != max(all_labels) + 1:
            raise ValueError(f"the ignore label must be the highest label ({max(all_labels) + 1}), got {ignore}")
        classes.append(tuple([-1] + all_labels))
    return classes


class _Index:
    """Flat C-order indices of each requested label's voxels."""

    def __init__(self, flat: np.ndarray, wanted: Sequence[int]) -> None:
        self.flat = flat
        self.by_label: dict[int, np.ndarray] = {}
        if len(wanted) > _ARGSORT_ABOVE:
            order = np.argsort(flat, kind="stable")  # radix sort for 8/16-bit labels; stable keeps C order
            ordered = flat[order]
            for lab in wanted:
                lo, hi = np.searchsorted(ordered, lab, "left"), np.searchsorted(ordered, lab, "right")
                if hi > lo:
                    self.by_label[lab] = order[lo:hi]
        else:
            for lab in wanted:
                idx = np.flatnonzero(flat == lab)
                if idx.size:
                    self.by_label[lab] = idx


def sample_class_locations(
    seg: np.ndarray,
    classes: Sequence[int | tuple[int, ...]],
    seed: int = SAMPLING_SEED,
    min_num_samples: int = MIN_SAMPLES,
    min_percent_coverage: float = MIN_COVERAGE,
) -> dict[int | tuple[int, ...], np.ndarray | list]:
    """Samples voxel coordinates of each class or region.

    Args:
        seg: (1, z, y, x) integer segmentation (-1 outside the nonzero mask is fine).
        classes: labels (int) and regions (tuple of labels), e.g. from `classes_to_sample`.
        seed: seed of the case's generator (nnU-Net: 1234).
        min_num_samples: samples per class when the class has more voxels (default 10000).
        min_percent_coverage: at least this fraction of a class's voxels (default 0.01).

    Returns:
        class -> (k, 1 + ndim) int64 array of (0, z, y, x) rows, or [] for an absent class.
    """
    if seg.ndim < 2 or seg.shape[0] != 1:
        raise ValueError(f"seg must be (1, *spatial), got shape {seg.shape}")
    if seg.dtype.kind not in "iu":
        raise ValueError(f"seg must hold integer labels, got dtype {seg.dtype}")
    keys = [tuple(int(x) for x in c) if isinstance(c, (list, tuple)) else int(c) for c in classes]
    wanted = sorted({lab for k in keys for lab in (k if isinstance(k, tuple) else (k,))})
    index = _Index(np.ascontiguousarray(seg).reshape(-1), wanted)
    rng = np.random.RandomState(seed)
    spatial = seg.shape[1:]
    out: dict = {}
    for key in keys:
        parts = [index.by_label[lab] for lab in (key if isinstance(key, tuple) else (key,)) if lab in index.by_label]
        total = int(sum(p.size for p in parts))
        if total == 0:
            out[key] = []
            continue
        count = max(min(min_num_samples, total), int(np.ceil(total * min_percent_coverage)))
        offsets = rng.choice(total, count, replace=False)
        members = parts[0] if len(parts) == 1 else np.concatenate(parts)
        coords = np.unravel_index(members[offsets], spatial)
        rows = np.empty((count, 1 + len(spatial)), dtype=np.int64)
        rows[:, 0] = 0
        for axis, c in enumerate(coords):
            rows[:, axis + 1] = c
        out[key] = rows
    return out
