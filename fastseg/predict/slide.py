"""Whole-slide prediction, streamed: rows of tiles through the network, labels to disk band by band.

A 2D model (RGB or any channel count) applied to one level of a whole-slide image that need not fit
in memory (`fastseg.io.slide`):

    pick the level  ->  tissue mask on the low-resolution view  ->  for each batch of tiles, in the
    sliding window's order: read the rows it needs, normalize, network (+ mirrors)  ->  accumulate
    into a band of rows  ->  rows no later tile touches: labels -> scratch file on disk  ->  at the
    end: pyramidal TIFF, atomically

Memory does not grow with the slide's width. The band (float32 accumulator and weights) and the
normalized input rows span the level's width and up to about two patch heights, which for a slide
100 000 pixels wide is gigabytes; both live in files beside the output (`_RowRing`: a ring of rows
on disk, copied in and out a region at a time with positioned reads and writes). What the process holds is a batch of
tiles, the columns one row of the sliding window's tiles covers, and blocks of `_COLUMNS` columns
read from the slide (decoding only the file's tiles they cross), normalized, zeroed or labelled.
The arithmetic is unchanged: the same tiles, batches and float32 sums in the same order.

The level. `--level N` is used as given. Otherwise the target pixel size is `--mpp M`, or the
model's: its dataset.json's `microns_per_pixel` (the pixel size of the training images, a fastseg
key) times the configuration's in-plane spacing from plans.json (nnU-Net gives natural 2D images a
spacing of 1 per pixel, so the spacing is in pixels of the training images). The level whose pixel
size is closest to it, by ratio, is read as it is (no resampling). A model without
`microns_per_pixel`, or a slide without a pixel size, is run on level 0.

The sliding window is the 2D predictor's (`fastseg.predict.sliding`), tile for tile: the same tile
positions (`fastseg.ops.sliding_window_offsets` over the level), the same batches of tiles and
mirrored copies through the network, the same Gaussian weights and float32 sums added in the same
order by `fastseg.ops.accumulate_tiles`, the same export (`fastseg.predict.export.export_case`). So
with the tissue mask off the labels equal, bit for bit, `Predictor.predict_array` on the whole level
read into memory -- provided that call neither crops nor resamples: the streamed predictor does not
crop the slide to its nonzero region (nnU-Net's first step; slides are rarely zero at their borders)
and reads the level at the model's spacing. Normalization is per pixel (the RGBTo01, CT and
NoNormalization schemes); schemes that use the whole image's statistics (ZScore, RescaleTo01) are
refused with an explanation, since a slide's statistics are not those of one training image.

Tissue mask (`tissue_mask`), on the slide's smallest view (its coarsest level or an SVS file's
thumbnail): for RGB(A) slides a pixel is tissue when its saturation (max - min) / max exceeds Otsu's
threshold of the view's saturations, clamped to [0.02, 0.10] (glass is nearly grey; the clamp
keeps the pale parts of a slide that is nearly all tissue, and keeps an empty slide's noise out);
for other slides when its mean intensity exceeds Otsu's threshold (fluorescence: tissue is bright).
A tile of the sliding window is predicted when at least `min_tissue_fraction` of its footprint on
the view is tissue (default 0.01); pixels that no predicted tile covers get label 0, and pixels
that some do are the Gaussian-weighted mean over those tiles only.

Resuming. Finished rows go to `.<output name>.scratch` beside the output, and
`.<output name>.progress.json` records how many rows are finished together with what they belong
to (the slide's path, size, modification time and levels; the model's checkpoints; level, step,
mirroring, batch, tissue settings). `resume=True` (`--continue`) checks the record against the run
and starts again from the first batch of tiles that touches an unfinished row, so the result equals
an uninterrupted run's. The output is written to a temporary and renamed; the scratch and the
record are removed after that.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastseg.io.atomic import atomic_path, write_json_atomic
from fastseg.io.slide import LabelScratch, Slide, open_slide, write_label_pyramid
from fastseg.ops import accumulate_tiles, gaussian_importance_map, normalize, sliding_window_offsets
from fastseg.predict.export import export_case
from fastseg.predict.sliding import accumulate_mirrored, mirror_combinations
from fastseg.runtime import heap

logger = logging.getLogger(__name__)

__all__ = [
    "SlideOptions",
    "SlideReport",
    "choose_level",
    "model_microns_per_pixel",
    "otsu_threshold",
    "partial_run_files",
    "predict_slide",
    "tissue_mask",
    "tile_tissue_fractions",
]

#: Normalization schemes that act on each pixel alone (a slide can be normalized tile by tile).
PER_PIXEL_SCHEMES = ("RGBTo01Normalization", "CTNormalization", "NoNormalization")
SATURATION_CLAMP = (0.02, 0.10)
#: Columns read, normalized, zeroed and labelled together: what the streamed run holds does not grow
#: with the slide's width.
_COLUMNS = 2048
_RECORD_VERSION = 1


@dataclass(frozen=True)
class SlideOptions:
    """How a slide is predicted.

    Args:
        level: pyramid level to predict (0 = full resolution); None (default): chosen by pixel size.
        mpp: target micrometres per pixel, overriding the model's; None (default): the model's.
        tissue_mask: skip tiles without tissue (default True).
        min_tissue_fraction: least tissue fraction of a tile's footprint to predict it, in [0, 1]
            (default 0.01).
        tile_size: output TIFF tile edge, a multiple of 16 (default 512).
        overlay: write a low-resolution PNG of the slide with the labels over it here (default None).
        batch_size: network inputs per forward pass; None (default): the predictor's, or on
            resuming the interrupted run's.
        progress: progress bar in tiles; None (default): only when stderr is a terminal.
    """

    level: int | None = None
    mpp: float | None = None
    tissue_mask: bool = True
    min_tissue_fraction: float = 0.01
    tile_size: int = 512
    overlay: Path | None = None
    batch_size: int | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.level is not None and self.level < 0:
            raise ValueError(f"level must be >= 0, got {self.level}")
        if self.mpp is not None and not self.mpp > 0:
            raise ValueError(f"mpp must be positive, got {self.mpp}")
        if not 0 <= self.min_tissue_fraction <= 1:
            raise ValueError(f"min_tissue_fraction must be in [0, 1], got {self.min_tissue_fraction}")
        if self.tile_size <= 0 or self.tile_size % 16:
            raise ValueError(f"tile_size must be a positive multiple of 16, got {self.tile_size}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class SlideReport:
    """What `predict_slide` did.

    Attributes:
        output: the written TIFF.
        level: the level predicted; shape: its (height, width); mpp: its pixel size (or None).
        tiles: sliding-window tiles of the level; predicted: those run through the network
            (this run and, when resumed, the interrupted one); skipped: those without tissue.
        resumed_from_row: first row this run predicted (0 unless resumed).
        seconds: wall time of the streamed prediction, of writing the TIFF, and in all.
        megapixels_per_second: level pixels predicted per second of streamed prediction.
    """

    output: Path
    level: int
    shape: tuple[int, int]
    mpp: float | None
    tiles: int
    predicted: int
    skipped: int
    resumed_from_row: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    megapixels_per_second: float = 0.0


def model_microns_per_pixel(model) -> float | None:
    """The model's pixel size in micrometres: dataset.json's `microns_per_pixel` times the
    configuration's in-plane spacing (the largest of its last two entries); None without the key."""
    value = model.dataset_json.get("microns_per_pixel")
    if value is None:
        return None
    try:
        mpp = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"dataset.json of {model.path}: microns_per_pixel must be a number, got {value!r}") from None
    if not mpp > 0:
        raise ValueError(f"dataset.json of {model.path}: microns_per_pixel must be positive, got {mpp}")
    return mpp * max(float(s) for s in model.config["spacing"][-2:])


def choose_level(slide: Slide, target_mpp: float | None, level: int | None = None) -> int:
    """The level to predict: `level` when given (checked), else the one whose pixel size is closest
    to `target_mpp` by ratio, else 0 (no target, or a slide without a pixel size)."""
    if level is not None:
        if not 0 <= level < len(slide.levels):
            raise ValueError(f"{slide.path}: level {level} does not exist; the slide has levels 0..{len(slide.levels) - 1}")
        return level
    if target_mpp is None:
        return 0
    if slide.mpp is None:
        logger.warning("%s: the slide does not state its pixel size; predicting level 0", slide.path)
        return 0
    return min(slide.levels, key=lambda lv: abs(math.log(lv.mpp / target_mpp))).index


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of `values`: the bin edge that maximizes the between-class variance of a
    `bins`-bin histogram over [min, max]; values above it are the upper class."""
    values = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)[:-1].astype(np.float64)
    w1 = values.size - w0
    s0 = np.cumsum(counts * centres)[:-1]
    m0 = s0 / np.maximum(w0, 1)
    m1 = (float((counts * centres).sum()) - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[1 + int(np.argmax(between))])


def tissue_mask(pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """Tissue pixels of a low-resolution view (h, w, samples), by the module's rule.

    Returns:
        (bool mask (h, w), the threshold used: on saturation for RGB(A), on mean intensity otherwise).
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[-1] in (3, 4):
        rgb = pixels[..., :3]
        top, bottom = rgb.max(-1), rgb.min(-1)
        saturation = np.where(top > 0, (top - bottom) / np.maximum(top, 1e-12), 0.0)
        threshold = float(np.clip(otsu_threshold(saturation), *SATURATION_CLAMP))
        return saturation > threshold, threshold
    grey = pixels.mean(-1)
    threshold = otsu_threshold(grey)
    return grey > threshold, threshold


def tile_tissue_fractions(mask: np.ndarray, level_shape: tuple[int, int], offsets: np.ndarray, patch: tuple[int, int]) -> np.ndarray:
    """Tissue fraction of each tile's footprint on `mask`, a view of the level scaled to mask.shape.

    A tile at (y, x) of size (h, w) covers mask rows floor(y * mh / H) .. ceil((y + h) * mh / H)
    and the columns likewise.
    """
    mh, mw = mask.shape
    height, width = level_shape
    integral = np.zeros((mh + 1, mw + 1), dtype=np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask, 0, dtype=np.int64), 1)
    y, x = offsets[:, 0].astype(np.int64), offsets[:, 1].astype(np.int64)
    r0 = np.clip(y * mh // height, 0, mh - 1)
    r1 = np.clip(-(-(y + patch[0]) * mh // height), r0 + 1, mh)
    c0 = np.clip(x * mw // width, 0, mw - 1)
    c1 = np.clip(-(-(x + patch[1]) * mw // width), c0 + 1, mw)
    inside = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
    return inside / ((r1 - r0) * (c1 - c0))


# --- the run ----------------------------------------------------------------------------------------


def _check_model(predictor, slide: Slide) -> None:
    model = predictor.model
    if len(predictor.patch_size) != 2:
        raise ValueError(
            f"{model.path}: configuration {model.configuration} is 3D; whole-slide images need a 2D configuration (2d)"
        )
    samples = slide.levels[0].samples
    if samples != model.num_input_channels:
        raise ValueError(
            f"{slide.path}: the slide has {samples} channel(s) per pixel, the model {model.path.name} takes "
            f"{model.num_input_channels}; use a model trained on {samples}-channel images"
        )
    plan = predictor.case_plan
    stats = [s for s in plan.normalization_schemes if s not in PER_PIXEL_SCHEMES]
    if stats:
        raise ValueError(
            f"{model.path}: the model normalizes each image by its own statistics ({', '.join(sorted(set(stats)))}); "
            f"a slide is normalized tile by tile, which needs a per-pixel scheme ({', '.join(PER_PIXEL_SCHEMES)})"
        )
    if tuple(plan.transpose_forward) != (0, 1, 2):
        raise ValueError(f"{model.path}: plans with transpose_forward {list(plan.transpose_forward)} are not supported for slides")
    if predictor.postprocessing:
        raise ValueError("postprocessing (connected components over the whole image) is not available for whole-slide images")


def _normalized(pixels: np.ndarray, plan) -> np.ndarray:
    """Rows (n, width, samples) of the slide as the network's float32 input (C, n, width)."""
    data = np.ascontiguousarray(np.moveaxis(pixels, -1, 0), dtype=np.float32)
    out = np.empty(data.shape, dtype=np.float32)
    for c in range(data.shape[0]):
        props = plan.intensity_properties[c] or None
        out[c] = normalize(data[c], plan.normalization_schemes[c], intensity_properties=props)
    return out


def _model_identity(predictor) -> dict:
    model = predictor.model
    files = []
    for p in model.checkpoints:
        stat = Path(p).stat()
        files.append([str(Path(p).resolve()), stat.st_size, stat.st_mtime_ns])
    return {"folder": str(Path(model.path).resolve()), "configuration": model.configuration, "checkpoints": files}


def partial_run_files(output: Path) -> tuple[Path, Path]:
    """(scratch file, progress record) that a run writing `output` keeps beside it until it is done."""
    return output.with_name(f".{output.name}.scratch"), output.with_name(f".{output.name}.progress.json")


def _label_dtype(model) -> np.dtype:
    return np.dtype(np.uint8 if len(model.labels.foreground_labels) < 255 else np.uint16)


class _RowRing:
    """A float32 (channels, rows, width) array on disk of which `capacity` consecutive rows are held:
    row y lives in ring row y % capacity. Regions are copied in and out with one positioned read or
    write per channel and row (never memory-mapped: a mapping's page faults map the pages around each
    row too, which for wide rows adds tens of MiB), so the process holds only the region.

    Args:
        path: the scratch file (created, truncated; `remove` deletes it).
        channels, capacity, width: the array's shape.
    """

    def __init__(self, path: Path, channels: int, capacity: int, width: int) -> None:
        self.path, self.shape = Path(path), (int(channels), int(capacity), int(width))
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(self._fd, 4 * self.shape[0] * self.shape[1] * self.shape[2])

    def _rows(self, y0: int, y1: int) -> Iterator[tuple[int, int]]:
        """(row of the region, its offset in the file at channel 0, column 0) for rows y0..y1."""
        _, capacity, width = self.shape
        if y1 - y0 > capacity:
            raise ValueError(f"rows {y0}..{y1} exceed the ring's {capacity} rows")
        for y in range(y0, y1):
            yield y - y0, 4 * (y % capacity) * width

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows y0..y1, columns x0..x1: a (channels, y1 - y0, x1 - x0) copy."""
        channels, capacity, width = self.shape
        out = np.empty((channels, y1 - y0, x1 - x0), dtype=np.float32)
        plane = 4 * capacity * width
        for i, offset in self._rows(y0, y1):
            for c in range(channels):
                buffer = memoryview(out[c, i]).cast("B")
                if os.preadv(self._fd, [buffer], c * plane + offset + 4 * x0) != len(buffer):
                    raise OSError(f"{self.path}: short read")
        return out

    def write(self, y0: int, x0: int, block: np.ndarray) -> None:
        """Stores a (channels, n, w) block at row y0, column x0."""
        channels, capacity, width = self.shape
        block = np.ascontiguousarray(block, dtype=np.float32)
        plane = 4 * capacity * width
        for i, offset in self._rows(y0, y0 + block.shape[1]):
            for c in range(channels):
                data, at = memoryview(block[c, i]).cast("B"), c * plane + offset + 4 * x0
                while data:
                    n = os.pwrite(self._fd, data, at)
                    data, at = data[n:], at + n

    def zero(self, y0: int, y1: int) -> None:
        """Sets rows y0..y1 to 0, `_COLUMNS` columns at a time."""
        width = self.shape[2]
        for x0 in range(0, width, _COLUMNS):
            x1 = min(width, x0 + _COLUMNS)
            self.write(y0, x0, np.zeros((self.shape[0], y1 - y0, x1 - x0), dtype=np.float32))

    def remove(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.path.unlink(missing_ok=True)


class _Band:
    """The float32 accumulator and weights (its last channel) of image rows [top, bottom), all
    columns, on disk (`_RowRing`)."""

    def __init__(self, path: Path, channels: int, capacity: int, width: int, top: int) -> None:
        self.ring = _RowRing(path, channels + 1, capacity, width)
        self.channels = channels
        self.top = self.bottom = top

    def reach(self, bottom: int) -> None:
        """Extends the band with zeroed rows down to `bottom`."""
        if bottom > self.bottom:
            self.ring.zero(self.bottom, bottom)
            self.bottom = bottom

    def drop(self, upto: int) -> None:
        """Forgets the rows above `upto` (the band then starts there, empty when `upto` is below it)."""
        self.top = max(self.top, upto)
        self.bottom = max(self.bottom, self.top)

    def accumulate(self, total, tiles: np.ndarray, importance: np.ndarray, patch: tuple[int, int]) -> None:
        """Adds the network outputs `total` (B, C, h, w) of `tiles` (B, 2), in order: each run of
        tiles in one row of the sliding window is added to a copy of the columns it covers."""
        start = 0
        while start < len(tiles):
            y = int(tiles[start, 0])
            end = start + 1
            while end < len(tiles) and int(tiles[end, 0]) == y:
                end += 1
            x0 = int(tiles[start:end, 1].min())
            x1 = int(tiles[start:end, 1].max()) + patch[1]
            region = self.ring.read(y, y + patch[0], x0, x1)
            local = tiles[start:end] - np.array([y, x0], dtype=tiles.dtype)
            accumulate_tiles(region[: self.channels], total[start:end], np.ascontiguousarray(local),
                             weights=region[self.channels], importance_map=importance)
            self.ring.write(y, x0, region)
            start = end


class _Rows:
    """Normalized input rows [top, bottom) of the level, read from the slide as later tiles need
    them, `_COLUMNS` columns at a time, on disk (`_RowRing`)."""

    def __init__(self, slide: Slide, level: int, plan, path: Path, capacity: int) -> None:
        self.slide, self.level, self.plan = slide, level, plan
        height, width = slide.levels[level].shape
        self.ring = _RowRing(path, len(plan.normalization_schemes), capacity, width)
        self.width = width
        self.top = self.bottom = 0

    def cover(self, top: int, bottom: int) -> None:
        """Rows [top, bottom) available (rows above `top` forgotten)."""
        if top >= self.bottom or top < self.top:
            self.top = self.bottom = top
        self.top = top
        if bottom > self.bottom:
            for x0 in range(0, self.width, _COLUMNS):
                x1 = min(self.width, x0 + _COLUMNS)
                pixels = self.slide.read_region(self.level, self.bottom, bottom, x0, x1)
                self.ring.write(self.bottom, x0, _normalized(pixels, self.plan))
                del pixels
            self.bottom = bottom

    def tile(self, y: int, x: int, patch: tuple[int, int]) -> np.ndarray:
        return self.ring.read(y, y + patch[0], x, x + patch[1])


def _ring_rows(chunks: list[np.ndarray], first: int, patch_height: int) -> int:
    """Rows the band and the input rows hold at most from batch `first` on: the lowest tile bottom
    so far minus each batch's top row."""
    most, reach = 0, 0
    for batch in chunks[first:]:
        top = int(batch[0, 0])
        reach = max(reach, int(batch[:, 0].max()) + patch_height)
        most = max(most, reach - top)
    return max(most, patch_height)


@contextlib.contextmanager
def _progress_bar(total: int, enabled: bool | None, initial: int = 0) -> Iterator[Any]:
    from tqdm import tqdm

    disable = not sys.stderr.isatty() if enabled is None else not enabled
    with tqdm(total=total, initial=initial, desc="Predicting slide", unit="tile", disable=disable) as bar:
        yield bar


def predict_slide(
    predictor,
    slide_path: str | Path,
    output: str | Path,
    options: SlideOptions = SlideOptions(),
    *,
    resume: bool = False,
) -> SlideReport:
    """Segments one whole-slide image into a tiled pyramidal TIFF, streamed (see the module docstring).

    Args:
        predictor: a `fastseg.predict.Predictor` of a 2D configuration.
        slide_path: the slide (.svs, pyramidal .tif/.tiff, OME-TIFF).
        output: the label TIFF to write (its folder is created).
        options: level, tissue mask, output tiles, overlay, batch size, progress (`SlideOptions`).
        resume: continue an interrupted run of the same slide, model and settings from its last
            finished row (default False: an earlier partial run is discarded).

    Returns:
        A `SlideReport`.

    Raises:
        ImageFileError: the slide cannot be read (named in the message).
        ValueError: a model that does not fit the slide (channels, 3D, per-image normalization), a
            level that does not exist, a partial run that belongs to another slide, model or settings.
    """
    from fastseg.predict.predictor import _torch_threads

    output = Path(output)
    start = time.perf_counter()
    with open_slide(slide_path) as slide:
        _check_model(predictor, slide)
        model = predictor.model
        target = options.mpp if options.mpp is not None else model_microns_per_pixel(model)
        level = choose_level(slide, target, options.level)
        shape = slide.levels[level].shape
        patch = tuple(int(p) for p in predictor.patch_size)
        small = shape[0] < patch[0] or shape[1] < patch[1]
        offsets = np.zeros((0, 2), dtype=np.int64) if small else sliding_window_offsets(shape, patch, predictor.step_size)
        keep = np.ones(len(offsets), dtype=bool)
        if options.tissue_mask and len(offsets):
            view, _ = slide.low_resolution()
            mask, threshold = tissue_mask(view)
            keep = tile_tissue_fractions(mask, shape, offsets, patch) >= options.min_tissue_fraction
            logger.info(
                "%s: tissue threshold %.3f, %.1f %% of the view is tissue; %d of %d tiles to predict",
                slide.path, threshold, 100 * mask.mean(), int(keep.sum()), len(keep),
            )
        kept = np.ascontiguousarray(offsets[keep])
        copies = 1 + len(mirror_combinations(predictor.mirror_axes))
        batch_size = options.batch_size or predictor.batch_size

        output.parent.mkdir(parents=True, exist_ok=True)
        scratch_path, record_path = partial_run_files(output)
        identity = {
            "version": _RECORD_VERSION,
            "slide": slide.fingerprint(),
            "level": level,
            "shape": list(shape),
            "model": _model_identity(predictor),
            "settings": {
                "step_size": predictor.step_size,
                "mirror_axes": list(predictor.mirror_axes),
                "tissue_mask": options.tissue_mask,
                "min_tissue_fraction": options.min_tissue_fraction if options.tissue_mask else None,
                "tiles": hashlib.sha1(kept.astype(np.int64).tobytes()).hexdigest(),
            },
        }
        finished = 0
        if resume and record_path.is_file() and scratch_path.is_file():
            record = _read_record(record_path)
            if options.batch_size is None and "batch_size" in record:
                batch_size = int(record["batch_size"])
            _check_record(record, identity, batch_size, record_path, slide.path)
            finished = int(record["finished_rows"])
            logger.info("%s: resuming at row %d of %d", slide.path, finished, shape[0])
        elif resume:
            logger.info("%s: no partial run to continue in %s; starting from the first row", slide.path, output.parent)
        tiles_per_pass = max(1, batch_size // copies)
        identity["batch_size"] = batch_size
        chunks = _batches(kept, tiles_per_pass, options.tissue_mask, patch[0])

        def record_rows(rows: int) -> None:
            write_json_atomic({**identity, "finished_rows": rows}, record_path)

        dtype = _label_dtype(model)
        t_stream = time.perf_counter()
        scratch = LabelScratch(scratch_path, shape, dtype, keep=finished > 0)
        with _discard_on_bad_input(scratch_path, record_path), scratch:
            if finished == 0:
                record_rows(0)
            if small:
                if finished < shape[0]:
                    _predict_small(predictor, slide, level, scratch)
                    record_rows(shape[0])
            else:
                with _torch_threads(predictor.threads):
                    done_before = _stream(
                        predictor, slide, level, chunks, patch, batch_size, scratch, finished, record_rows, options.progress
                    )
            stream_seconds = time.perf_counter() - t_stream
            t_write = time.perf_counter()
            mpp = slide.levels[level].mpp
            write_label_pyramid(output, scratch.read_block, shape, dtype, tile=options.tile_size, mpp=mpp)
            if options.overlay is not None:
                write_overlay(slide, scratch, Path(options.overlay))
            write_seconds = time.perf_counter() - t_write
        scratch_path.unlink(missing_ok=True)
        record_path.unlink(missing_ok=True)
    pixels = (shape[0] - finished) * shape[1]
    report = SlideReport(
        output=output,
        level=level,
        shape=shape,
        mpp=mpp,
        tiles=len(offsets),
        predicted=len(kept),
        skipped=len(offsets) - len(kept),
        resumed_from_row=finished,
        seconds={"predict": stream_seconds, "write": write_seconds, "total": time.perf_counter() - start},
        megapixels_per_second=pixels / 1e6 / max(stream_seconds, 1e-9),
    )
    if not small:
        logger.debug("%d tiles were predicted before this run", done_before)
    return report


def _batches(offsets: np.ndarray, tiles_per_pass: int, limit_rows: bool, patch_height: int) -> list[np.ndarray]:
    """The tiles (in the sliding window's order) in batches of `tiles_per_pass`, as the 2D predictor
    forms them. With `limit_rows` (tiles skipped by the tissue mask) a batch also ends before a tile
    that starts more than `patch_height` rows below the batch's first, so that the rows held in
    memory stay within two patch heights however sparse the tissue."""
    if not limit_rows:
        return [offsets[i : i + tiles_per_pass] for i in range(0, len(offsets), tiles_per_pass)]
    ys = offsets[:, 0]
    batches, start = [], 0
    for i in range(1, len(offsets) + 1):
        if i == len(offsets) or i - start == tiles_per_pass or ys[i] - ys[start] > patch_height:
            batches.append(offsets[start:i])
            start = i
    return batches


@contextlib.contextmanager
def _discard_on_bad_input(*paths: Path) -> Iterator[None]:
    """Removes the scratch and the progress record when the slide turns out unreadable (a corrupt
    tile): a rerun could not get further. Any other interruption keeps them for --continue."""
    from fastseg.io.errors import ImageFileError

    try:
        yield
    except ImageFileError:
        for path in paths:
            path.unlink(missing_ok=True)
        raise


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
        int(record["finished_rows"])
        return record
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path}: the progress record of the interrupted run cannot be read ({type(e).__name__}: {e}); "
            "rerun without --continue to start over"
        ) from None


def _check_record(record: dict, identity: dict, batch_size: int, path: Path, slide_path: Path) -> None:
    """The partial run belongs to this slide, model and settings, or a ValueError says what differs."""
    differ = [key for key in ("version", "slide", "level", "shape", "model", "settings") if record.get(key) != identity[key]]
    if record.get("batch_size") != batch_size:
        differ.append(f"batch_size (was {record.get('batch_size')}, now {batch_size}; pass --batch-size {record.get('batch_size')})")
    if differ:
        raise ValueError(
            f"{path}: the interrupted run there does not belong to this one ({slide_path}): its {', '.join(differ)} "
            "differ; rerun with the same slide, model and settings, or without --continue to start over"
        )


def _predict_small(predictor, slide: Slide, level: int, scratch: LabelScratch) -> None:
    """A level smaller than the patch: read whole and predicted in memory (the 2D predictor pads it)."""
    pixels = slide.read_level(level)
    data = np.moveaxis(pixels, -1, 0)[:, None].astype(np.float32)
    spacing = [999.0, *(float(s) for s in predictor.model.config["spacing"][-2:])]
    labels = predictor.predict_array(data, {"spacing": spacing})
    scratch.write_rows(0, labels[0])


def _export_block(band: _Band, y0: int, y1: int, x0: int, x1: int, model, spacing: list[float]) -> np.ndarray:
    """Labels of band rows y0..y1, columns x0..x1 (0 where no tile was added)."""
    region = band.ring.read(y0, y1, x0, x1)
    acc, weights = region[: band.channels], region[band.channels]
    rows, width = y1 - y0, x1 - x0
    props = {
        "spacing": spacing,
        "shape_before_cropping": (1, rows, width),
        "bbox_used_for_cropping": [[0, 1], [0, rows], [0, width]],
        "shape_after_cropping_and_before_resampling": (1, rows, width),
    }
    with np.errstate(divide="ignore", invalid="ignore"):
        labels = export_case(np.ascontiguousarray(acc)[:, None], np.ascontiguousarray(weights)[None], props, model)[0]
    labels[weights == 0] = 0
    return labels


def _stream(
    predictor, slide, level, chunks, patch, batch_size: int, scratch: LabelScratch, finished: int, record_rows, progress
) -> int:
    """Runs the batches of tiles that touch rows from `finished` on, writing finished rows to `scratch`.
    Returns the number of tiles an earlier run had predicted (progress bar start)."""
    import torch

    model = predictor.model
    height, width = scratch.shape
    spacing = [999.0, *(float(s) for s in model.config["spacing"][-2:])]
    combos = mirror_combinations(predictor.mirror_axes)
    dims = [tuple(a + 2 for a in combo) for combo in combos]
    importance = gaussian_importance_map(patch)
    first = next((k for k, c in enumerate(chunks) if int(c[:, 0].max()) + patch[0] > finished), len(chunks))
    done_tiles = sum(len(c) for c in chunks[:first])
    capacity = _ring_rows(chunks, first, patch[0])
    band = _Band(scratch.path.with_suffix(".band"), model.num_outputs, capacity, width, finished)
    rows = _Rows(slide, level, predictor.case_plan, scratch.path.with_suffix(".input"), capacity)
    written = finished
    t0 = time.perf_counter()

    def finish(upto: int) -> None:
        """Rows above `upto` are final: labels (zeros where the band ends) to the scratch file."""
        nonlocal written
        upto = min(upto, height)
        if upto <= written:
            band.drop(max(upto, band.top))
            return
        y = max(written, band.top)
        if written < band.top:  # rows no tile touched
            _write_zeros(scratch, written, band.top)
        end = min(upto, band.bottom)
        if end > y:
            for x0 in range(0, width, _COLUMNS):
                x1 = min(width, x0 + _COLUMNS)
                scratch.write_block(y, x0, _export_block(band, y, end, x0, x1, model, spacing))
        if upto > max(band.bottom, y):
            _write_zeros(scratch, max(band.bottom, y), upto)
        scratch.sync()
        band.drop(upto)
        written = upto
        record_rows(written)

    network_threshold = heap.mmap_threshold()
    try:
        # Arrays outside the forward passes get their own mappings (see fastseg.runtime.heap): they
        # neither fragment nor grow the heap the forward passes reuse.
        with _progress_bar(sum(len(c) for c in chunks), progress, initial=done_tiles) as bar, \
                heap.map_large_allocations(), torch.inference_mode():
            for k in range(first, len(chunks)):
                batch = chunks[k]
                top, bottom = int(batch[0, 0]), int(batch[:, 0].max()) + patch[0]
                if k > first:
                    finish(top)
                else:
                    band.top = band.bottom = top  # the band starts empty at the first tile
                band.reach(bottom)
                rows.cover(top, bottom)
                x = torch.stack([torch.from_numpy(rows.tile(int(y), int(c), patch)) for y, c in batch])
                with heap.map_large_allocations(network_threshold):
                    accumulate_mirrored(predictor.networks, x.to(predictor.device), dims, batch_size,
                                        lambda outputs, rows: band.accumulate(outputs.cpu(), batch[rows], importance, patch))
                bar.update(len(batch))
                elapsed = time.perf_counter() - t0
                if elapsed > 0:
                    bar.set_postfix_str(f"{(written - finished) * width / 1e6 / elapsed:.2f} MP/s", refresh=False)
            finish(height)
    finally:
        band.ring.remove()
        rows.ring.remove()
    return done_tiles


def _write_zeros(scratch: LabelScratch, y0: int, y1: int, block: int = 256) -> None:
    """Label 0 in rows y0..y1, `block` rows and `_COLUMNS` columns at a time."""
    width = scratch.shape[1]
    for y in range(y0, y1, block):
        n = min(block, y1 - y)
        for x0 in range(0, width, _COLUMNS):
            scratch.write_block(y, x0, np.zeros((n, min(_COLUMNS, width - x0)), dtype=scratch.dtype))


# --- overlay ------------------------------------------------------------------------------------------

#: Fill colours of labels 1, 2, ... (repeating).
OVERLAY_COLOURS = np.array(
    [[255, 0, 0], [0, 200, 0], [0, 80, 255], [255, 200, 0], [0, 220, 220], [220, 0, 220], [255, 128, 0], [128, 0, 255]],
    dtype=np.float32,
)


def write_overlay(slide: Slide, scratch: LabelScratch, path: Path, max_size: int = 1024, alpha: float = 0.45) -> Path:
    """A PNG of the slide's low-resolution view (at most `max_size` pixels along its longer side) with
    the labels (nearest neighbour from the scratch file) blended over it, written atomically."""
    from PIL import Image

    view, _ = slide.low_resolution(max_pixels=64_000_000)
    vh, vw = view.shape[:2]
    step = max(1, math.ceil(max(vh, vw) / max_size))
    view = view[::step, ::step]
    h, w = view.shape[:2]
    if view.shape[-1] >= 3:
        rgb = view[..., :3].astype(np.float32)
    else:
        grey = view[..., 0].astype(np.float32)
        lo, hi = float(grey.min()), float(grey.max())
        rgb = np.repeat(((grey - lo) / max(hi - lo, 1e-12) * 255)[..., None], 3, axis=-1)
    if view.dtype != np.uint8 and view.shape[-1] >= 3:
        rgb = rgb / max(float(rgb.max()), 1e-12) * 255
    height, width = scratch.shape
    ys = np.minimum(((np.arange(h) + 0.5) * height / h).astype(np.int64), height - 1)
    xs = np.minimum(((np.arange(w) + 0.5) * width / w).astype(np.int64), width - 1)
    labels = np.stack([scratch.read_rows(int(y), int(y) + 1)[0, xs] for y in ys])
    colour = OVERLAY_COLOURS[(labels.astype(np.int64) - 1) % len(OVERLAY_COLOURS)]
    fg = labels > 0
    rgb[fg] = (1 - alpha) * rgb[fg] + alpha * colour[fg]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8)).save(tmp, format="PNG")
    return path
