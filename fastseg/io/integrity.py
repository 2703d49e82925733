"""Detects truncated NIfTI and GIPL files, and NaN/Inf in NIfTI files: SimpleITK hides both.

NaN/Inf: ITK's NIfTI reader (niftilib) replaces non-finite float voxels with 0 on read, so no
reader built on SimpleITK (nnU-Net's included) ever sees them. `read_float_nifti` reads the voxels
of a float NIfTI file itself, in one pass (a .nii.gz is decompressed once), counts the non-finite
ones and zeroes them as niftilib does, so verification gets both the count and the array SimpleITK
would return (`fastseg.io.sitk_format` adds SimpleITK's geometry from the header, and reads every
float NIfTI file this way). `nifti_nonfinite_voxels` only counts.

ITK's NIfTI and GIPL readers zero-fill whatever is missing at the end of a short file (NRRD, MetaImage,
PNG and TIFF readers raise), so a copy that was cut off reads as an image whose last slices are
empty. We compare the number of bytes the header promises with the number the file holds:

- uncompressed: header size + voxel bytes against the file size (one `stat`);
- gzip: the same total against the gzip trailer's ISIZE field (uncompressed length mod 2**32, the
  last 4 bytes). A truncated stream ends with arbitrary bytes, which match only by a 2**-32 chance.
  When the trailer disagrees (a multi-member gzip, trailing padding) we fall back to decompressing
  the stream and counting, which is exact and also catches a stream that ends early.

Header layouts (all offsets in bytes):
  NIfTI-1: sizeof_hdr int32 = 348 @0, dim int16[8] @40, datatype int16 @70, bitpix int16 @72,
           vox_offset float32 @108
  NIfTI-2: sizeof_hdr int32 = 540 @0, datatype int16 @12, bitpix int16 @14, dim int64[8] @16,
           vox_offset int64 @168
  GIPL:    dims uint16[4] @0 (big-endian), image type uint16 @8, 256-byte header
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_GZIP_MAGIC = b"\x1f\x8b"
_GIPL_HEADER = 256
# GIPL image type -> bytes per voxel (ITK's GiplImageIO).
_GIPL_BYTES = {1: 1, 7: 1, 8: 1, 15: 2, 16: 2, 31: 4, 32: 4, 64: 4, 65: 8}


def _open(path: Path, compressed: bool):
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


# NIfTI datatype codes of the float types -> numpy dtype (byte order added from the header).
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _nifti_layout(head: bytes) -> tuple[str, int, int, int, int] | None:
    """(byte order, datatype code, bits per voxel, data offset, voxel count) of a NIfTI-1/2 header,
    or None when `head` is not a NIfTI header this module understands."""
    if len(head) < 4:
        return None
    for endian in "<>":
        (sizeof_hdr,) = struct.unpack(endian + "i", head[:4])
        if sizeof_hdr == 348 and len(head) >= 348:
            dim = struct.unpack(endian + "8h", head[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
            (vox_offset,) = struct.unpack(endian + "f", head[108:112])
            offset = max(int(vox_offset), 348)
            break
        if sizeof_hdr == 540 and len(head) >= 540:
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            dim = struct.unpack(endian + "8q", head[16:80])
            (vox_offset,) = struct.unpack(endian + "q", head[168:176])
            offset = max(int(vox_offset), 540)
            break
    else:
        return None
    if not 1 <= dim[0] <= 7 or bitpix <= 0 or bitpix % 8:
        return None
    voxels = 1
    for n in dim[1 : dim[0] + 1]:
        voxels *= max(int(n), 1)
    return endian, int(datatype), int(bitpix), offset, voxels


#: NIfTI magic strings of single-file images (.nii): NIfTI-1 at byte 344, NIfTI-2 at byte 4.
_NIFTI1_MAGIC = b"n+1\0"
_NIFTI2_MAGIC = b"n+2\0"


def _nifti_scaling(head: bytes, endian: str) -> tuple[float, float] | None:
    """(scl_slope, scl_inter) of a single-file NIfTI-1/2 header, or None for another kind of header
    (a separate .hdr/.img pair, Analyze)."""
    (sizeof_hdr,) = struct.unpack(endian + "i", head[:4])
    if sizeof_hdr == 348 and head[344:348] == _NIFTI1_MAGIC:
        return struct.unpack(endian + "2f", head[112:120])
    if sizeof_hdr == 540 and head[4:8] == _NIFTI2_MAGIC:
        return struct.unpack(endian + "2d", head[176:192])
    return None


def gunzip(data: bytes) -> bytes:
    """The content of a gzip stream, decompressed in one call.

    With the `deflate` package installed (libdeflate: about twice zlib's speed on the nearly
    incompressible voxels of noisy float images), a single-member stream is decompressed by it;
    several members, a damaged stream, or no `deflate`: the standard library's `gzip.decompress`
    (which raises the error that says what is wrong).
    """
    try:
        import deflate
    except ImportError:
        return gzip.decompress(data)
    try:
        return deflate.gzip_decompress(data)
    except Exception:  # noqa: BLE001 -- deflate.DeflateError; zlib decides and says what is wrong
        return gzip.decompress(data)


@dataclass(frozen=True)
class FloatNifti:
    """The voxels of a float NIfTI file as ITK's reader leaves them.

    Attributes:
        voxels: flat, in file order (x fastest), native byte order, NaN/Inf replaced by 0; a
            read-only view of the decompressed file when nothing had to be changed (copy before
            writing to it).
        nonfinite: how many voxels were NaN or Inf in the file.
    """

    voxels: np.ndarray
    nonfinite: int


def read_float_nifti(path: str | Path) -> FloatNifti | None:
    """Reads a float32/float64 NIfTI file's voxels in one pass, counting and zeroing NaN/Inf.

    Only files whose voxels ITK's reader returns unchanged but for the NaN/Inf it zeroes qualify: a
    single-file NIfTI-1/2 (.nii, .nii.gz) of datatype float32 or float64 without intensity scaling
    (scl_slope 0 or 1, scl_inter 0). Anything else returns None without reading the voxels.

    Args:
        path: a .nii or .nii.gz file (checked for truncation beforehand: `truncation_problem`).

    Returns:
        A FloatNifti, or None (see above).

    Raises:
        OSError, EOFError, zlib.error: the file or its gzip stream cannot be read.
        ValueError: the file holds fewer voxel bytes than its header promises.
    """
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return None
    compressed = _is_gzip(path)
    with _open(path, compressed) as f:
        head = f.read(540)
    layout = _nifti_layout(head)
    if layout is None or layout[1] not in _NIFTI_FLOATS:
        return None
    endian, datatype, _, offset, count = layout
    scaling = _nifti_scaling(head, endian)
    if scaling is None or scaling[0] not in (0.0, 1.0) or scaling[1] != 0.0:
        return None
    dtype = np.dtype(endian + _NIFTI_FLOATS[datatype])
    nbytes = count * dtype.itemsize
    if compressed:
        with open(path, "rb") as f:
            content = gunzip(f.read())  # the whole stream at once: one pass, in C
        if len(content) < offset + nbytes:
            raise ValueError(f"the header promises {offset + nbytes} bytes but the decompressed file holds {len(content)}")
        voxels = np.frombuffer(content, dtype=dtype, count=count, offset=offset)  # read-only, no copy
    else:
        voxels = np.fromfile(path, dtype=dtype, count=count, offset=offset)
        if voxels.size < count:
            raise ValueError(f"the header promises {count} voxels but the file holds {voxels.size}")
    if not dtype.isnative:
        voxels = voxels.astype(dtype.newbyteorder("="))
    finite = np.isfinite(voxels)
    nonfinite = int(voxels.size - np.count_nonzero(finite))
    if nonfinite:
        if not voxels.flags.writeable:
            voxels = voxels.copy()
        np.logical_not(finite, out=finite)
        voxels[finite] = 0
    return FloatNifti(voxels, nonfinite)


def nifti_voxel_count(path: str | Path) -> int | None:
    """Voxels (times components) a NIfTI file's header declares, reading only the header; None for
    another format or a header this module does not understand."""
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return None
    try:
        with _open(path, _is_gzip(path)) as f:
            layout = _nifti_layout(f.read(540))
    except (OSError, EOFError, zlib.error):
        return None
    return None if layout is None else layout[4]


def nifti_nonfinite_voxels(path: str | Path) -> int:
    """The number of NaN/Inf voxels in a float NIfTI file (0 for integer data or other formats).

    Reads the raw voxel data (decompressing a .nii.gz once); meant for verification, not for every
    read.
    """
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return 0
    compressed = _is_gzip(path)
    with _open(path, compressed) as f:
        layout = _nifti_layout(f.read(540))
        if layout is None or layout[1] not in _NIFTI_FLOATS:
            return 0
        endian, datatype, _, offset, voxels = layout
        dtype = np.dtype(endian + _NIFTI_FLOATS[datatype])
        f.seek(offset)
        data = np.frombuffer(f.read(voxels * dtype.itemsize), dtype=dtype)
    return int(data.size - np.count_nonzero(np.isfinite(data)))


def _nifti_expected_bytes(head: bytes) -> int | None:
    layout = _nifti_layout(head)
    if layout is None:
        return None  # not a NIfTI header we understand: let SimpleITK report it
    _, _, bitpix, offset, voxels = layout
    return offset + voxels * (bitpix // 8)


def _gipl_expected_bytes(head: bytes) -> int | None:
    if len(head) < 10:
        return None
    dims = struct.unpack(">4H", head[:8])
    (image_type,) = struct.unpack(">H", head[8:10])
    if image_type not in _GIPL_BYTES:
        return None
    voxels = 1
    for n in dims:
        voxels *= max(int(n), 1)
    return _GIPL_HEADER + voxels * _GIPL_BYTES[image_type]


def _decompressed_size(path: Path) -> int | None:
    """Length of the whole decompressed stream, or None when the stream ends early or is corrupt."""
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                total += len(chunk)
    except (EOFError, OSError, zlib.error):
        return None
    return total


def _actual_size(path: Path, compressed: bool, expected: int) -> int | None:
    if not compressed:
        return path.stat().st_size
    with open(path, "rb") as f:
        f.seek(0, 2)
        if f.tell() >= 18:  # 10-byte header + 8-byte trailer
            f.seek(-4, 2)
            (isize,) = struct.unpack("<I", f.read(4))
            if isize == expected % (1 << 32):
                return expected
    return _decompressed_size(path)


def truncation_problem(path: str | Path) -> str | None:
    """Says why a NIfTI (.nii, .nii.gz) or GIPL file is truncated, or returns None.

    Files of other formats, and headers this check does not understand, return None: SimpleITK then
    reads them and reports its own errors.

    Args:
        path: the file to check.

    Returns:
        A message naming the expected and actual sizes, or None when the file is complete.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        parse, head_len = _nifti_expected_bytes, 540
    elif name.endswith((".gipl", ".gipl.gz")):
        parse, head_len = _gipl_expected_bytes, _GIPL_HEADER
    else:
        return None
    compressed = _is_gzip(path)
    try:
        with _open(path, compressed) as f:
            head = f.read(head_len)
    except (EOFError, OSError, zlib.error) as e:
        return f"the compressed header cannot be read ({e}); the file is truncated or corrupt"
    expected = parse(head)
    if expected is None:
        return None
    actual = _actual_size(path, compressed, expected)
    what = "decompressed " if compressed else ""
    if actual is None:
        return "the gzip stream ends early or is corrupt; the file is truncated (re-copy or re-export it)"
    if actual < expected:
        return (
            f"the header promises {expected} bytes but the {what}file holds {actual}; the file is truncated "
            "(re-copy or re-export it)"
        )
    return None
