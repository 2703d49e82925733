"""Foreground intensity samples and their statistics (the fingerprint's
`foreground_intensity_properties_per_channel`).

Sampling is nnU-Net's: `RandomState.choice(values, n, replace=True)`, which draws
`randint(0, len(values), n)` and gathers. The statistics are those of the multiset of all samples of
the dataset (10^8 per channel), and a multiset can be stored as counts: each case sends
`ValueCounts` -- the distinct sampled values, sorted, and how often each was drawn -- instead of
millions of samples. The draws are replayed by a native MT19937 kernel and only counted per voxel (no 10^8-element
index or sample array); a case's counts hold at most as many entries as its foreground has voxels (a 10^6
voxel foreground sends 16 MB instead of 80 MB of samples for 20 million draws). Integer-valued
foregrounds in a modest range (CT in HU, 8/16-bit MR) are counted per value without a sort.

Over the counts of all cases: min and max, the percentiles by numpy's linear rule on the order
statistics (the same numbers `np.percentile` gives on the expanded samples; each order statistic is
found by binary searches in the cases' sorted values, so nothing is merged or sorted in the main
process), mean and std as float64 sums (within float32 rounding of nnU-Net's float32
`np.mean`/`np.std`), without materializing or partitioning 10^8 values. Samples that are not
finite (possible only without verification) are kept as a float32 array, and then numpy computes
the statistics over all samples expanded, exactly as nnU-Net does.
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


def _draw_counts(size: int, num_samples: int, rng: np.random.RandomState) -> np.ndarray:
    """How often each of `size` voxels is drawn by `rng.randint(0, size, num_samples)`, as int32.

    The native kernel replays the generator's MT19937 stream from its state and counts (no
    num_samples-element index array), then hands the state after the draws back to `rng`, so
    later draws continue where numpy's own `randint` would have left them."""
    from fastseg._native import cpu

    state = rng.get_state(legacy=False)
    if state["bit_generator"] != "MT19937" or not 1 <= size <= 1 << 31 or num_samples >= 1 << 31:
        return np.bincount(rng.randint(0, size, num_samples), minlength=size).astype(np.int32)
    key = np.array(state["state"]["key"], dtype=np.uint32)
    counts, state["state"]["pos"] = cpu().mt19937_draw_counts(key, int(state["state"]["pos"]), int(size), int(num_samples))
    state["state"]["key"] = key
    rng.set_state(state)
    return counts


def draw_samples(values: np.ndarray, num_samples: int, rng: np.random.RandomState):
    """`rng.choice(values, num_samples, replace=True)` (same generator use) as ValueCounts, or as
    the float32 sample array when `values` holds NaN or Inf; [] when `values` is empty."""
    if values.size == 0:
        return []
    lo, hi = values.min(), values.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return values[rng.randint(0, values.size, num_samples)]  # what RandomState.choice draws
    per_voxel = _draw_counts(values.size, num_samples, rng)
    if hi - lo < _MAX_RANGE:
        codes = (values - lo).astype(np.int32)
        if np.array_equal(codes + lo, values):  # integer-valued: counts per value, no sort
            counts = np.bincount(codes, weights=per_voxel, minlength=int(hi - lo) + 1).astype(np.int64)
            kept = np.flatnonzero(counts)
            return ValueCounts(kept.astype(np.float64) + float(lo), counts[kept])
    drawn = np.flatnonzero(per_voxel)
    drawn_values = values[drawn]
    order = np.argsort(drawn_values)
    sorted_values, sorted_counts = drawn_values[order], per_voxel[drawn][order]
    # Voxels of equal value become one entry.
    starts = np.flatnonzero(np.concatenate(([True], sorted_values[1:] != sorted_values[:-1])))
    return ValueCounts(sorted_values[starts].astype(np.float64), np.add.reduceat(sorted_counts.astype(np.int64), starts))


_SIGN_MASK = np.int64(0x7FFF_FFFF_FFFF_FFFF)


def _key(value: float) -> int:
    """An int64 key that orders float64 values as the values (flips the magnitude bits of negatives)."""
    bits = np.float64(value).view(np.int64)
    return int(bits ^ ((bits >> 63) & _SIGN_MASK))


def _value(key: int) -> float:
    """The float64 value of a `_key` (the same bit flip undoes it)."""
    k = np.int64(key)
    return float((k ^ ((k >> 63) & _SIGN_MASK)).view(np.float64))


class _SortedUnion:
    """Order statistics of the union of several ValueCounts (each sorted), without merging them:
    the rank of a value is a sum of binary searches, and an order statistic is found by bisecting
    the 64-bit keys of the float64 values (at most 64 rounds of one search per part)."""

    def __init__(self, parts: Sequence[ValueCounts]) -> None:
        self.values = [p.values for p in parts]
        self.cums = [np.cumsum(p.counts) for p in parts]
        self.size = int(sum(int(c[-1]) for c in self.cums))

    def _at_most(self, value: float) -> tuple[int, float]:
        """(how many samples are <= value, the largest sample value <= value)."""
        total, largest = 0, -np.inf
        for values, cum in zip(self.values, self.cums):
            i = int(np.searchsorted(values, value, side="right"))
            if i:
                total += int(cum[i - 1])
                largest = max(largest, float(values[i - 1]))
        return total, largest

    def order_statistic(self, rank: int) -> float:
        """The sample at 0-based `rank` in sorted order."""
        lo = _key(min(float(v[0]) for v in self.values))
        hi = _key(max(float(v[-1]) for v in self.values))
        while lo < hi:  # the smallest key whose value has more than `rank` samples at or below it
            mid = (lo + hi) // 2
            if self._at_most(_value(mid))[0] > rank:
                hi = mid
            else:
                lo = mid + 1
        return self._at_most(_value(lo))[1]


def _percentile_of_counts(union: _SortedUnion, q: float, float32: bool) -> float:
    """numpy's linear-interpolation percentile of the expanded multiset, computed as numpy computes
    it on a float32 (`float32`) or float64 array."""
    n = union.size
    quantile = q / 100
    virtual = n * quantile + (1 + quantile * (1 - 1 - 1)) - 1  # numpy's virtual index, alpha = beta = 1
    below = int(np.floor(virtual))
    gamma = virtual - below
    kind = np.float32 if float32 else np.float64
    a, b = (kind(union.order_statistic(int(r))) for r in np.clip([below, below + 1], 0, n - 1))
    diff = kind(b - a)
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
        union = _SortedUnion(present)
        n = union.size
        mean = float(sum(float((s.values * s.counts).sum()) for s in present) / n)
        std = float(np.sqrt(sum(float((np.square(s.values - mean) * s.counts).sum()) for s in present) / n))
        # nnU-Net's concatenation is float32, unless a case without foreground adds a [] (float64).
        float32 = len(present) == len(samples)
        p005, median, p995 = (_percentile_of_counts(union, q, float32) for q in PERCENTILES)
        lowest, highest = min(float(s.values[0]) for s in present), max(float(s.values[-1]) for s in present)
        stats = {"mean": mean, "std": std, "min": lowest, "max": highest}
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
