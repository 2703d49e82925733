"""Foreground intensity samples and their statistics (the fingerprint's
`foreground_intensity_properties_per_channel`).

Sampling is nnU-Net's: `RandomState.choice(values, n, replace=True)`, which draws
`randint(0, len(values), n)` and gathers. The statistics are those of the multiset of all samples of
the dataset (10^8 per channel), and a multiset can be stored as counts: when a case's foreground
values are integers in a modest range (CT in HU, 8/16-bit MR stored as integers), the case sends
`ValueCounts` -- the distinct sampled values and how often each was drawn -- instead of millions of
floats. With every case in that form, mean, std, min, max and the percentiles come from the merged
counts (float64 sums; percentiles by numpy's linear rule on the order statistics), without
materializing or partitioning 10^8 values. Otherwise the samples are expanded and numpy computes the
statistics exactly as nnU-Net does (float32 mean/std, `np.percentile`).

Both paths give nnU-Net's numbers: identical order statistics, and means/stds within float32
rounding of nnU-Net's float32 sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PERCENTILES = (0.5, 50.0, 99.5)
_MAX_RANGE = 1 << 22  # widest integer value range stored as counts (bins of one case)


@dataclass(frozen=True)
class ValueCounts:
    """A multiset of intensities: sorted distinct `values` (float64) and their `counts` (int64)."""

    values: np.ndarray
    counts: np.ndarray

    @property
    def size(self) -> int:
        return int(self.counts.sum())



def draw_samples(values: np.ndarray, num_samples: int, rng: np.random.RandomState):
    """`rng.choice(values, num_samples, replace=True)` (same generator use), as ValueCounts when the
    values are integers in a modest range, else as a float32 array; [] when `values` is empty."""
    if values.size == 0:
        return []
    index = rng.randint(0, values.size, num_samples)  # what RandomState.choice draws
    lo, hi = values.min(), values.max()
    if np.isfinite(lo) and np.isfinite(hi) and hi - lo < _MAX_RANGE:
        codes = (values - lo).astype(np.int32)
        if np.array_equal(codes + lo, values):  # integer-valued
            # How often each voxel was drawn, then summed per value: no gather of the samples.
            per_voxel = np.bincount(index, minlength=values.size)
            counts = np.bincount(codes, weights=per_voxel, minlength=int(hi - lo) + 1).astype(np.int64)
            kept = np.flatnonzero(counts)
            return ValueCounts(kept.astype(np.float64) + float(lo), counts[kept])
    return values[index]


def _percentile_of_counts(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """numpy's linear-interpolation percentile of the expanded multiset."""
    n = int(counts.sum())
    quantile = q / 100
    virtual = n * quantile + (1 + quantile * (1 - 1 - 1)) - 1  # numpy's virtual index, alpha = beta = 1
    below = int(np.floor(virtual))
    gamma = virtual - below
    cum = np.cumsum(counts)
    ranks = np.clip([below, below + 1], 0, n - 1)
    a, b = (np.float32(values[np.searchsorted(cum, r, side="right")]) for r in ranks)
    diff = np.float32(b - a)
    if gamma >= 0.5:
        return float(np.float64(b) - np.float64(diff) * (1 - gamma))
    return float(np.float64(a) + np.float64(diff) * gamma)


def channel_statistics(samples: Sequence) -> dict:
    """mean, median, std, min, max, percentile_99_5, percentile_00_5 of one channel's samples
    over all cases (each a float32 array, ValueCounts or [])."""
    present = [s for s in samples if not (isinstance(s, list) and not s)]
    if not present:
        raise ValueError("no foreground samples")
    if all(isinstance(s, ValueCounts) for s in present):
        merged_values = np.concatenate([s.values for s in present])
        merged_counts = np.concatenate([s.counts for s in present])
        values, inverse = np.unique(merged_values, return_inverse=True)
        counts = np.bincount(inverse, weights=merged_counts, minlength=values.size).astype(np.int64)
        n = int(counts.sum())
        mean = float((values * counts).sum() / n)
        std = float(np.sqrt((((values - mean) ** 2) * counts).sum() / n))
        p005, median, p995 = (_percentile_of_counts(values, counts, q) for q in PERCENTILES)
        stats = {"mean": mean, "std": std, "min": float(values[0]), "max": float(values[-1])}
    else:
        parts = [np.repeat(s.values, s.counts).astype(np.float32) if isinstance(s, ValueCounts) else s for s in samples]
        # nnU-Net concatenates every case's samples, [] for a case without foreground (which makes the
        # array float64); its float32 mean/std depend on that order.
        all_values = np.concatenate(parts)
        stats = {
            "mean": float(np.mean(all_values)),
            "std": float(np.std(all_values)),
            "min": float(np.min(all_values)),
            "max": float(np.max(all_values)),
        }
        p005, median, p995 = np.percentile(all_values, PERCENTILES, overwrite_input=True)
        del all_values
    stats.update(median=float(median), percentile_99_5=float(p995), percentile_00_5=float(p005))
    return {k: stats[k] for k in ("mean", "median", "std", "min", "max", "percentile_99_5", "percentile_00_5")}
