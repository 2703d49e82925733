"""Surface distances of one label or region: HD95, ASSD and normalized surface Dice (NSD), in mm.

    border(M)   = the voxels of mask M with a face neighbour outside M (or on the image's edge)
    d(v, B)     = Euclidean distance in mm (the case's spacing) from voxel v to the nearest voxel of B
    a           = [d(p, border(ref)) for p in border(pred)]     (prediction -> reference)
    b           = [d(r, border(pred)) for r in border(ref)]     (reference -> prediction)
    HD95        = max(95th percentile of a, 95th percentile of b)   (numpy's linear percentile)
    ASSD        = mean of a and b together
    NSD(tau)    = (#{a <= tau} + #{b <= tau}) / (len(a) + len(b))

The distances come from exact anisotropic Euclidean distance transforms (the `edt` package, the
same family as cc3d) of the complement of each border, read at the other border's voxels.

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
    """(a: prediction border -> reference border, b: reference border -> prediction border) in mm;
    both masks must be non-empty."""
    import edt

    spacing = tuple(float(s) for s in spacing)
    ref_border, pred_border = border(reference), border(prediction)
    to_ref = edt.edt(np.ascontiguousarray(~ref_border), anisotropy=spacing, black_border=False)
    to_pred = edt.edt(np.ascontiguousarray(~pred_border), anisotropy=spacing, black_border=False)
    return to_ref[pred_border].astype(np.float64), to_pred[ref_border].astype(np.float64)


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
