"""Prediction of 3D images larger than memory: the case streamed in slabs along z.

The in-memory predictor holds the image, its preprocessed copy and a float32 accumulator per class at
once. Here only a window of rows along the slowest array axis (z) is held; everything else lives in
files beside the output (`<output folder>/.stream-<output name>/`).

What is global, computed in a first pass over the image before any slab is predicted:

* the crop-to-nonzero bounding box (hole filling never changes it: `fastseg.ops.crop`);
* per-case normalization statistics where the scheme has them (ZScore: mean and std;
  RescaleTo01: min and max), merged over slabs in double (`fastseg.ops.normalize.merge_statistics`);
  CT normalization uses the plans' dataset statistics and needs none;
* with cubic resampling of all axes together, each channel's range, which skimage clips the
  resampled image to;
* the tile grid: nnU-Net's sliding-window steps over the whole preprocessed (padded) image, and the
  batches of tiles as the in-memory predictor forms them, so every tile, every forward pass and
  every accumulation is the in-memory run's.

Then, slab by slab (a slab is a run of consecutive batches of tiles, as many as the memory budget
allows): the rows the slab's tiles read are preprocessed (crop, normalize with the global statistics,
resample in-plane with the native kernels and along z with `fastseg.ops.resample_rows`, from just
the input rows the z taps need: the halo), the tiles are predicted and accumulated into a window of
rows, and the rows no later tile touches are final: they are resampled back, labelled
(`fastseg.ops.export_segmentation`) and appended to the NIfTI output (`fastseg.io.nifti_stream`) or,
for an output ending in .ome.tif / .tif, to a tiled OME-TIFF (`fastseg.io.tiff_stream`),
the rows after them carried into the next window.

Halo rule and exactness. Rows without resampling along z, and rows resampled along z with order 0
or 1 (nearest: the separate-z default for images and logits; linear: the export of isotropic
images), are computed from exactly the rows their taps read with the kernels' arithmetic: the labels
equal the in-memory prediction's voxel for voxel. Cubic resampling along z (images resampled with
all axes together) runs a recursive prefilter over the whole axis; a slab's prefilter starts
`CUBIC_HALO` rows outside the rows it keeps, where its error has fallen below float32 rounding, so
labels can differ only where two classes tie within rounding.

Resuming. After each slab the output file is flushed at a deflate full-flush point and the carried
rows, the writer's state and the slab index are recorded (`progress.json`, `state-<k>-*.raw`);
`--continue` truncates the output back to the last record and goes on from there, provided the
record belongs to the same input files, model, settings and budget (else it starts over). The label
file appears under its name only when the last row is written (write to a temporary, then rename).

Memory. The slabs are planned so that the arrays they hold (`_estimates`: the window of rows, the
carried state, a forward pass's tiles, and the larger of preprocessing and export) fit 85 % of the
budget. `fastseg predict` keeps freed memory in glibc's heap for the forward passes to reuse
(`fastseg.runtime.heap.retain_freed_memory`); interleaved with the slab loop's other arrays of other
sizes, that heap fragmented and grew past anything live at once (measured: the process peaked 25-32
MiB above its baseline with a 16 MiB budget, of which the planned arrays were 11). The slab loop
therefore serves its allocations from their own mappings, returned to the system when freed
(`heap.map_large_allocations`), and only the forward passes use the heap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastseg.io.atomic import write_json_atomic
from fastseg.io.formats import split_ending
from fastseg.io.nifti_stream import NiftiSlabWriter, SlabReader, decompress_voxels, open_nifti_volume
from fastseg.io.tiff_stream import TIFF_ENDINGS, TiffSlabWriter
from fastseg.ops import compute_new_shape, export_segmentation, gaussian_importance_map, resample
from fastseg.ops import separate_z_axis
from fastseg.ops.normalize import channel_statistics, merge_statistics, normalize
from fastseg.ops.resample_rows import CUBIC_HALO, resample_rows, rows_needed
from fastseg.predict.sliding import accumulate_mirrored, mirror_combinations, tile_adder, tile_offsets
from fastseg.runtime import heap

logger = logging.getLogger(__name__)

_VERSION = 2  # 2: weights count every network output (accumulate_mirrored)
#: Part of the budget the planned arrays may take; the rest covers what the estimates leave out.
_HEADROOM = 0.85
_STAT_SCHEMES = ("ZScoreNormalization", "RescaleTo01Normalization")
_KEYS = ("order", "order_z", "force_separate_z", "separate_z_anisotropy_threshold")


class StreamingError(ValueError):
    """A case that cannot be streamed as asked (budget too small, unsupported layout); names the case.

    Attributes:
        minimum: for a budget too small, the smallest budget in bytes that holds one slab; else None.
    """

    def __init__(self, message: str, minimum: int | None = None) -> None:
        super().__init__(message)
        self.minimum = minimum


# --- the plan: what is global ---------------------------------------------------------------------


@dataclass
class StreamPlan:
    """Everything fixed before the first slab: geometry, statistics, tile batches, slabs.

    Shapes are (z, y, x) after the plans' transpose: `raw` the image, `cropped` the nonzero box,
    `net` the configuration's grid, `padded` the grid padded to the patch.
    """

    raw: tuple[int, int, int]
    bbox: list[list[int]]
    cropped: tuple[int, int, int]
    net: tuple[int, int, int]
    padded: tuple[int, int, int]
    pad_before: tuple[int, int, int]
    statistics: list[dict | None]
    clip: list[list[float]] | None
    tiles_per_pass: int
    slabs: list[list[int]]  # [first batch, end batch) per slab
    window_rows: int
    piece_rows: int  # network rows preprocessed together (aligned pieces)
    export_rows: int  # output rows labelled together
    estimate: int  # bytes the planned arrays take at most


def _kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k in _KEYS}


class _Geometry:
    """The per-case constants the slab loop needs, derived from the plans and the image."""

    def __init__(self, predictor: Any, raw_shape: Sequence[int], properties: dict) -> None:
        plan = predictor.case_plan
        self.forward = [int(a) for a in plan.transpose_forward]
        self.spacing = [float(properties["spacing"][a]) for a in self.forward]
        self.raw = tuple(int(raw_shape[a]) for a in self.forward)
        target = list(plan.spacing)
        self.target = target if len(target) == 3 else [self.spacing[0]] + target
        self.data_kwargs = _kwargs(dict(plan.data_resampling))
        cfg = predictor.model.config
        self.net_spacing = list(cfg["spacing"]) if len(cfg["spacing"]) == 3 else [self.spacing[0], *cfg["spacing"]]
        self.export_kwargs = _kwargs(cfg.get("resampling_fn_probabilities_kwargs", {}))
        self.patch = tuple(int(p) for p in predictor.patch_size)
        self.depth = self.patch[0] if len(self.patch) == 3 else 1
        self.cin = predictor.model.num_input_channels
        self.cout = predictor.model.num_outputs
        spec = predictor.model.labels
        self.regions = spec.regions_class_order if spec.has_regions else None
        largest = max(self.regions) if self.regions else self.cout - 1
        self.label_dtype = np.dtype(np.uint8 if largest < 255 else np.uint16)

    def data_axis_z(self) -> int | None:
        k = self.data_kwargs
        return separate_z_axis(self.spacing, self.target, k.get("force_separate_z"), k.get("separate_z_anisotropy_threshold", 3.0))

    def export_axis_z(self) -> int | None:
        k = self.export_kwargs
        return separate_z_axis(self.net_spacing, self.spacing, k.get("force_separate_z"), k.get("separate_z_anisotropy_threshold", 3.0))


def _identity(predictor: Any, paths: Sequence[Path], output: Path, budget: int) -> str:
    """A hash of what the streamed result depends on: inputs, model, settings, budget."""
    def stamp(p: Path) -> list:
        st = Path(p).stat()
        return [str(Path(p).resolve()), st.st_size, st.st_mtime_ns]

    content = {
        "version": _VERSION,
        "inputs": [stamp(p) for p in paths],
        "checkpoints": [stamp(p) for p in predictor.model.checkpoints],
        "plan": predictor.case_plan.digest(),
        "configuration": predictor.model.configuration,
        "step": predictor.step_size,
        "mirror": list(predictor.mirror_axes),
        "batch": predictor.batch_size,
        "budget": int(budget),
        "output": output.name,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:24]


def _first_pass(readers: list[SlabReader], geo: _Geometry, predictor: Any, budget: int) -> tuple[list, list, list | None]:
    """(bounding box in transposed axes, statistics per channel, clip range per channel or None)."""
    z, y, x = readers[0].volume.shape
    plane = y * x * (4 + readers[0].volume.dtype.itemsize)
    step = max(1, min(z, budget // (3 * plane)))
    any_z = np.zeros(z, dtype=bool)
    any_y = np.zeros(y, dtype=bool)
    any_x = np.zeros(x, dtype=bool)
    for z0 in range(0, z, step):
        z1 = min(z, z0 + step)
        mask = None
        for r in readers:
            nz = r.read(z0, z1) != 0
            mask = nz if mask is None else (mask | nz)
        any_z[z0:z1] = mask.any(axis=(1, 2))
        any_y |= mask.any(axis=(0, 2))
        any_x |= mask.any(axis=(0, 1))
    box = []
    for hits, n in ((any_z, z), (any_y, y), (any_x, x)):
        where = np.flatnonzero(hits)
        box.append([int(where[0]), int(where[-1]) + 1] if where.size else [0, n])
    bbox = [box[a] for a in geo.forward]
    plan = predictor.case_plan
    stats: list[dict | None] = [None] * geo.cin
    needs = [s in _STAT_SCHEMES for s in plan.normalization_schemes]
    cropped = tuple(b - a for a, b in bbox)
    net = compute_new_shape(cropped, geo.spacing, geo.target)
    order = int(geo.data_kwargs.get("order", 3))
    clip_needed = tuple(net) != cropped and order == 3 and geo.data_axis_z() is None
    if any(needs) or clip_needed:
        raw_box = box
        ranges = [None] * geo.cin
        for z0 in range(raw_box[0][0], raw_box[0][1], step):
            z1 = min(raw_box[0][1], z0 + step)
            for c, r in enumerate(readers):
                part = r.read(z0, z1)[:, raw_box[1][0] : raw_box[1][1], raw_box[2][0] : raw_box[2][1]]
                s = channel_statistics(part)
                stats[c] = merge_statistics(stats[c], s)
        if clip_needed:
            ranges = []
            for c in range(geo.cin):
                ends = np.array([stats[c]["min"], stats[c]["max"]], dtype=np.float32)
                lo_hi = normalize(
                    ends, plan.normalization_schemes[c], intensity_properties=plan.intensity_properties[c] or None,
                    statistics=stats[c],
                )
                ranges.append([float(np.min(lo_hi)), float(np.max(lo_hi))])
        stats = [s if n else None for s, n in zip(stats, needs)]
        return bbox, stats, ranges if clip_needed else None
    return bbox, stats, None


def _estimates(geo: _Geometry, cropped, net, padded, raw_itemsize: int):
    """Byte estimates: (window bytes per row, carried bytes, preprocessing bytes for n rows,
    export bytes for m output rows)."""
    cin, cout = geo.cin, geo.cout
    a_q = padded[1] * padded[2]
    a_s = cropped[1] * cropped[2]
    a_n = net[1] * net[2]
    a_r = geo.raw[1] * geo.raw[2]
    per_row = a_q * 4 * (cout + 1 + cin)
    carry = a_q * 4 * (cout + 1)  # the saved state: the carried rows are written out one slab at a time
    rz = cropped[0] / net[0]
    cubic = int(geo.data_kwargs.get("order", 3)) == 3 and geo.data_axis_z() is None and cropped[0] != net[0]
    halo = CUBIC_HALO + 3 if cubic else 2

    def pre(n: int) -> int:
        n_in = math.ceil(n * rz) + 2 * halo
        big = max(a_s, a_n)
        b = n_in * (a_r * (raw_itemsize + 4) + cin * a_s * 4 * 2 + cin * big * 4 * 2)
        if cubic:
            b += cin * 8 * big * (n_in + 24)
        return b + n * cin * a_n * 4 * 2

    def exp(m: int) -> int:
        n_src = math.ceil(m / rz) + 2
        b = n_src * a_n * 4 * (cout + 1) * 2
        b += m * a_n * (cout * 12 + 4)  # rows resampled along z (float64 work, float32 result)
        return b + m * (a_s * 2 + a_r * 4)

    return per_row, carry, pre, exp


def make_plan(readers: list[SlabReader], properties: dict, predictor: Any, budget: int, case: str) -> StreamPlan:
    """The global first pass and the slabs for `budget` bytes.

    Raises:
        StreamingError: a layout streaming does not handle, or a budget too small for one slab.
    """
    geo = _Geometry(predictor, readers[0].volume.shape, properties)
    if geo.forward[0] != 0:
        raise StreamingError(
            f"case {case}: the plans transpose the image's first axis (transpose_forward {geo.forward}); streaming "
            "runs along the first axis and needs it kept in place; predict without --memory-budget-gb"
        )
    if any(predictor.case_plan.use_mask_for_norm):
        raise StreamingError(
            f"case {case}: the plans normalize inside the nonzero mask (use_mask_for_norm), whose filled holes "
            "need the whole image; predict without --memory-budget-gb"
        )
    bbox, stats, clip = _first_pass(readers, geo, predictor, budget)
    cropped = tuple(b - a for a, b in bbox)
    net = tuple(int(n) for n in compute_new_shape(cropped, geo.spacing, geo.target))
    if net != cropped and geo.data_axis_z() not in (None, 0):
        raise StreamingError(
            f"case {case}: the image is resampled with its axis {geo.data_axis_z()} apart (anisotropic spacing "
            f"{geo.spacing}); streaming needs that axis to be the first; predict without --memory-budget-gb"
        )
    if geo.export_axis_z() not in (None, 0) and net != cropped:
        raise StreamingError(
            f"case {case}: the prediction is resampled back with axis {geo.export_axis_z()} apart; streaming needs "
            "that axis to be the first; predict without --memory-budget-gb"
        )
    spatial = list(net)
    pad_before = [0, 0, 0]
    lead = 3 - len(geo.patch)
    for a, p in enumerate(geo.patch):
        missing = max(0, p - net[lead + a])
        pad_before[lead + a] = missing // 2
        spatial[lead + a] = net[lead + a] + missing
    padded = tuple(spatial)
    offsets = tile_offsets(padded, geo.patch, predictor.step_size)
    copies = 1 + len(mirror_combinations(predictor.mirror_axes))
    tpp = max(1, predictor.batch_size // copies)
    n_batches = math.ceil(len(offsets) / tpp)
    first = offsets[::tpp, 0]
    last = offsets[np.minimum(np.arange(1, n_batches + 1) * tpp, len(offsets)) - 1, 0] + geo.depth
    per_row, carry, pre, exp = _estimates(geo, cropped, net, padded, readers[0].volume.dtype.itemsize)
    usable = int(budget * _HEADROOM)

    # A forward pass's tiles and their mirrored sum (the network's own output counts with the model).
    tiles = tpp * int(np.prod(geo.patch)) * 4 * (geo.cin + geo.cout)

    def fits(rows: int, piece: int, out_rows: int) -> int:
        return rows * per_row + carry + tiles + max(pre(piece), exp(out_rows))

    min_rows = int(max(last - first))
    piece = 1
    while piece < padded[0] and pre(piece * 2) <= usable // 4:
        piece *= 2
    out_rows = 1
    while out_rows < cropped[0] and exp(out_rows * 2) <= usable // 4:
        out_rows *= 2
    need = fits(min_rows, 1, 1)
    if need > usable:
        raise StreamingError(
            f"case {case}: a memory budget of {budget / 2**30:.3f} GB cannot hold one slab with its halo "
            f"({min_rows} rows of {padded[1]}x{padded[2]} voxels, {geo.cin} input and {geo.cout} output channels); "
            f"give at least --memory-budget-gb {math.ceil(need / _HEADROOM / 2**30 * 1000) / 1000:.3f}",
            minimum=math.ceil(need / _HEADROOM),
        )
    slabs = []
    b = 0
    window = 0
    while b < n_batches:
        e = b + 1
        while e < n_batches and fits(int(last[b:e + 1].max() - first[b]), piece, out_rows) <= usable:
            e += 1
        slabs.append([b, e])
        window = max(window, int(last[b:e].max() - first[b]))
        b = e
    return StreamPlan(
        raw=tuple(int(s) for s in readers[0].volume.shape), bbox=bbox, cropped=cropped, net=net, padded=padded,
        pad_before=tuple(pad_before), statistics=stats, clip=clip, tiles_per_pass=tpp, slabs=slabs,
        window_rows=window, piece_rows=piece, export_rows=out_rows, estimate=fits(window, piece, out_rows),
    )


# --- the slab loop --------------------------------------------------------------------------------


class _Rows:
    """Preprocessed network rows, computed in pieces aligned to multiples of `plan.piece_rows` (so a
    row's values never depend on which slab asked for it)."""

    def __init__(self, readers: list[SlabReader], plan: StreamPlan, geo: _Geometry, predictor: Any) -> None:
        self.readers, self.plan, self.geo, self.case_plan = readers, plan, geo, predictor.case_plan

    def piece(self, a: int, b: int) -> np.ndarray:
        """Network rows [a, b) (unpadded), float32 (C, b - a, *net in-plane)."""
        plan, geo = self.plan, self.geo
        s0, n0 = plan.cropped[0], plan.net[0]
        kw = geo.data_kwargs
        order, order_z = int(kw.get("order", 3)), int(kw.get("order_z", 0))
        resampled = plan.net != plan.cropped
        axis_z = geo.data_axis_z() if resampled else None
        z_order = order_z if axis_z == 0 else order
        i0, i1 = rows_needed(s0, n0, a, b, z_order) if resampled else (a, b)
        (by0, by1), (bx0, bx1) = plan.bbox[1], plan.bbox[2]
        z_raw = plan.bbox[0][0]
        swap = geo.forward[1:] == [2, 1]
        channels = []
        for c, r in enumerate(self.readers):
            part = r.read(z_raw + i0, z_raw + i1)
            if swap:
                part = part.transpose(0, 2, 1)
            part = part[:, by0:by1, bx0:bx1]
            channels.append(
                normalize(
                    part, self.case_plan.normalization_schemes[c],
                    intensity_properties=self.case_plan.intensity_properties[c] or None, statistics=plan.statistics[c],
                )
            )
            del part
        x = np.stack(channels)
        del channels
        if not resampled:
            return x
        rest = {k: v for k, v in kw.items() if k in ("force_separate_z", "separate_z_anisotropy_threshold")}
        if axis_z == 0:
            x = resample(x, (x.shape[1], plan.net[1], plan.net[2]), geo.spacing, geo.target, order=order,
                         order_z=order_z, **rest)
            if s0 != n0:
                x = resample_rows(x, i0, s0, n0, a, b, order_z)
            return x
        axes = sorted(range(3), key=lambda ax: plan.net[ax] / plan.cropped[ax])
        for ax in axes:
            if plan.net[ax] == plan.cropped[ax]:
                continue
            if ax == 0:
                x = resample_rows(x, i0, s0, n0, a, b, order)
            else:
                shape = list(x.shape[1:])
                shape[ax] = plan.net[ax]
                x = resample(x, shape, geo.spacing, geo.target, order=order, order_z=order_z, clip_joint=False, **rest)
        if x.shape[1] != b - a:
            x = np.ascontiguousarray(x[:, a - i0 : b - i0])
        if order == 3 and plan.clip is not None:
            for c, (lo, hi) in enumerate(plan.clip):
                np.clip(x[c], np.float32(lo), np.float32(hi), out=x[c])
        return x

    def fill(self, src: np.ndarray, w0: int, r0: int, r1: int) -> None:
        """Writes padded rows [r0, r1) into `src` (whose row 0 is padded row w0)."""
        plan = self.plan
        pz, py, px = plan.pad_before
        n0 = plan.net[0]
        src[:, r0 - w0 : r1 - w0] = 0
        a, b = max(r0 - pz, 0), min(r1 - pz, n0)
        k = plan.piece_rows
        start = (a // k) * k
        while start < b:
            end = min(start + k, n0)
            rows = self.piece(start, end)
            lo, hi = max(start, a), min(end, b)
            src[:, lo + pz - w0 : hi + pz - w0, py : py + plan.net[1], px : px + plan.net[2]] = rows[:, lo - start : hi - start]
            del rows
            start = end


def _run_batch(predictor: Any, source, tiles: np.ndarray, acc, weights, importance, two_d: bool, combos) -> None:
    """One group of tiles (offsets relative to the window) through the networks with their copies and
    their accumulation, as the in-memory sliding window does it (`accumulate_mirrored`)."""
    import torch

    patch = predictor.patch_size
    if two_d:
        x = torch.stack([source[:, d, y : y + patch[0], w : w + patch[1]] for d, y, w in tiles])
    else:
        x = torch.stack([source[:, a : a + patch[0], b : b + patch[1], c : c + patch[2]] for a, b, c in tiles])
    x = x.to(predictor.device, non_blocking=True)
    tiles = np.ascontiguousarray(tiles)
    add = tile_adder(acc, weights, importance, two_d)
    accumulate_mirrored(predictor.networks, x, [tuple(a + 2 for a in combo) for combo in combos],
                        predictor.batch_size, lambda outputs, rows: add(outputs, tiles[rows]))


class _Exporter:
    """Final network rows -> label rows on the image's grid, appended to the writer."""

    def __init__(self, plan: StreamPlan, geo: _Geometry, writer: NiftiSlabWriter, next_out: int, tail) -> None:
        self.plan, self.geo, self.writer = plan, geo, writer
        self.next_out = next_out  # next cropped output row
        self.tail = tail  # (first net row, acc rows, weight rows) kept from the previous slab, or None
        ez = geo.export_axis_z() if plan.net != plan.cropped else None
        order = int(geo.export_kwargs.get("order", 1))
        self.z_order = int(geo.export_kwargs.get("order_z", 0)) if ez == 0 else order

    def taps(self, o: int) -> tuple[int, int]:
        n0, s0 = self.plan.net[0], self.plan.cropped[0]
        if n0 == s0:
            return o, o + 1
        return rows_needed(n0, s0, o, o + 1, self.z_order)

    def rows(self, acc_win, w_win, w0: int, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        """Net rows [r0, r1) (unpadded, in-plane padding cut) from the tail and the window."""
        pz, py, px = self.plan.pad_before
        ny, nx = self.plan.net[1], self.plan.net[2]
        parts_a, parts_w = [], []
        r = r0
        if self.tail is not None and r < self.tail[0] + self.tail[2].shape[0]:
            t0, ta, tw = self.tail
            e = min(r1, t0 + tw.shape[0])
            parts_a.append(ta[:, r - t0 : e - t0])
            parts_w.append(tw[r - t0 : e - t0])
            r = e
        if r < r1:
            a, b = r + pz - w0, r1 + pz - w0
            parts_a.append(acc_win[:, a:b, py : py + ny, px : px + nx])
            parts_w.append(w_win[a:b, py : py + ny, px : px + nx])
        acc = np.ascontiguousarray(np.concatenate(parts_a, axis=1) if len(parts_a) > 1 else parts_a[0])
        w = np.ascontiguousarray(np.concatenate(parts_w, axis=0) if len(parts_w) > 1 else parts_w[0])
        return acc, w

    def export(self, acc_win, w_win, w0: int, final_end: int) -> int:
        """Labels every output row whose taps lie in final rows (< final_end, padded); keeps the
        rows the next output rows need as the tail. Returns the number of label rows written."""
        plan, geo = self.plan, self.geo
        pz = plan.pad_before[0]
        done = min(plan.net[0], final_end - pz)  # final net rows: [.., done)
        s0 = plan.cropped[0]
        end = self.next_out
        while end < s0 and self.taps(end)[1] <= done:
            end += 1
        written = 0
        if self.next_out == 0 and end > 0:
            written += self._zeros(plan.bbox[0][0])
        o = self.next_out
        while o < end:
            o1 = min(end, o + plan.export_rows)
            r0, r1 = self.taps(o)[0], self.taps(o1 - 1)[1]
            acc, w = self.rows(acc_win, w_win, w0, r0, r1)
            labels = self._label(acc, w, r0, o, o1)
            written += self._write(labels)
            o = o1
        self.next_out = end
        if end == s0:
            written += self._zeros(plan.raw[0] - plan.bbox[0][1])
            self.tail = None
        else:
            keep0 = self.taps(end)[0]
            if keep0 < done:
                acc, w = self.rows(acc_win, w_win, w0, keep0, done)
                self.tail = (keep0, np.array(acc, copy=True), np.array(w, copy=True))  # the window is reused
            else:
                self.tail = None
        return written

    def _label(self, acc: np.ndarray, w: np.ndarray, r0: int, o0: int, o1: int) -> np.ndarray:
        plan, geo = self.plan, self.geo
        n0, s0 = plan.net[0], plan.cropped[0]
        kwargs = dict(geo.export_kwargs)
        if n0 != s0 and self.z_order == 0:  # nearest row: the same taps and arithmetic as the fused export
            idx = [self.taps(o)[0] - r0 for o in range(o0, o1)]
            acc, w = np.ascontiguousarray(acc[:, idx]), np.ascontiguousarray(w[idx])
        elif n0 != s0:
            logits = acc / w[None]
            acc = resample_rows(logits, r0, n0, s0, o0, o1, self.z_order)
            w = None
        new_shape = (o1 - o0, plan.cropped[1], plan.cropped[2])
        return export_segmentation(
            acc, new_shape, geo.net_spacing, geo.spacing, weights=w, regions_class_order=geo.regions, **kwargs,
        )

    def _write(self, labels: np.ndarray) -> int:
        plan, geo = self.plan, self.geo
        (by0, by1), (bx0, bx1) = plan.bbox[1], plan.bbox[2]
        full = np.zeros((labels.shape[0], geo.raw[1], geo.raw[2]), dtype=geo.label_dtype)
        full[:, by0:by1, bx0:bx1] = labels
        if geo.forward[1:] == [2, 1]:
            full = full.transpose(0, 2, 1)
        self.writer.write_rows(full)
        return labels.shape[0]

    def _zeros(self, n: int) -> int:
        y, x = self.writer.shape[1:]
        for z in range(0, n, 64):
            self.writer.write_rows(np.zeros((min(64, n - z), y, x), dtype=self.geo.label_dtype))
        return n


def scratch_folder(output: Path) -> Path:
    """Where a streamed case keeps its state: beside the output."""
    return output.parent / f".stream-{output.name}"


def _open_inputs(paths: Sequence[Path], scratch: Path, prepared: bool) -> list[SlabReader]:
    """Slab readers of the channel files; compressed ones decompressed into `scratch` (unless
    `prepared`: done by an earlier run). Files that are not streamable NIfTI are read whole once and
    stored as raw float32."""
    from fastseg import io as fio
    from fastseg.io.nifti_stream import NiftiVolume

    readers = []
    for c, p in enumerate(paths):
        volume = open_nifti_volume(p)
        raw = scratch / f"voxels_{c:04d}.raw"
        if volume is None:  # another format: read whole once, kept as raw float32
            data, props = fio.read_images([p])
            if data.shape[0] != 1 or data.shape[1] == 1:
                raise StreamingError(f"{p}: streaming reads 3D images of one channel per file, got shape {data.shape}")
            if not (prepared and raw.is_file()):
                data[0].tofile(raw)
            volume = NiftiVolume(Path(p), tuple(int(s) for s in data.shape[1:]), np.dtype(np.float32), 0, False, props)
            del data
            readers.append(SlabReader(volume, raw))
            continue
        if volume.compressed:
            if not prepared:
                decompress_voxels(volume, raw)
            readers.append(SlabReader(volume, raw))
        else:
            readers.append(SlabReader(volume))
    shapes = {r.volume.shape for r in readers}
    if len(shapes) != 1:
        raise StreamingError(f"channels of one case must share a grid, got shapes {sorted(shapes)} for {[str(p) for p in paths]}")
    return readers


def stream_case(
    predictor: Any,
    paths: Sequence[Path],
    output: Path,
    *,
    budget: int,
    resume: bool = False,
    progress: bool | None = None,
    case: str | None = None,
) -> dict:
    """Predicts one 3D case slab by slab within `budget` bytes and writes its labels to `output`.

    Args:
        predictor: a `fastseg.predict.Predictor`.
        paths: the case's channel files, in order.
        output: the label file: NIfTI (`.nii.gz`, `.nii`) or a tiled OME-TIFF (`.ome.tif`, `.tif`,
            `fastseg.io.tiff_stream`); written to a temporary and renamed at the end.
        budget: bytes the case's arrays may take (the network and torch come on top).
        resume: continue from the last finished slab of an interrupted run of the same input, model
            and settings (`--continue`); False starts over.
        progress: a progress bar over slabs; None: only when stderr is a terminal.
        case: the case's name in messages (default: the output's name).

    Returns:
        {"slabs": number of slabs, "resumed_from": first slab run, "estimate": planned peak bytes,
        "seconds": {"read": reading, the first pass and preprocessing, "write": export, writing and
        the resume records}} (the rest of the call is the network's).

    Raises:
        StreamingError: an output that is neither NIfTI nor TIFF, a layout streaming does not handle, or a budget
            too small for one slab with its halo (the message names the case and the minimum).
    """
    import torch
    from tqdm import tqdm

    case = case or output.name
    output = Path(output)
    ending = split_ending(output)[1].lower()
    tiff = output.name.lower().endswith(TIFF_ENDINGS)
    if ending not in (".nii.gz", ".nii") and not tiff:
        raise StreamingError(
            f"case {case}: streamed prediction writes NIfTI (.nii.gz, .nii) or tiled OME-TIFF (.ome.tif, .tif), "
            f"the output is {output.name}"
        )
    if predictor.postprocessing:
        raise StreamingError(f"case {case}: postprocessing needs the whole label map in memory; predict without it")
    scratch = scratch_folder(output)
    identity = _identity(predictor, paths, output, budget)
    record = scratch / "progress.json"
    state = None
    if resume and record.is_file():
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(record.read_text())
        if state is None or state.get("identity") != identity:
            logger.info("case %s: the interrupted run's state belongs to other inputs or settings; starting over", case)
            state = None
    if state is None:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
    clock = {"read": 0.0, "write": 0.0}
    t = time.perf_counter()
    readers = _open_inputs(paths, scratch, prepared=state is not None)
    properties = readers[0].volume.properties
    geo = _Geometry(predictor, readers[0].volume.shape, properties)
    if state is None:
        try:
            plan = make_plan(readers, properties, predictor, budget, case)
        except Exception:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        state = {"identity": identity, "plan": asdict(plan), "slab": 0}
        write_json_atomic(state, record)
    else:
        saved = state["plan"]
        plan = StreamPlan(**{k: (tuple(v) if k in ("raw", "cropped", "net", "padded", "pad_before") else v) for k, v in saved.items()})
    clock["read"] += time.perf_counter() - t  # opening the inputs and the first pass (a resumed run has none)
    logger.info(
        "case %s: streaming in %d slabs of up to %d rows (planned peak %.3f GB of a %.3f GB budget)%s",
        case, len(plan.slabs), plan.window_rows, plan.estimate / 2**30, budget / 2**30,
        f", resuming at slab {state['slab'] + 1}" if state["slab"] else "",
    )

    two_d = len(geo.patch) == 2
    offsets = tile_offsets(plan.padded, geo.patch, predictor.step_size)
    combos = mirror_combinations(predictor.mirror_axes)
    importance = gaussian_importance_map(geo.patch)
    if two_d:
        importance = importance[None]
    rows_max = plan.window_rows
    qy, qx = plan.padded[1], plan.padded[2]
    acc = np.zeros((geo.cout, rows_max, qy, qx), dtype=np.float32)
    wts = np.zeros((rows_max, qy, qx), dtype=np.float32)
    src = np.zeros((geo.cin, rows_max, qy, qx), dtype=np.float32)
    source = torch.from_numpy(src)
    tpp = plan.tiles_per_pass

    partial = scratch / f"labels{ending}"
    k0 = int(state["slab"])
    raw_shape = plan.raw
    out_shape = tuple(readers[0].volume.shape)
    tail = None
    win0, win1, src_valid = 0, 0, (0, 0)
    if k0:
        saved = _load_state(scratch, k0, state)
        win0, win1 = int(state["window"][0]), int(state["window"][1])
        n = win1 - win0
        acc[:, :n] = saved["acc"]
        wts[:n] = saved["weights"]
        if "tail_acc" in saved:
            tail = (int(state["tail_first"]), saved["tail_acc"], saved["tail_weights"])
        del saved
        writer = _writer(partial, out_shape, geo.label_dtype, properties, tiff, scratch, state["writer"])
        next_out = int(state["next_out"])
    else:
        writer = _writer(partial, out_shape, geo.label_dtype, properties, tiff, scratch, None)
        next_out = 0
    exporter = _Exporter(plan, geo, writer, next_out, tail)
    network_threshold = heap.mmap_threshold()
    rows = _Rows(readers, plan, geo, predictor)
    plane = raw_shape[1] * raw_shape[2]
    disable = not sys.stderr.isatty() if progress is None else not progress
    start = time.perf_counter()
    voxels = 0
    try:
        # The loop's arrays get their own mappings; only the forward passes use the heap (module docstring).
        bar = tqdm(total=len(plan.slabs), initial=k0, desc=f"{case} (streamed)", unit="slab", disable=disable)
        with heap.map_large_allocations(), torch.inference_mode(), bar:
            for k in range(k0, len(plan.slabs)):
                b0, b1 = plan.slabs[k]
                tiles = offsets[b0 * tpp : min(len(offsets), b1 * tpp)]
                w0 = int(tiles[0, 0])
                w1 = int(tiles[:, 0].max()) + geo.depth
                # Shift the window: rows [w0, win1) carry over (accumulated sums and preprocessed rows).
                keep = max(0, win1 - w0) if win1 > w0 >= win0 else 0
                if keep:
                    s = w0 - win0
                    _shift_rows(acc, s, keep, axis=1)
                    _shift_rows(wts, s, keep, axis=0)
                    valid0, valid1 = max(src_valid[0], w0), src_valid[1]
                    if valid1 > valid0:
                        _shift_rows(src[:, valid0 - w0 :], w0 - win0, valid1 - valid0, axis=1)
                    src_valid = (valid0, valid1) if valid1 > valid0 else (w0, w0)
                else:
                    src_valid = (w0, w0)
                acc[:, keep:] = 0
                wts[keep:] = 0
                win0, win1 = w0, w1
                if src_valid[1] < w1:
                    t = time.perf_counter()
                    rows.fill(src, w0, src_valid[1], w1)
                    clock["read"] += time.perf_counter() - t
                src_valid = (w0, w1)
                local = tiles.copy()
                local[:, 0] -= w0
                for start_tile in range(0, len(local), tpp):
                    with heap.map_large_allocations(network_threshold):
                        _run_batch(predictor, source, local[start_tile : start_tile + tpp], acc, wts, importance,
                                   two_d, combos)
                final_end = int(offsets[b1 * tpp, 0]) if b1 * tpp < len(offsets) else plan.padded[0]
                t = time.perf_counter()
                written = exporter.export(acc, wts, w0, final_end)
                voxels += written * plane
                _save(scratch, k + 1, state, plan, acc, wts, w0, w1, final_end, exporter, writer)
                clock["write"] += time.perf_counter() - t
                bar.update()
                bar.set_postfix_str(f"{voxels / max(time.perf_counter() - start, 1e-9):.3g} voxels/s")
        t = time.perf_counter()
        writer.finish()
        os.replace(partial, output)
    finally:
        writer.close()
    shutil.rmtree(scratch, ignore_errors=True)
    clock["write"] += time.perf_counter() - t
    return {"slabs": len(plan.slabs), "resumed_from": k0, "estimate": plan.estimate, "seconds": clock}


def _writer(path: Path, shape, dtype, properties: dict, tiff: bool, scratch: Path, resume: dict | None):
    """The label writer of `path`: a tiled OME-TIFF (`tiff`) or NIfTI (`.nii.gz` compressed)."""
    if tiff:
        return TiffSlabWriter(path, shape, dtype, properties, scratch=scratch, resume=resume)
    return NiftiSlabWriter(path, shape, dtype, properties, compressed=path.name.lower().endswith(".gz"),
                           scratch=scratch, resume=resume)


def _shift_rows(a: np.ndarray, shift: int, count: int, axis: int) -> None:
    """Moves rows [shift, shift + count) of `a` along `axis` to [0, count), one row at a time (no
    temporary the size of the rows)."""
    if shift == 0:
        return
    for i in range(count):
        if axis == 0:
            a[i] = a[shift + i]
        else:
            a[:, i] = a[:, shift + i]


def _write_rows(path: Path, a: np.ndarray, axis: int) -> None:
    """Writes `a` in C order, one row along `axis` at a time (no copy of the whole), to `path` atomically."""
    tmp = path.with_name("." + path.name)
    with open(tmp, "wb") as f:
        for i in range(a.shape[axis]):
            np.ascontiguousarray(a[i] if axis == 0 else a[:, i]).tofile(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_rows(path: Path, shape: Sequence[int], axis: int) -> np.ndarray:
    """What `_write_rows` wrote, as an array of `shape` (rows along `axis` first in the file)."""
    shape = [int(n) for n in shape]
    rows = np.fromfile(path, dtype=np.float32)
    if axis == 0:
        return rows.reshape(shape)
    return np.ascontiguousarray(rows.reshape([shape[1], shape[0], *shape[2:]]).swapaxes(0, 1))


def _load_state(scratch: Path, k: int, state: dict) -> dict:
    shapes = state["arrays"]
    return {name: _read_rows(scratch / f"state-{k}-{name}.raw", shape, axis) for name, (shape, axis) in shapes.items()}


def _save(scratch: Path, k: int, state: dict, plan: StreamPlan, acc, wts, w0: int, w1: int, final_end: int,
          exporter: _Exporter, writer: NiftiSlabWriter) -> None:
    """Records slab k as finished: the carried rows, the export tail, the writer's checkpoint."""
    if k == len(plan.slabs):
        return
    carry = slice(final_end - w0, w1 - w0)
    arrays = {"acc": (acc[:, carry], 1), "weights": (wts[carry], 0)}
    if exporter.tail is not None:
        arrays["tail_acc"], arrays["tail_weights"] = (exporter.tail[1], 1), (exporter.tail[2], 0)
    for name, (a, axis) in arrays.items():
        _write_rows(scratch / f"state-{k}-{name}.raw", a, axis)
    state.update(
        slab=k, window=[final_end, w1], next_out=exporter.next_out, writer=writer.checkpoint(),
        tail_first=exporter.tail[0] if exporter.tail is not None else None,
        arrays={name: [list(a.shape), axis] for name, (a, axis) in arrays.items()},
    )
    write_json_atomic(state, scratch / "progress.json")
    for old in scratch.glob(f"state-{k - 1}-*.raw"):
        with contextlib.suppress(FileNotFoundError):
            old.unlink()


# --- deciding ---------------------------------------------------------------------------------------


def in_memory_bytes(predictor: Any, paths: Sequence[Path]) -> int | None:
    """About how many bytes predicting the case in memory takes (image, its normalized and
    resampled copies, the accumulator and weights, the labels), from the files' headers; None for
    2D images and files whose header cannot be read (they are never streamed)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(paths[0]))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    size = reader.GetSize()
    if reader.GetDimension() != 3 or size[2] <= 1:
        return None
    spacing = [abs(float(s)) for s in reader.GetSpacing()[::-1]]
    try:
        geo = _Geometry(predictor, size[::-1], {"spacing": spacing})
    except (KeyError, IndexError, ValueError):  # plans this estimate does not understand: never streamed
        return None
    voxels = float(np.prod(size))
    scale = float(np.prod([s / t for s, t in zip(geo.spacing, geo.target)]))
    cin, cout = len(paths), geo.cout
    return int(voxels * (8 * cin + 5) + voxels * scale * 4 * (cin + cout + 1))
