"""NIfTI volumes read and written a slab of z rows at a time, for images larger than memory.

Reading. A NIfTI file stores its voxels x fastest, then y, then z: rows of z are contiguous runs of
the file, so a slab [z0, z1) is one read. A `.nii.gz` is decompressed once, in chunks, into a raw
scratch file (`decompress_voxels`); a `.nii` is read where it lies. Slabs come back as float32
(z, y, x) with what `fastseg.io.read_images` gives for the same rows: float NaN/Inf as 0 (ITK's
reader), other types converted. Files that need more (scaled intensities, 4D, NIfTI pairs, other
formats) are not streamable (`open_nifti_volume` returns None).

Writing. `NiftiSlabWriter` writes the header SimpleITK would write for the image's geometry (taken
from a SimpleITK write of a tiny image with the same geometry and pixel type, dimensions patched),
then rows in z order. For `.nii.gz` the voxels go through one deflate stream in a gzip member; at
each `checkpoint()` the stream is flushed with Z_FULL_FLUSH (byte-aligned, no back-references across
it) and the next rows go to a fresh compressor, so a run that is cut off can truncate the file back to
its last checkpoint and continue with a fresh compressor, writing the same bytes: `NiftiSlabWriter(..., resume=state)` takes the checkpoint's byte offset, CRC-32
and length. The caller writes to a temporary path and renames it when `finish()` returns.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastseg.io.errors import ImageFileError

# NIfTI datatype codes -> numpy type (byte order added from the header).
_NIFTI_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8"}
_CHUNK = 1 << 20
_LEVEL = 1  # labels compress well at the fastest level


@dataclass
class NiftiVolume:
    """A single-file 3D NIfTI image whose voxels can be read by rows.

    Attributes:
        path: the file.
        shape: (z, y, x).
        dtype: the stored voxel type (with its byte order).
        offset: where the voxels start in the (decompressed) file.
        compressed: True for gzip (`.nii.gz`).
        properties: what `fastseg.io.read_images` returns for the file ('spacing' (z, y, x),
            'sitk_stuff').
    """

    path: Path
    shape: tuple[int, int, int]
    dtype: np.dtype
    offset: int
    compressed: bool
    properties: dict = field(default_factory=dict)


def _header(path: Path, compressed: bool) -> bytes:
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            return f.read(540)
    except (OSError, EOFError, zlib.error) as err:
        raise ImageFileError(f"{path}: cannot be read as an image ({err}); the file is truncated or corrupt") from None


def open_nifti_volume(path: str | os.PathLike) -> NiftiVolume | None:
    """The file as a `NiftiVolume`, or None when it is not a streamable NIfTI image (another format,
    not 3D, more than one component, scaled intensities, an unknown voxel type).

    Raises:
        ImageFileError: a NIfTI file whose header cannot be read.
    """
    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return None
    with open(path, "rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
    head = _header(path, compressed)
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            if head[344:348] != b"n+1\0":
                return None
            dim = struct.unpack(endian + "8h", head[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
            (vox_offset,) = struct.unpack(endian + "f", head[108:112])
            slope, inter = struct.unpack(endian + "2f", head[112:120])
            offset = max(int(vox_offset), 352)
            break
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            if head[4:8] != b"n+2\0":
                return None
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            dim = struct.unpack(endian + "8q", head[16:80])
            (vox_offset,) = struct.unpack(endian + "q", head[168:176])
            slope, inter = struct.unpack(endian + "2d", head[176:192])
            offset = max(int(vox_offset), 544)
            break
    else:
        return None
    if datatype not in _NIFTI_TYPES or not 1 <= dim[0] <= 7:
        return None
    if any(int(n) > 1 for n in dim[4 : dim[0] + 1]) or dim[0] < 3:
        return None
    if not (slope == 0 or (slope == 1 and inter == 0)) or not np.isfinite(slope):
        return None
    dtype = np.dtype(_NIFTI_TYPES[datatype]).newbyteorder(endian)
    if dtype.itemsize * 8 != bitpix:
        return None
    props = _sitk_properties(path)
    if props is None:
        return None
    x, y, z = (int(n) for n in dim[1:4])
    return NiftiVolume(path, (z, y, x), dtype, offset, compressed, props)


def _sitk_properties(path: Path) -> dict | None:
    """'spacing' and 'sitk_stuff' as `fastseg.io.read_images` reports them (SimpleITK's header read)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
        return None
    spacing, origin, direction = reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()
    return {
        "spacing": [abs(float(s)) for s in spacing[::-1]],
        "sitk_stuff": {"spacing": tuple(spacing), "origin": tuple(origin), "direction": tuple(direction)},
    }


def voxel_bytes(volume: NiftiVolume) -> int:
    return int(np.prod(volume.shape)) * volume.dtype.itemsize


def decompress_voxels(volume: NiftiVolume, target: Path) -> None:
    """Writes the voxels of a compressed volume, decompressed, to `target` (offset 0), in chunks.

    Raises:
        ImageFileError: the file ends before its voxels do, or is corrupt.
    """
    need = voxel_bytes(volume)
    try:
        with gzip.open(volume.path, "rb") as src, open(target, "wb") as dst:
            skip = volume.offset
            while skip:
                got = src.read(min(skip, _CHUNK))
                if not got:
                    break
                skip -= len(got)
            left = need
            while left:
                got = src.read(min(left, _CHUNK))
                if not got:
                    break
                dst.write(got)
                left -= len(got)
    except (OSError, EOFError, zlib.error) as err:
        raise ImageFileError(f"{volume.path}: cannot be read as an image ({err}); the file is truncated or corrupt") from None
    if left:
        raise ImageFileError(f"{volume.path}: the file holds {need - left} of its {need} voxel bytes; it is truncated")


class SlabReader:
    """Rows [z0, z1) of a volume's voxels as float32 (z1 - z0, y, x), read through a short-lived
    memory map (unmapped after each read, so the file's pages do not stay in this process)."""

    def __init__(self, volume: NiftiVolume, raw: Path | None = None) -> None:
        """Args:
            volume: the image.
            raw: the decompressed voxels (`decompress_voxels`) for a compressed volume; None reads
                an uncompressed file in place."""
        self.volume = volume
        self.path, self.offset = (raw, 0) if raw is not None else (volume.path, volume.offset)
        if raw is None and volume.compressed:
            raise ValueError(f"{volume.path} is compressed: decompress its voxels first (decompress_voxels)")
        size = os.path.getsize(self.path)
        if size < self.offset + voxel_bytes(volume):
            raise ImageFileError(f"{volume.path}: the file holds fewer voxels than its header says; it is truncated")

    def read(self, z0: int, z1: int) -> np.ndarray:
        z, y, x = self.volume.shape
        if not 0 <= z0 < z1 <= z:
            raise ValueError(f"rows [{z0}, {z1}) outside the volume's {z} rows")
        dtype = self.volume.dtype
        plane = y * x * dtype.itemsize
        mm = np.memmap(self.path, dtype=dtype, mode="r", offset=self.offset + z0 * plane, shape=(z1 - z0, y, x))
        try:
            out = np.array(mm, dtype=np.float32)
        finally:
            mm._mmap.close()
            del mm
        if dtype.kind == "f":
            bad = ~np.isfinite(out)
            if bad.any():
                out[bad] = 0
        return out


def _header_bytes(shape: tuple[int, int, int], dtype: np.dtype, properties: dict, scratch: Path) -> bytes:
    """The 352 header bytes SimpleITK writes for an image of `shape` (z, y, x), `dtype` and the
    geometry in `properties`."""
    import SimpleITK as sitk

    from fastseg.io.sitk_format import _geometry

    if max(shape) > 32767:
        raise ValueError(f"a NIfTI-1 file holds at most 32767 voxels per axis, the image has {shape}")
    tiny = np.zeros((2, 2, 2), dtype=dtype)
    spacing, origin, direction = _geometry(tiny, properties)
    image = sitk.GetImageFromArray(tiny)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    tmp = scratch / "header.nii"
    sitk.WriteImage(image, str(tmp), False)
    head = bytearray(tmp.read_bytes()[:352])
    tmp.unlink()
    (offset,) = struct.unpack("<f", head[108:112])
    if struct.unpack("<i", head[:4])[0] != 348 or int(offset) != 352:
        raise ValueError("SimpleITK wrote a NIfTI header this writer does not know (expected NIfTI-1, data at byte 352)")
    z, y, x = shape
    head[40:56] = struct.pack("<8h", 3, x, y, z, 1, 1, 1, 1)
    return bytes(head)


class NiftiSlabWriter:
    """Writes a label volume row slab by row slab into a NIfTI file (`.nii` or `.nii.gz`).

    Args:
        path: the file to write (a temporary; rename it when `finish()` returns).
        shape: (z, y, x) of the whole volume.
        dtype: uint8 or uint16.
        properties: the image's properties (geometry as for `fastseg.io.write_seg`).
        compressed: gzip the file (`.nii.gz`).
        scratch: a folder for the header's scratch write.
        resume: a `checkpoint()` of an earlier writer of the same file to continue from, or None.
    """

    def __init__(self, path: Path, shape, dtype, properties: dict, *, compressed: bool, scratch: Path,
                 resume: dict | None = None) -> None:
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.compressed = compressed
        self.total = int(np.prod(self.shape)) * self.dtype.itemsize + 352
        self._deflate = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15) if compressed else None
        if resume is None:
            self._file = open(self.path, "wb")
            self.crc, self.length = 0, 0
            if compressed:
                self._file.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")  # gzip member, no time stamp
            self._put(_header_bytes(self.shape, self.dtype, properties, scratch))
        else:
            self._file = open(self.path, "r+b")
            self._file.truncate(int(resume["offset"]))
            self._file.seek(int(resume["offset"]))
            self.crc, self.length = int(resume["crc"]), int(resume["length"])

    def _put(self, data: bytes) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self.length += len(data)
        self._file.write(self._deflate.compress(data) if self._deflate is not None else data)

    def write_rows(self, rows: np.ndarray) -> None:
        """Appends rows (n, y, x) of the volume (in z order)."""
        if tuple(rows.shape[1:]) != self.shape[1:]:
            raise ValueError(f"rows must be (n, {self.shape[1]}, {self.shape[2]}), got {rows.shape}")
        self._put(np.ascontiguousarray(rows, dtype=self.dtype.newbyteorder("<")).tobytes())

    def checkpoint(self) -> dict:
        """Flushes what is written so far to the file; returns the state `resume` takes."""
        if self._deflate is not None:
            self._file.write(self._deflate.flush(zlib.Z_FULL_FLUSH))
            # A fresh compressor after every checkpoint, as a resumed writer has: the bytes do not
            # depend on where a run was interrupted.
            self._deflate = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15)
        self._file.flush()
        os.fsync(self._file.fileno())
        return {"offset": self._file.tell(), "crc": self.crc, "length": self.length}

    def finish(self) -> None:
        """Ends the file (gzip trailer) and closes it; every voxel must have been written."""
        if self.length != self.total:
            raise ValueError(f"{self.path}: {self.length} of {self.total} bytes written; the volume is incomplete")
        if self._deflate is not None:
            self._file.write(self._deflate.flush(zlib.Z_FINISH))
            self._file.write(struct.pack("<II", self.crc & 0xFFFFFFFF, self.length & 0xFFFFFFFF))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
