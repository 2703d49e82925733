"""Surface distances of one label or region: HD95, ASSD and normalized surface Dice (NSD), in mm.

    border(M)   = the voxels of mask M with a face neighbour outside M (or on the image's edge)
    d(v, B)     = Euclidean distance in mm (the case's spacing) from voxel v to the nearest voxel of B
    a           = [d(p, border(ref)) for p in border(pred)]     (prediction -> reference)
    b           = [d(r, border(pred)) for r in border(ref)]     (reference -> prediction)
    HD95        = max(95th percentile of a, 95th percentile of b)   (numpy's linear percentile)
    ASSD        = mean of a and b together
    NSD(tau)    = (#{a <= tau} + #{b <= tau}) / (len(a) + len(b))

The distances are exact nearest-neighbour distances between the two sets of border voxels (in mm,
the voxel indices scaled by the spacing), from one native pass per direction
(`fastseg._C.surface_distances`): each border voxel searches the other border's mask in boxes
that grow until the nearest voxel found is provably the nearest, or scans the other border's voxel
list when that is cheaper (far-away false positives). A voxel on or next to the other border -- most
of them, for a reasonable prediction -- costs a few lookups. `label_surface_metrics` computes them
for each label or region of a case on the bounding box of the label in both maps (one native pass
finds every label's box), widened by a voxel so that the box's own faces do not pass for the
image's edge. (Before: k-d trees of the border points, scipy's cKDTree, 2-4x slower and half a
second of importing scipy.spatial in each worker process; before that, exact Euclidean distance
transforms of the whole image, 1.1-1.5 s a label on 256^3.)

Empty masks: absent from both -> NaN for all three (left out of the means, as nnU-Net leaves out
Dice of absent classes); present in exactly one -> HD95 = ASSD = inf (there is no surface to be
near) and NSD = 0 (no surface element within any tolerance).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SURFACE_METRICS = ("HD95", "ASSD", "NSD")


def border(mask: np.ndarray) -> np.ndarray:
    """Voxels of `mask` with a face neighbour outside it; voxels on the image's edge count as border."""
    mask = np.asarray(mask, dtype=bool)
    inner = mask.copy()
    for axis in range(mask.ndim):
        n = mask.shape[axis]
        if n < 3:
            return mask.copy()  # every voxel touches the edge
        lo = [slice(None)] * mask.ndim
        hi = [slice(None)] * mask.ndim
        lo[axis], hi[axis] = slice(0, n - 1), slice(1, n)
        inner[tuple(hi)] &= mask[tuple(lo)]  # the neighbour before
        inner[tuple(lo)] &= mask[tuple(hi)]  # the neighbour after
        edge = [slice(None)] * mask.ndim
        edge[axis] = 0
        inner[tuple(edge)] = False
        edge[axis] = n - 1
        inner[tuple(edge)] = False
    return mask & ~inner


def surface_distances(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(a: prediction border -> reference border, b: reference border -> prediction border) in mm,
    float64, in the order of the border voxels (C order); masks of up to 3 axes, both non-empty."""
    from fastseg._native import cpu

    reference, prediction = np.asarray(reference, dtype=bool), np.asarray(prediction, dtype=bool)
    if reference.ndim > 3 or reference.shape != prediction.shape or len(spacing) != reference.ndim:
        raise ValueError(f"masks {reference.shape} and {prediction.shape} with spacing {list(spacing)} do not fit together")
    lead = (1,) * (3 - reference.ndim)  # missing axes of one voxel count for nothing
    spacing = [1.0] * len(lead) + [float(s) for s in spacing]
    ref = np.ascontiguousarray(reference.reshape(lead + reference.shape))
    pred = np.ascontiguousarray(prediction.reshape(lead + prediction.shape))
    a, b = cpu().surface_distances(ref, pred, spacing)
    return a, b


def surface_metrics(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float], tolerance_mm: float) -> dict[str, float]:
    """HD95, ASSD and NSD at `tolerance_mm` of two boolean masks on a grid of `spacing` (mm)."""
    if tolerance_mm < 0:
        raise ValueError(f"the NSD tolerance must be >= 0 mm, got {tolerance_mm}")
    if len(spacing) != reference.ndim or reference.shape != prediction.shape:
        raise ValueError(f"masks {reference.shape} and {prediction.shape} with spacing {list(spacing)} do not fit together")
    keep = [i for i, n in enumerate(reference.shape) if n > 1]  # a 2D image stored as (1, y, x) is 2D
    reference = reference.reshape([reference.shape[i] for i in keep])
    prediction = prediction.reshape([prediction.shape[i] for i in keep])
    spacing = [spacing[i] for i in keep]
    has_ref, has_pred = bool(np.any(reference)), bool(np.any(prediction))
    if not has_ref and not has_pred:
        return dict.fromkeys(SURFACE_METRICS, float("nan"))
    if has_ref != has_pred:
        return {"HD95": float("inf"), "ASSD": float("inf"), "NSD": 0.0}
    a, b = surface_distances(reference, prediction, spacing)
    hd95 = max(float(np.percentile(a, 95)), float(np.percentile(b, 95)))
    assd = float(np.concatenate([a, b]).mean())
    nsd = float((np.count_nonzero(a <= tolerance_mm) + np.count_nonzero(b <= tolerance_mm)) / (a.size + b.size))
    return {"HD95": hd95, "ASSD": assd, "NSD": nsd}


def label_surface_metrics(
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float,
    labels_or_regions: Sequence[int | tuple[int, ...]],
    ignore_label: int | None,
    size: int,
) -> dict:
    """`surface_metrics` of each label or region of two label maps (z, y, x), each on the
    bounding box of the label or region in both maps; voxels under the ignore label of the
    reference count in no prediction mask. `size`: labels are in [0, size)."""
    from fastseg._native import cpu

    ref = np.ascontiguousarray(reference)
    pred = np.ascontiguousarray(prediction)
    boxes = np.concatenate([cpu().label_boxes(ref, size), cpu().label_boxes(pred, size)])
    out = {}
    for r in labels_or_regions:
        members = list(r) if isinstance(r, tuple) else [int(r)]
        rows = boxes[[m for m in members if 0 <= m < size] + [size + m for m in members if 0 <= m < size]]
        starts, stops = rows[:, :3].min(axis=0), rows[:, 3:].max(axis=0)
        if np.any(starts >= stops):  # in neither map
            out[r] = dict.fromkeys(SURFACE_METRICS, float("nan"))
            continue
        box = tuple(slice(max(int(a) - 1, 0), min(int(b) + 1, n)) for a, b, n in zip(starts, stops, ref.shape))
        if len(members) == 1:
            ref_mask, pred_mask = ref[box] == members[0], pred[box] == members[0]
        else:
            ref_mask, pred_mask = np.isin(ref[box], members), np.isin(pred[box], members)
        if ignore_label is not None:
            pred_mask &= ref[box] != ignore_label
        out[r] = surface_metrics(ref_mask, pred_mask, spacing, tolerance_mm)
    return out
