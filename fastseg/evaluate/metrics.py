"""Overlap metrics of one case, nnU-Net's conventions, from one pass over the voxels.

nnU-Net counts TP, FP, FN and TN with four boolean passes per label or region. Here one pass builds
the confusion matrix of the two label maps -- `counts[r, p]`, the voxels whose reference label is r
and predicted label p -- and every label's and region's counts are sums over blocks of it:

    region R (a label is the region {label}), reference labels as rows, predictions as columns:
        TP = counts[R, R]      FN = counts[R, not R]
        FP = counts[not R, R]  TN = counts[not R, not R]

Voxels whose reference is the ignore label (its row) count nowhere. Dice = 2 TP / (2 TP + FP + FN)
and IoU = TP / (TP + FP + FN), NaN when the label or region is absent from both (TP + FP + FN = 0);
n_pred = TP + FP, n_ref = TP + FN -- nnU-Net's `compute_metrics`, value for value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LabelOrRegion = int | tuple[int, ...]

#: The metrics of each label or region, in nnU-Net's order.
METRICS = ("Dice", "IoU", "FP", "TP", "FN", "TN", "n_pred", "n_ref")


def confusion_matrix(reference: np.ndarray, prediction: np.ndarray, size: int) -> np.ndarray:
    """counts[r, p] of voxels with reference label r and predicted label p, int64 (size, size):
    one native pass (`fastseg._C.confusion_matrix`, OpenMP).

    Raises:
        ValueError: shapes differ, or a label is negative or >= size.
    """
    from fastseg._native import cpu

    if reference.shape != prediction.shape:
        raise ValueError(f"shapes differ: reference {reference.shape}, prediction {prediction.shape}")
    ref = np.ascontiguousarray(reference)
    pred = np.ascontiguousarray(prediction)
    if ref.dtype != pred.dtype or ref.dtype.kind not in "iu":
        common = np.result_type(ref.dtype, pred.dtype, np.int16)
        if common.kind not in "iu":
            raise ValueError(f"label maps must hold integers, got {reference.dtype} and {prediction.dtype}")
        ref, pred = ref.astype(common, copy=False), pred.astype(common, copy=False)
    counts, outside = cpu().confusion_matrix(ref, pred, int(size))
    if outside:
        lo = min(int(ref.min()), int(pred.min()))
        hi = max(int(ref.max()), int(pred.max()))
        raise ValueError(f"{outside} voxels hold label values outside 0..{size - 1} (found {lo}..{hi})")
    return counts


def _members(label_or_region: LabelOrRegion) -> list[int]:
    return list(label_or_region) if isinstance(label_or_region, tuple) else [int(label_or_region)]


def metrics_from_confusion(
    counts: np.ndarray, labels_or_regions: Sequence[LabelOrRegion], ignore_label: int | None = None
) -> dict[LabelOrRegion, dict[str, float | int]]:
    """nnU-Net's metrics of each label or region from a confusion matrix (`confusion_matrix`)."""
    counts = counts.astype(np.int64, copy=True)
    if ignore_label is not None and 0 <= ignore_label < len(counts):
        counts[ignore_label, :] = 0  # reference voxels under the ignore label count nowhere
    total = int(counts.sum())
    out: dict[LabelOrRegion, dict[str, float | int]] = {}
    for r in labels_or_regions:
        inside = np.zeros(len(counts), dtype=bool)
        inside[[m for m in _members(r) if 0 <= m < len(counts)]] = True
        tp = int(counts[np.ix_(inside, inside)].sum())
        ref_in = int(counts[inside, :].sum())
        pred_in = int(counts[:, inside].sum())
        fn, fp = ref_in - tp, pred_in - tp
        tn = total - tp - fn - fp
        if tp + fp + fn == 0:
            dice = iou = float("nan")
        else:
            dice, iou = 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)
        out[r] = {"Dice": dice, "IoU": iou, "FP": fp, "TP": tp, "FN": fn, "TN": tn, "n_pred": fp + tp, "n_ref": fn + tp}
    return out
