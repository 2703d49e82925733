"""2D natural images (.png, .bmp; 2D .tif through `fastseg.io.tiff`) with nnU-Net's NaturalImage2DIO
layout: an image reads as (C, 1, y, x), C = 1 for grayscale and 3 or 4 for RGB(A); spacing is
(999, 1, 1), the dummy first axis marking the image as 2D.

Pixel modes (Pillow): grayscale 8/16/32-bit and float, RGB and RGBA read as stored; 1-bit reads as
0/1. A palette image reads as RGB(A) when it is an image (as scikit-image, and so nnU-Net, reads
it) and as its palette indices when it is a segmentation (VOC-style label PNGs). Gray+alpha and
other modes are refused with a message saying how to convert.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastseg.io.atomic import atomic_path
from fastseg.io.dtypes import seg_storage_dtype
from fastseg.io.errors import ImageFileError
from fastseg.io.format_base import Role

#: The spacing nnU-Net assigns to 2D natural images, (z, y, x).
NATURAL_SPACING = (999.0, 1.0, 1.0)

_DIRECT_MODES = {"L", "RGB", "RGBA", "I", "F", "I;16", "I;16B", "I;16L", "1"}


def natural_array(pixels: np.ndarray, path: Path, role: Role) -> np.ndarray:
    """(y, x) or (y, x, 3|4) pixels -> (C, 1, y, x); segmentations must be single-channel."""
    if pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8)
    if pixels.ndim == 2:
        return pixels[None, None]
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        if role == "seg":
            raise ImageFileError(
                f"{path}: segmentation has {pixels.shape[-1]} color channels; save labels as a single-channel "
                "(grayscale or palette) image whose pixel values are the label values"
            )
        return np.moveaxis(pixels, -1, 0)[:, None]
    raise ImageFileError(
        f"{path}: 2D image of shape {pixels.shape}; expected (y, x) grayscale or (y, x, 3|4) RGB(A). "
        "Convert it to grayscale or RGB"
    )


def _read_pixels(path: Path, role: Role) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise ImageFileError(f"{path}: file not found")
    try:
        with Image.open(path) as im:
            if im.mode == "P" and role == "image":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode not in _DIRECT_MODES and im.mode != "P":
                raise ImageFileError(
                    f"{path}: pixel mode {im.mode!r} is not supported; save it as grayscale (L), RGB or RGBA"
                )
            im.load()
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageFileError(
            f"{path}: cannot be read as an image ({e}); the file is truncated or not a {path.suffix} file"
        ) from None


class NaturalImage2DFormat:
    """Reads and writes .png and .bmp as nnU-Net's NaturalImage2DIO does."""

    name = "NaturalImage2D"
    file_endings = (".png", ".bmp")

    def read(self, path: Path, role: Role) -> tuple[np.ndarray, dict]:
        return natural_array(_read_pixels(Path(path), role), path, role), {"spacing": list(NATURAL_SPACING)}

    def write(self, array: np.ndarray, path: Path, properties: dict, role: Role) -> None:
        pixels = natural_pixels(
            array, path, role, max_dtype=np.uint8 if Path(path).suffix.lower() == ".bmp" else np.uint16
        )
        if pixels.ndim == 3 and pixels.dtype != np.uint8:
            raise ValueError(f"cannot write {path}: RGB(A) {Path(path).suffix} stores 8-bit values, got {pixels.dtype}")
        from PIL import Image

        with atomic_path(path) as tmp:
            Image.fromarray(pixels).save(tmp, format=_PIL_FORMATS[Path(path).suffix.lower()])


_PIL_FORMATS = {".png": "PNG", ".bmp": "BMP"}


def natural_pixels(array: np.ndarray, path: Path, role: Role, max_dtype: type) -> np.ndarray:
    """(y, x), (1, y, x) or RGB(A) (C, y, x) / (C, 1, y, x) -> Pillow/tifffile pixels (y, x[, C]).

    Segmentations get nnU-Net's uint8/uint16 rule. Images must hold whole numbers that fit
    `max_dtype`, because PNG and BMP store integers; float images belong in .tif or .nii.gz.
    """
    a = np.asarray(array)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[0] in (3, 4) and role == "image":
        a = np.moveaxis(a, 0, -1)
    elif a.ndim != 2:
        raise ValueError(
            f"cannot write {path}: a 2D {role} must have shape (y, x) or (1, y, x)"
            + (" (or (3|4, y, x) for RGB(A))" if role == "image" else "")
            + f", got {array.shape}"
        )
    if role == "seg":
        return np.ascontiguousarray(a.astype(seg_storage_dtype(a, max_dtype), copy=False))
    if a.dtype == np.uint8 or (a.dtype == np.uint16 and max_dtype is np.uint16):
        return np.ascontiguousarray(a)
    finite = a[np.isfinite(a)] if a.dtype.kind == "f" else a
    if (
        finite.size != a.size
        or (a.dtype.kind == "f" and (a != np.round(a)).any())
        or a.min() < 0
        or a.max() > np.iinfo(max_dtype).max
    ):
        raise ValueError(
            f"cannot write {path}: {Path(path).suffix} stores whole numbers in [0, {np.iinfo(max_dtype).max}], got "
            f"values in [{a.min()}, {a.max()}] ({a.dtype}); rescale/round them or write .tif/.nii.gz"
        )
    dtype = np.uint8 if a.max() <= 255 else np.uint16
    return np.ascontiguousarray(a.astype(dtype))
