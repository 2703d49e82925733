"""One axis pass of `fastseg.ops.resample`, computed for a window of rows only.

An image resampled in slabs along its first spatial axis (z) cannot run `fastseg.ops.resample` on
each slab: a slab resized from n to m rows maps its rows with the slab's own scale, not the whole
image's. Here output rows [out_start, out_stop) of the whole-axis mapping n_in -> n_out are computed
from the input rows a caller holds, [in_start, in_start + rows):

* Sample positions are the whole axis's: output row i reads input coordinate
  c(i) = (i + 0.5) * n_in / n_out - 0.5, with the taps of `csrc/include/fastseg/resample.h`
  (orders 0 and 1: nearest and linear, clamped to the whole axis). These need the rows of their
  taps only (`rows_needed`, halo 0), and the arithmetic is the kernel's (taps and weights in double,
  summed in the same order, rounded to float32 once), so the rows equal the whole-image pass's.
* Order 3 first turns samples into cubic B-spline coefficients by a recursive filter that runs over
  the whole line (pole z = sqrt(3) - 2, edge padding and mirror initialisation at the true ends).
  On a window the recursions start and end inside the line; their error there decays as |z|^k
  (0.268^k) with the distance k from the window's inner ends. `rows_needed` adds `CUBIC_HALO` rows
  on each inner side, where the error has fallen below 0.268^16 = 7e-10 of the signal: the rows
  equal the whole-image pass's within float32 rounding, not bit for bit.

Pure numpy (float64 work arrays, one plane of the other axes at a time): it runs once per slab
along one axis while the other axes' passes stay on the native kernels.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["CUBIC_HALO", "resample_rows", "rows_needed"]

#: Rows added on each inner side of a window for order 3 (the prefilter's decay, see above).
CUBIC_HALO = 16
# The kernel's constants (resample.h): edge samples padded on each side, the pole, the horizon of the
# causal initial sum.
_PAD = 12
_POLE = -0.26794919243112270
_HORIZON = 30


def _coord(i: int, n_in: int, n_out: int) -> float:
    return (float(i) + 0.5) * (float(n_in) / float(n_out)) - 0.5


def _taps(order: int, coord: float, n: int) -> tuple[list[int], list[float]]:
    """The kernel's `sample_taps`: indices (into the padded coefficient line for order 3) and weights."""
    if order == 0:
        return [min(max(int(math.floor(coord + 0.5)), 0), n - 1)], [1.0]
    if order == 1:
        f = math.floor(coord)
        t = coord - f
        i0 = int(f)
        return [min(max(i0, 0), n - 1), min(max(i0 + 1, 0), n - 1)], [1.0 - t, t]
    c = coord + float(_PAD)
    f = math.floor(c)
    t = c - f
    t2 = t * t
    t3 = t2 * t
    u = 1.0 - t
    start = int(f) - 1
    last = n + 2 * _PAD - 1
    w = [u * u * u / 6.0, (4.0 - 6.0 * t2 + 3.0 * t3) / 6.0, (1.0 + 3.0 * t + 3.0 * t2 - 3.0 * t3) / 6.0, t3 / 6.0]
    return [min(max(start + k, 0), last) for k in range(4)], w


def _check(order: int, n_in: int, n_out: int, out_start: int, out_stop: int) -> None:
    if order not in (0, 1, 3):
        raise ValueError(f"order must be 0, 1 or 3, got {order!r}")
    if n_in < 1 or n_out < 1:
        raise ValueError(f"n_in and n_out must be positive, got {n_in} and {n_out}")
    if not 0 <= out_start < out_stop <= n_out:
        raise ValueError(f"output rows [{out_start}, {out_stop}) must lie in [0, {n_out}) and not be empty")


def rows_needed(n_in: int, n_out: int, out_start: int, out_stop: int, order: int) -> tuple[int, int]:
    """Input rows [start, stop) that `resample_rows` needs for output rows [out_start, out_stop).

    Args:
        n_in, n_out: rows of the whole axis before and after resampling.
        out_start, out_stop: the output rows wanted, 0 <= out_start < out_stop <= n_out.
        order: 0, 1 or 3 (order 3 adds `CUBIC_HALO` rows on each side that is not an end of the axis).
    """
    _check(order, n_in, n_out, out_start, out_stop)
    if n_in == n_out:
        return out_start, out_stop
    first = _taps(order, _coord(out_start, n_in, n_out), n_in)[0]
    last = _taps(order, _coord(out_stop - 1, n_in, n_out), n_in)[0]
    if order == 3:  # padded coefficient indices -> rows, plus the halo
        lo = min(first) - _PAD - CUBIC_HALO
        hi = max(last) - _PAD + 1 + CUBIC_HALO
    else:
        lo, hi = min(first), max(last) + 1
    return max(0, lo), min(n_in, hi)


def _coefficients(rows: np.ndarray, in_start: int, n_in: int) -> tuple[np.ndarray, int]:
    """Cubic B-spline coefficients of the padded line positions this window holds, and the padded
    index of the first one. `rows`: (C, r, inner) float32."""
    in_stop = in_start + rows.shape[1]
    p0 = 0 if in_start == 0 else in_start + _PAD
    p1 = n_in + 2 * _PAD if in_stop == n_in else in_stop + _PAD
    src = np.clip(np.arange(p0, p1) - _PAD, 0, n_in - 1) - in_start
    c = rows[:, src, :].astype(np.float64)  # (C, N, inner)
    n = c.shape[1]
    z = _POLE
    if n < 2:
        return c, p0
    c *= (1.0 - z) * (1.0 - 1.0 / z)
    if n > _HORIZON:
        acc = c[:, 0].copy()
        zk = z
        for k in range(1, _HORIZON):
            acc += zk * c[:, k]
            zk *= z
    else:
        zn1 = z ** float(n - 1)
        acc = c[:, 0] + zn1 * c[:, n - 1]
        zk = z
        for k in range(1, n - 1):
            acc += zk * (c[:, k] + zn1 * c[:, n - 1 - k])
            zk *= z
        acc = acc / (1.0 - zn1 * zn1)
    c[:, 0] = acc
    for j in range(1, n):
        c[:, j] = c[:, j] + z * c[:, j - 1]
    c[:, n - 1] = z / (z * z - 1.0) * (c[:, n - 1] + z * c[:, n - 2])
    for j in range(n - 2, -1, -1):
        c[:, j] = z * (c[:, j + 1] - c[:, j])
    return c, p0


def resample_rows(
    rows: np.ndarray, in_start: int, n_in: int, n_out: int, out_start: int, out_stop: int, order: int
) -> np.ndarray:
    """Output rows [out_start, out_stop) of resampling axis 1 of a (C, rows, ...) image from n_in to n_out rows.

    Args:
        rows: float32 (C, r, *rest): input rows [in_start, in_start + r) of the whole axis; they
            must include `rows_needed(n_in, n_out, out_start, out_stop, order)`.
        in_start: the whole-axis index of rows[:, 0].
        n_in, n_out: rows of the whole axis before and after resampling.
        out_start, out_stop: the output rows wanted.
        order: 0 (nearest), 1 (linear) or 3 (cubic B-spline), as `fastseg.ops.resample`'s passes.

    Returns:
        float32 (C, out_stop - out_start, *rest). Orders 0 and 1 equal the whole-axis pass exactly;
        order 3 within float32 rounding (see the module docstring).

    Raises:
        ValueError: a bad order or range, or rows that do not cover what the output rows need.
    """
    _check(order, n_in, n_out, out_start, out_stop)
    rows = np.asarray(rows)
    if rows.ndim < 2:
        raise ValueError(f"rows must be (C, rows, ...), got shape {rows.shape}")
    lo, hi = rows_needed(n_in, n_out, out_start, out_stop, order)
    if order == 3:  # the halo is wanted, not required, where the axis is long enough
        lo, hi = rows_needed(n_in, n_out, out_start, out_stop, 1)
    if not (in_start <= lo and hi <= in_start + rows.shape[1] <= n_in):
        raise ValueError(
            f"output rows [{out_start}, {out_stop}) need input rows [{lo}, {hi}) of {n_in}; "
            f"got rows [{in_start}, {in_start + rows.shape[1]})"
        )
    shape = rows.shape
    flat = rows.reshape(shape[0], shape[1], -1)
    if n_in == n_out:
        return np.ascontiguousarray(flat[:, out_start - in_start : out_stop - in_start]).reshape(
            (shape[0], out_stop - out_start) + shape[2:]
        ).astype(np.float32, copy=False)
    out = np.empty((shape[0], out_stop - out_start, flat.shape[2]), dtype=np.float32)
    if order == 3:
        source, base = _coefficients(flat, in_start, n_in)
    else:
        source, base = flat, in_start
    for i in range(out_start, out_stop):
        idx, w = _taps(order, _coord(i, n_in, n_out), n_in)
        if len(idx) == 1:
            out[:, i - out_start] = source[:, idx[0] - base]
            continue
        acc = w[0] * source[:, idx[0] - base].astype(np.float64)
        for k in range(1, len(idx)):
            acc += w[k] * source[:, idx[k] - base].astype(np.float64, copy=False)
        out[:, i - out_start] = acc
    return out.reshape((shape[0], out_stop - out_start) + shape[2:])
