"""A 3D label volume written slab by slab as a tiled OME-TIFF, for images larger than memory.

Rows of z come in order (`write_rows`), as for `fastseg.io.nifti_stream.NiftiSlabWriter`, and go to a
raw scratch file of labels (z, y, x) beside the output; `checkpoint()` records how many bytes are
written, so an interrupted run truncates the scratch file back to its last checkpoint and goes on.
`finish()` turns the scratch file into the TIFF with tifffile: one page per z plane, each cut into
`tile` x `tile` tiles, zlib-compressed, the tiles produced by a generator that reads one plane at a
time, so neither the volume nor a slab of it is ever whole in memory. OME-XML metadata names the axes
ZYX and the voxel size (PhysicalSizeX/Y/Z in micrometres: the image's spacing, taken to be in
millimetres as in medical images), and each page carries the in-plane resolution as TIFF tags
(pixels per centimetre), so tools that read either find the physical size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

#: Output file endings written as TIFF by the streamed 3D predictor (`stream_case`).
TIFF_ENDINGS = (".ome.tif", ".ome.tiff", ".tif", ".tiff")
#: Output file endings `fastseg predict` streams into a tiled OME-TIFF for any 3D case.
OME_TIFF_ENDINGS = (".ome.tif", ".ome.tiff")


class TiffSlabWriter:
    """Writes a label volume row slab by row slab into a tiled OME-TIFF.

    Args:
        path: the TIFF to write (a temporary; rename it when `finish()` returns).
        shape: (z, y, x) of the whole volume.
        dtype: uint8 or uint16.
        properties: the image's properties; 'spacing' (z, y, x) in millimetres.
        scratch: the folder for the raw labels.
        resume: a `checkpoint()` of an earlier writer of the same volume to continue from, or None.
        tile: tile edge in pixels, a multiple of 16 (default 256).
    """

    def __init__(self, path: Path, shape, dtype, properties: dict, *, scratch: Path, resume: dict | None = None,
                 tile: int = 256) -> None:
        if tile <= 0 or tile % 16:
            raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.tile = int(tile)
        self.spacing = [float(s) for s in properties["spacing"]]
        self.raw = Path(scratch) / "labels.raw"
        self.total = int(np.prod(self.shape)) * self.dtype.itemsize
        if resume is None:
            self._file = open(self.raw, "wb")
            self.length = 0
        else:
            self._file = open(self.raw, "r+b")
            self.length = int(resume["length"])
            self._file.truncate(self.length)
            self._file.seek(self.length)

    def write_rows(self, rows: np.ndarray) -> None:
        """Appends rows (n, y, x) of the volume (in z order)."""
        if tuple(rows.shape[1:]) != self.shape[1:]:
            raise ValueError(f"rows must be (n, {self.shape[1]}, {self.shape[2]}), got {rows.shape}")
        data = np.ascontiguousarray(rows, dtype=self.dtype)
        self._file.write(memoryview(data).cast("B"))
        self.length += data.nbytes

    def checkpoint(self) -> dict:
        """Flushes what is written so far to the scratch file; returns the state `resume` takes."""
        self._file.flush()
        os.fsync(self._file.fileno())
        return {"length": self.length}

    def _tiles(self) -> Iterator[np.ndarray]:
        z, y, x = self.shape
        plane = y * x * self.dtype.itemsize
        t = self.tile
        with open(self.raw, "rb") as f:
            for k in range(z):
                f.seek(k * plane)
                page = np.frombuffer(f.read(plane), dtype=self.dtype).reshape(y, x)
                for top in range(0, y, t):
                    for left in range(0, x, t):
                        block = np.zeros((t, t), dtype=self.dtype)
                        part = page[top : top + t, left : left + t]
                        block[: part.shape[0], : part.shape[1]] = part
                        yield block

    def finish(self) -> None:
        """Writes the TIFF from the scratch file; every voxel must have been written."""
        import tifffile

        if self.length != self.total:
            raise ValueError(f"{self.path}: {self.length} of {self.total} bytes written; the volume is incomplete")
        self._file.flush()
        self._file.close()
        sz, sy, sx = self.spacing
        metadata = {
            "axes": "ZYX",
            "PhysicalSizeX": sx * 1000, "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": sy * 1000, "PhysicalSizeYUnit": "µm",
            "PhysicalSizeZ": sz * 1000, "PhysicalSizeZUnit": "µm",
        }
        with tifffile.TiffWriter(self.path, bigtiff=self.total > 2**31, ome=True) as writer:
            writer.write(
                self._tiles(), shape=self.shape, dtype=self.dtype, tile=(self.tile, self.tile), compression="zlib",
                photometric="minisblack", metadata=metadata, resolution=(10 / sx, 10 / sy), resolutionunit="CENTIMETER",
            )
        self.raw.unlink(missing_ok=True)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
