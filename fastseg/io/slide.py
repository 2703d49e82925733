"""Whole-slide images read lazily, and tiled pyramidal label TIFFs written from rows on disk.

Reading (tifffile; nothing else needed). A slide is an SVS file, a pyramidal TIFF (levels as
SubIFDs or as reduced pages) or an OME-TIFF, RGB(A) or any number of 8/16-bit samples. Its
levels are `SlideLevel`s, largest first; `Slide.read_rows(level, y0, y1)` decodes only the tiles
(or strips) that rows y0..y1 of that level cross, keeping the last decoded row of tiles, so a
caller walking down the slide decodes each tile once. `Slide.read_region(level, y0, y1, x0, x1)`
decodes only the tiles the region crosses and keeps none, so its memory does not depend on the
slide's width (a strip-organized level, whose strips span the width, is read by rows).

Pixel size (micrometres per pixel at level 0), the first that the file has:
1. Aperio's `MPP = m` in the SVS ImageDescription;
2. OME-XML's `PhysicalSizeX` of the first image (converted from its `PhysicalSizeXUnit`: m, mm,
   µm, nm; micrometres when the unit is absent);
3. the TIFF XResolution tag with ResolutionUnit centimetre (10 000 / value) or inch (25 400 / value).
Otherwise it is unknown (None). A level's pixel size is level 0's times level 0's width over its own.

A file with a single level that is not an SVS file (whose thumbnail serves as the low-resolution
view) is not a slide: `open_slide` refuses it, naming the file, so that it is predicted as an
ordinary image or written as a pyramid first.

Writing. `LabelScratch` is a raw row-major file of labels on disk (rows or blocks of columns
written as they are finished, read back with plain reads, never mapped, so they do not count
towards the process's memory), and `write_label_pyramid` turns it into a tiled, zlib-compressed
pyramidal TIFF, reading one output tile at a time (level 0
plus SubIFDs halving each axis until one tile holds the level; every lower level takes every 2**k-th
pixel, nearest neighbour, so labels stay labels), tiles written from generators, with the pixel
size as resolution tags, written to a temporary and renamed.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastseg.io.atomic import atomic_path
from fastseg.io.errors import ImageFileError

__all__ = [
    "SLIDE_ENDINGS",
    "LabelScratch",
    "Slide",
    "SlideLevel",
    "is_slide_file",
    "open_slide",
    "write_label_pyramid",
]

#: File endings that are always read as slides; .tif/.tiff files are slides when they hold a pyramid.
SLIDE_ENDINGS = (".svs",)
_TIFF_ENDINGS = (".tif", ".tiff", ".svs", ".btf", ".tf8")
_UNITS_UM = {"m": 1e6, "mm": 1e3, "cm": 1e4, "µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "nm": 1e-3}


@dataclass(frozen=True)
class SlideLevel:
    """One resolution of a slide.

    Attributes:
        index: 0 for full resolution, larger for coarser.
        shape: (height, width) in pixels.
        samples: samples (channels) per pixel.
        mpp: micrometres per pixel, None when the slide does not say.
    """

    index: int
    shape: tuple[int, int]
    samples: int
    mpp: float | None


def _mpp_from_svs(description: str) -> float | None:
    m = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", description or "")
    try:
        return float(m.group(1)) if m else None
    except ValueError:
        return None


def _mpp_from_ome(xml: str) -> float | None:
    m = re.search(r"<Pixels\b[^>]*>", xml or "")
    if not m:
        return None
    size = re.search(r'PhysicalSizeX="([^"]+)"', m.group(0))
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', m.group(0))
    try:
        value = float(size.group(1)) if size else None
    except ValueError:
        return None
    if value is None:
        return None
    factor = _UNITS_UM.get(unit.group(1) if unit else "µm")
    return value * factor if factor is not None else None


def _mpp_from_resolution(page) -> float | None:
    tag = page.tags.get("XResolution")
    unit = page.tags.get("ResolutionUnit")
    if tag is None or unit is None:
        return None
    num, den = tag.value if isinstance(tag.value, tuple) else (tag.value, 1)
    if not num or not den:
        return None
    per_unit = num / den
    factor = {2: 25400.0, 3: 10000.0}.get(int(unit.value))
    return factor / per_unit if factor else None


def is_slide_file(path: str | os.PathLike) -> bool:
    """Whether `path` is read as a whole-slide image: an .svs file, or a TIFF holding several
    resolutions (tifffile's series levels). Cheap: reads the file's header only."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(SLIDE_ENDINGS):
        return True
    if not name.endswith(_TIFF_ENDINGS) or not path.is_file():
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return tif.is_svs or len(tif.series[0].levels) > 1
    except Exception:  # noqa: BLE001 -- not readable as a TIFF: not a slide (read errors come later)
        return False


class Slide:
    """A whole-slide image opened for lazy reading (`open_slide`). Use as a context manager.

    Attributes:
        path: the file.
        levels: its levels, largest first.
        mpp: micrometres per pixel at level 0, or None.
    """

    def __init__(self, path: Path, tif, levels: list[SlideLevel], pages: list, thumbnail_page) -> None:
        self.path = path
        self._tif = tif
        self.levels = levels
        self.mpp = levels[0].mpp
        self._pages = pages
        self._thumbnail_page = thumbnail_page
        self._cache: dict[int, tuple[int, np.ndarray]] = {}  # level -> (segment row, its pixels)

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._cache.clear()
        self._tif.close()

    def fingerprint(self) -> dict:
        """What identifies the file for resuming: resolved path, size, modification time, level shapes."""
        stat = self.path.stat()
        return {
            "path": str(self.path.resolve()),
            "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "levels": [list(level.shape) for level in self.levels],
        }

    def _decode(self, level: int, index: int) -> np.ndarray | None:
        """Tile (or strip) `index` of a level, decoded: (segment height, segment width, samples) as
        the file stores it, or None for a sparse (empty) tile."""
        page = self._pages[level]
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        if count == 0:
            return None
        fh = self._tif.filehandle
        try:
            fh.seek(offset)
            data = fh.read(count)
            pixels, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as e:  # noqa: BLE001 -- codecs raise many types for corrupt data
            raise ImageFileError(
                f"{self.path}: tile {index} of level {level} cannot be decoded ({type(e).__name__}: {e}); "
                "the file is truncated or corrupt"
            ) from None
        if pixels is None:
            raise ImageFileError(f"{self.path}: tile {index} of level {level} is missing (truncated file)")
        pixels = np.asarray(pixels)
        return pixels.reshape(pixels.shape[-3:])

    def _segments(self, level: int) -> tuple[int, int, int]:
        """(segment height, segment width, segments per row) of a level's tiles or strips."""
        page = self._pages[level]
        height, width = self.levels[level].shape
        seg_h = page.tilelength if page.is_tiled else page.rowsperstrip or height
        seg_w = page.tilewidth if page.is_tiled else width
        return seg_h, seg_w, math.ceil(width / seg_w)

    def _segment_row(self, level: int, row: int) -> np.ndarray:
        """Row `row` of the level's tiles (or strips), decoded: (segment height, width, samples)."""
        cached = self._cache.get(level)
        if cached is not None and cached[0] == row:
            return cached[1]
        page = self._pages[level]
        height, width = self.levels[level].shape
        samples = self.levels[level].samples
        seg_h, seg_w, per_row = self._segments(level)
        rows_here = min(seg_h, height - row * seg_h)
        out = np.zeros((rows_here, width, samples), dtype=page.dtype)
        for col in range(per_row):
            pixels = self._decode(level, row * per_row + col)
            if pixels is None:
                continue  # a sparse (empty) tile
            pixels = pixels[: rows_here, : width - col * seg_w]
            out[:, col * seg_w : col * seg_w + pixels.shape[1]] = pixels[..., :samples]
        self._cache[level] = (row, out)
        return out

    def read_region(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows y0..y1 and columns x0..x1 (exclusive) of a level: (y1 - y0, x1 - x0, samples) in the
        file's dtype. Decodes the tiles the region crosses and keeps none (a level stored in strips
        is read by rows, `read_rows`).

        Raises:
            ValueError: a region outside the level.
            ImageFileError: a tile that cannot be decoded (corrupt or truncated file).
        """
        height, width = self.levels[level].shape
        if not (0 <= y0 <= y1 <= height and 0 <= x0 <= x1 <= width):
            raise ValueError(
                f"region rows {y0}..{y1}, columns {x0}..{x1} lies outside level {level} of {self.path} ({height}x{width})"
            )
        page = self._pages[level]
        if not page.is_tiled:
            return np.ascontiguousarray(self.read_rows(level, y0, y1)[:, x0:x1])
        samples = self.levels[level].samples
        seg_h, seg_w, per_row = self._segments(level)
        out = np.zeros((y1 - y0, x1 - x0, samples), dtype=page.dtype)
        for row in range(y0 // seg_h, -(-y1 // seg_h)):
            top = row * seg_h
            for col in range(x0 // seg_w, -(-x1 // seg_w)):
                pixels = self._decode(level, row * per_row + col)
                if pixels is None:
                    continue
                left = col * seg_w
                a, b = max(y0, top), min(y1, top + seg_h, top + pixels.shape[0])
                c, d = max(x0, left), min(x1, left + seg_w, left + pixels.shape[1])
                out[a - y0 : b - y0, c - x0 : d - x0] = pixels[a - top : b - top, c - left : d - left, :samples]
        return out

    def read_rows(self, level: int, y0: int, y1: int) -> np.ndarray:
        """Rows y0..y1 (exclusive) of a level, all columns: (y1 - y0, width, samples) in the file's dtype.

        Raises:
            ValueError: rows outside the level.
            ImageFileError: a tile that cannot be decoded (corrupt or truncated file).
        """
        height, width = self.levels[level].shape
        if not 0 <= y0 <= y1 <= height:
            raise ValueError(f"rows {y0}..{y1} lie outside level {level} of {self.path} ({height} rows)")
        page = self._pages[level]
        seg_h = page.tilelength if page.is_tiled else page.rowsperstrip or height
        out = np.empty((y1 - y0, width, self.levels[level].samples), dtype=page.dtype)
        y = y0
        while y < y1:
            row = y // seg_h
            pixels = self._segment_row(level, row)
            top = row * seg_h
            stop = min(y1, top + pixels.shape[0])
            out[y - y0 : stop - y0] = pixels[y - top : stop - top]
            y = stop
        return out

    def read_level(self, level: int) -> np.ndarray:
        """A whole level, (height, width, samples): for small levels only (thumbnails, tests)."""
        return self.read_rows(level, 0, self.levels[level].shape[0])

    def low_resolution(self, max_pixels: int = 4_000_000) -> tuple[np.ndarray, float]:
        """The smallest view of the slide that the file holds: its coarsest level, or an SVS file's
        thumbnail when that is smaller. Returns (pixels (h, w, samples), level-0 pixels per pixel of it
        along y).

        Raises:
            ImageFileError: the smallest view has more than `max_pixels` pixels (default 4 000 000).
        """
        coarsest = self.levels[-1]
        height, _ = self.levels[0].shape
        if self._thumbnail_page is not None and self._thumbnail_page.shape[0] < coarsest.shape[0]:
            pixels = self._thumbnail_page.asarray()
            pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], -1)
        else:
            if coarsest.shape[0] * coarsest.shape[1] > max_pixels:
                raise ImageFileError(
                    f"{self.path}: its smallest level is {coarsest.shape[0]}x{coarsest.shape[1]} pixels, too large for a "
                    "low-resolution view; write the slide with more pyramid levels, or turn the tissue mask off"
                )
            pixels = self.read_level(coarsest.index)
        return pixels, height / pixels.shape[0]


def _series_pages(path: Path, tif) -> tuple[list, object]:
    """The level pages of the first series (largest first) and the SVS thumbnail page (or None)."""
    series = tif.series[0]
    pages = [level.keyframe for level in series.levels]
    thumbnail = None
    if tif.is_svs:
        for s in tif.series[1:]:
            if s.name.lower() == "thumbnail":
                thumbnail = s.keyframe
    return pages, thumbnail


def open_slide(path: str | os.PathLike) -> Slide:
    """Opens a whole-slide image for lazy reading.

    Raises:
        ImageFileError: the file is missing, not a TIFF, corrupt, holds a single level (not a
            pyramid; SVS files excepted) or pixels that are neither 2D nor 2D with samples, or
            stores its samples in separate planes. The message names the file.
    """
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise ImageFileError(f"{path}: file not found")
    try:
        tif = tifffile.TiffFile(path)
    except Exception as e:  # noqa: BLE001 -- tifffile raises many types for corrupt files
        raise ImageFileError(f"{path}: cannot be read as a TIFF ({type(e).__name__}: {e})") from None
    try:
        pages, thumbnail = _series_pages(path, tif)
        base = pages[0]
        if len(pages) < 2 and not tif.is_svs:
            raise ImageFileError(
                f"{path}: not a whole-slide image: it holds one level of {base.shape[0]}x{base.shape[1]} pixels and no "
                "pyramid; predict it as an ordinary image (without --slide), or write it as a pyramidal TIFF "
                "(subresolution levels) first"
            )
        levels = []
        for index, page in enumerate(pages):
            shape = tuple(int(s) for s in page.shape)
            if page.planarconfig == 2 and len(shape) == 3:
                raise ImageFileError(f"{path}: level {index} stores its samples in separate planes; not supported")
            if len(shape) == 2:
                samples = 1
            elif len(shape) == 3 and page.axes.endswith("S"):
                samples = shape[2]
            else:
                raise ImageFileError(f"{path}: level {index} has shape {shape} (axes {page.axes}); expected (y, x) or (y, x, samples)")
            if page.dtype is None or page.dtype.kind not in "uif":
                raise ImageFileError(f"{path}: level {index} holds pixels of type {page.dtype}; expected integers or floats")
            levels.append((index, shape[:2], samples))
        mpp = _mpp_from_svs(base.description) if tif.is_svs else None
        if mpp is None and tif.is_ome:
            mpp = _mpp_from_ome(tif.ome_metadata)
        if mpp is None:
            mpp = _mpp_from_resolution(tif.pages[0])
        width0 = levels[0][1][1]
        slide_levels = [
            SlideLevel(i, (int(s[0]), int(s[1])), n, None if mpp is None else mpp * width0 / s[1]) for i, s, n in levels
        ]
    except ImageFileError:
        tif.close()
        raise
    except Exception as e:  # noqa: BLE001
        tif.close()
        raise ImageFileError(f"{path}: cannot be read as a whole-slide TIFF ({type(e).__name__}: {e})") from None
    return Slide(path, tif, slide_levels, pages, thumbnail)


class LabelScratch:
    """A (height, width) label image on disk, row-major, written and read by rows with plain file
    I/O (never memory-mapped, so reading it back does not grow the process's resident memory).

    Args:
        path: the scratch file (created, or reopened with `keep=True`).
        shape: (height, width).
        dtype: uint8 or uint16 labels.
        keep: keep an existing file's content (resuming) instead of starting from an empty one.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, int], dtype: np.dtype, keep: bool = False) -> None:
        self.path = Path(path)
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        nbytes = self.shape[0] * self.shape[1] * self.dtype.itemsize
        mode = os.O_RDWR | os.O_CREAT | (0 if keep else os.O_TRUNC)
        self._fd = os.open(self.path, mode, 0o644)
        os.ftruncate(self._fd, nbytes)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> LabelScratch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _row_bytes(self) -> int:
        return self.shape[1] * self.dtype.itemsize

    def write_rows(self, y0: int, rows: np.ndarray) -> None:
        """Writes rows (n, width) starting at row y0 and flushes them to the file."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.ndim != 2 or rows.shape[1] != self.shape[1] or y0 < 0 or y0 + rows.shape[0] > self.shape[0]:
            raise ValueError(f"rows of shape {rows.shape} at row {y0} do not fit the scratch image {self.shape}")
        data = memoryview(rows).cast("B")
        offset = y0 * self._row_bytes()
        while data:
            written = os.pwrite(self._fd, data, offset)
            data, offset = data[written:], offset + written
        os.fsync(self._fd)

    def write_block(self, y0: int, x0: int, block: np.ndarray) -> None:
        """Writes a block (n, w) at row y0, column x0, one row at a time (not flushed: `sync`)."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        n, w = block.shape if block.ndim == 2 else (-1, -1)
        if n < 0 or y0 < 0 or x0 < 0 or y0 + n > self.shape[0] or x0 + w > self.shape[1]:
            raise ValueError(f"a block of shape {block.shape} at ({y0}, {x0}) does not fit the scratch image {self.shape}")
        size, item = self._row_bytes(), self.dtype.itemsize
        for i in range(n):
            data, offset = memoryview(block[i]).cast("B"), (y0 + i) * size + x0 * item
            while data:
                written = os.pwrite(self._fd, data, offset)
                data, offset = data[written:], offset + written

    def sync(self) -> None:
        """Flushes what was written to the file."""
        os.fsync(self._fd)

    def read_block(self, y0: int, y1: int, step: int, x0: int, x1: int) -> np.ndarray:
        """Rows y0, y0 + step, ... below y1 and columns x0, x0 + step, ... below x1: (n, m). Reads
        one row's span of columns at a time."""
        rows, cols = range(y0, y1, step), range(x0, x1, step)
        out = np.empty((len(rows), len(cols)), dtype=self.dtype)
        size, item = self._row_bytes(), self.dtype.itemsize
        span = (x1 - x0) * item
        for i, y in enumerate(rows):
            out[i] = np.frombuffer(os.pread(self._fd, span, y * size + x0 * item), dtype=self.dtype)[::step]
        return out

    def read_rows(self, y0: int, y1: int, step: int = 1) -> np.ndarray:
        """Rows y0, y0 + step, ... below y1: (n, width)."""
        rows = range(y0, y1, step)
        out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
        size = self._row_bytes()
        if step == 1 and len(rows):
            buf = os.pread(self._fd, size * len(rows), y0 * size)
            out[:] = np.frombuffer(buf, dtype=self.dtype).reshape(out.shape)
            return out
        for i, y in enumerate(rows):
            out[i] = np.frombuffer(os.pread(self._fd, size, y * size), dtype=self.dtype)
        return out


def pyramid_shapes(shape: tuple[int, int], tile: int) -> list[tuple[int, int]]:
    """Level shapes of a label pyramid: level k is ceil(shape / 2**k), down to the first level that
    fits in one tile."""
    shapes = [tuple(int(s) for s in shape)]
    while max(shapes[-1]) > tile:
        k = len(shapes)
        shapes.append((math.ceil(shape[0] / 2**k), math.ceil(shape[1] / 2**k)))
    return shapes


def write_label_pyramid(
    path: str | os.PathLike,
    read_block: Callable[[int, int, int, int, int], np.ndarray],
    shape: tuple[int, int],
    dtype: np.dtype,
    *,
    tile: int = 512,
    mpp: float | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> Path:
    """Writes a label image, read row by row, as a tiled pyramidal TIFF, atomically.

    Args:
        path: the output .tif.
        read_block: `read_block(y0, y1, step, x0, x1)` gives rows y0, y0 + step, ... below y1 and
            columns x0, x0 + step, ... below x1 of level 0, (n, m), e.g. `LabelScratch.read_block`;
            called once per output tile, so memory does not grow with the image's width.
        shape: level 0's (height, width).
        dtype: uint8 or uint16.
        tile: tile edge in pixels, a multiple of 16 (default 512).
        mpp: micrometres per pixel of level 0, written as XResolution/YResolution per centimetre
            (each lower level's scaled); None (default) writes no resolution.
        on_rows: called with the number of level-0 rows written after each row of tiles (progress).

    Returns:
        `path`.
    """
    import tifffile

    if tile <= 0 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    path = Path(path)
    shapes = pyramid_shapes(shape, tile)

    def tiles(k: int) -> Iterator[np.ndarray]:
        height, width = shapes[k]
        factor = 2**k
        for top in range(0, height, tile):
            bottom = min(height, top + tile)
            for left in range(0, width, tile):
                right = min(width, left + tile)
                block = np.zeros((tile, tile), dtype=dtype)
                part = read_block(top * factor, min(shape[0], bottom * factor), factor, left * factor,
                                  min(shape[1], right * factor))
                block[: part.shape[0], : part.shape[1]] = part
                yield block
            if k == 0 and on_rows is not None:
                on_rows(bottom - top)

    def resolution(k: int) -> dict:
        if mpp is None:
            return {}
        per_cm = 1e4 / (mpp * 2**k)
        return {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}

    common = {"tile": (tile, tile), "dtype": np.dtype(dtype), "compression": "zlib", "photometric": "minisblack"}
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=True) as writer:
            writer.write(tiles(0), shape=shapes[0], subifds=len(shapes) - 1, metadata=None, **common, **resolution(0))
            for k in range(1, len(shapes)):
                writer.write(tiles(k), shape=shapes[k], subfiletype=1, metadata=None, **common, **resolution(k))
    return path
