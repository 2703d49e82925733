"""TIFF (.tif, .tiff): 2D pages as natural images, 3D stacks with a JSON spacing sidecar.

nnU-Net reads `.tif` with NaturalImage2DIO when the file is 2D and falls back to Tiff3DIO when it is
a stack; `.tiff` always goes to Tiff3DIO. We decide by the file's content for both endings:

- (y, x) or (y, x, 3|4) samples (tifffile axes ending in 'S'): a natural image, (C, 1, y, x), spacing
  (999, 1, 1).
- (z, y, x): a volume, (1, z, y, x), spacing (z, y, x) from the sidecar `<case>.json` holding
  `{"spacing": [z, y, x]}`, next to the file: for an image `case_0000.tif` it is `case.json` (the
  channel suffix dropped), for a segmentation `case.tif` it is `case.json`. Without a sidecar the
  spacing is (1, 1, 1) and a warning is logged, as in nnU-Net.

tifffile reports a truncated stack as a warning and returns fewer pages; we turn its warnings
during a read into an `ImageFileError`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fastseg.io.atomic import atomic_path, write_json_atomic
from fastseg.io.dtypes import image_storage_array, seg_storage_dtype
from fastseg.io.errors import ImageFileError
from fastseg.io.format_base import Role, split_ending
from fastseg.io.natural2d import NATURAL_SPACING, natural_array, natural_pixels

logger = logging.getLogger(__name__)

_CHANNEL_SUFFIX = re.compile(r"_\d{4}$")


def sidecar_path(path: Path, role: Role) -> Path:
    """The spacing sidecar of a 3D TIFF: `case.json` for `case_0000.tif` (image) or `case.tif` (seg)."""
    stem, _ = split_ending(path)
    if role == "image":
        stem = _CHANNEL_SUFFIX.sub("", stem)
    return Path(path).with_name(stem + ".json")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _tifffile_warnings() -> Iterator[list[str]]:
    log = logging.getLogger("tifffile")
    handler = _Collect()
    log.addHandler(handler)
    try:
        yield handler.messages
    finally:
        log.removeHandler(handler)


def _read_spacing(sidecar: Path) -> list[float]:
    try:
        spacing = json.loads(sidecar.read_text())["spacing"]
        values = [float(s) for s in spacing]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ImageFileError(f'{sidecar}: expected JSON {{"spacing": [z, y, x]}} ({type(e).__name__}: {e})') from None
    if len(values) != 3 or not all(v > 0 for v in values):
        raise ImageFileError(f"{sidecar}: spacing must be 3 positive numbers (z, y, x), got {spacing}")
    return values


class TiffFormat:
    """Reads and writes .tif/.tiff: 2D as natural images, 3D with a spacing sidecar."""

    name = "TIFF"
    file_endings = (".tif", ".tiff")

    def read(self, path: Path, role: Role) -> tuple[np.ndarray, dict]:
        import tifffile

        path = Path(path)
        if not path.is_file():
            raise ImageFileError(f"{path}: file not found")
        with _tifffile_warnings() as warnings:
            try:
                with tifffile.TiffFile(path) as tif:
                    series = tif.series[0]
                    axes = series.axes
                    pixels = series.asarray()
            except Exception as e:  # tifffile raises many types for corrupt files
                raise ImageFileError(f"{path}: cannot be read as a TIFF ({type(e).__name__}: {e})") from None
        if warnings:
            raise ImageFileError(f"{path}: the TIFF is truncated or corrupt ({warnings[0]})")
        if pixels.ndim == 2 or (pixels.ndim == 3 and axes.endswith("S") and pixels.shape[-1] in (3, 4)):
            return natural_array(pixels, path, role), {"spacing": list(NATURAL_SPACING)}
        if pixels.ndim != 3:
            raise ImageFileError(
                f"{path}: TIFF of shape {pixels.shape} (axes {axes}); expected a 2D image or a 3D stack"
            )
        sidecar = sidecar_path(path, role)
        if sidecar.is_file():
            spacing = _read_spacing(sidecar)
        else:
            logger.warning("%s: no spacing sidecar %s; assuming spacing (1, 1, 1)", path, sidecar.name)
            spacing = [1.0, 1.0, 1.0]
        if pixels.dtype == np.bool_:
            pixels = pixels.astype(np.uint8)
        return pixels[None], {"spacing": spacing}

    def write(self, array: np.ndarray, path: Path, properties: dict, role: Role) -> None:
        import tifffile

        a = np.asarray(array)
        spacing = [float(s) for s in properties.get("spacing", NATURAL_SPACING)]
        natural = spacing[0] >= NATURAL_SPACING[0]  # nnU-Net's marker of a 2D image
        rgb = role == "image" and a.shape[0] in (3, 4) and (a.ndim == 3 or (a.ndim == 4 and a.shape[1] == 1))
        is_2d = a.ndim == 2 or (natural and ((a.ndim == 3 and a.shape[0] == 1) or rgb))
        if is_2d:
            pixels = natural_pixels(a, path, role, max_dtype=np.uint32) if role == "seg" else _natural_float(a, path)
            with atomic_path(path) as tmp:
                tifffile.imwrite(
                    tmp, pixels, compression="zlib", photometric="rgb" if pixels.ndim == 3 else "minisblack"
                )
            return
        if a.ndim != 3:
            raise ValueError(f"cannot write {path}: a 3D TIFF {role} must have shape (z, y, x), got {a.shape}")
        a = a.astype(seg_storage_dtype(a), copy=False) if role == "seg" else image_storage_array(a)
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, np.ascontiguousarray(a), compression="zlib", photometric="minisblack")
        write_json_atomic({"spacing": spacing}, sidecar_path(path, role))


def _natural_float(a: np.ndarray, path: Path) -> np.ndarray:
    """TIFF stores any dtype: drop the dummy axis and move RGB(A) last, keeping the values."""
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    elif a.ndim == 3 and a.shape[0] in (3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim not in (2, 3):
        raise ValueError(f"cannot write {path}: a 2D image must be (y, x), (1, y, x) or (3|4, y, x), got {a.shape}")
    return np.ascontiguousarray(a if a.dtype != np.bool_ else a.astype(np.uint8))
