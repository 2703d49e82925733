"""An affine patch of a volume: the spatial augmentation's resampling (rotation, scaling, crop) as one
native pass, reading a box of a (memory-mapped) case directly.

An output voxel `o = (z, y, x)` of the patch reads the input at the continuous voxel index
`p = matrix[:, :3] @ o + matrix[:, 3]` (voxel k's centre at k); only the voxels inside `box` exist:

- the image is sampled trilinearly, a neighbour outside the box counting as 0 (zero padding);
- the segmentation by its nearest voxel `floor(p + 1/2)`, `outside` when that voxel is outside the box;
- optional Gaussian noise `std * N(0, 1)` is added to the image, from a counter-based generator seeded
  by `noise_seed` (the same seed gives the same noise, whatever the thread count).

A pure integer translation (`matrix[:, :3]` the identity, integral shift) copies the box's rows
(the plain crop). The kernel's algorithm and loop order are described in
csrc/include/fastseg/spatial.h. CPU only (numpy arrays); the GPU path augments with DALI's operators.
"""

from __future__ import annotations

import numpy as np

from fastseg import _native

__all__ = ["affine_patch"]


def _check_array(a, name: str, dtypes: tuple, ndim: int = 4) -> None:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype.type not in dtypes:  # by type: comparing dtypes with `in` converts each one (slow per call)
        raise TypeError(f"{name} must have dtype {' or '.join(str(np.dtype(d)) for d in dtypes)}, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}D (C, D, H, W), got shape {a.shape}")


def affine_patch(
    data: np.ndarray,
    seg: np.ndarray | None,
    out: np.ndarray,
    seg_out: np.ndarray | None,
    matrix: np.ndarray,
    box: np.ndarray,
    *,
    outside: int = -1,
    noise_std: float = 0.0,
    noise_seed: int = 0,
) -> None:
    """Writes the affine patch of `data` (and `seg`) into `out` (and `seg_out`), in place.

    Args:
        data: float32 (C, D, H, W), C-contiguous (a memory map is read without a copy).
        seg: int8 or int16 (1, D, H, W) labels, or None.
        out: float32 (C, P0, P1, P2), C-contiguous, written.
        seg_out: int16 (1, P0, P1, P2), C-contiguous, written; None exactly when `seg` is None.
        matrix: (3, 4): input index = matrix[:, :3] @ (z, y, x) + matrix[:, 3] (a 2D image is D = 1 with
            the first row (1, 0, 0, slice) or (0, 0, 0, slice)).
        box: (3, 2) integers, [lo, hi) per axis of the input voxels that exist, within (D, H, W).
        outside: the label outside the box (default -1, nnU-Net's padding of the segmentation).
        noise_std: standard deviation of the Gaussian noise added to the image (default 0: none).
        noise_seed: the noise's seed, 0 <= seed < 2**64 (default 0).

    Raises:
        TypeError: an array of the wrong kind or dtype.
        ValueError: shapes that do not fit, a box outside the volume, a negative noise_std.
    """
    _check_array(data, "data", (np.float32,))
    _check_array(out, "out", (np.float32,))
    if (seg is None) != (seg_out is None):
        raise ValueError("seg and seg_out must both be given or both be None")
    if seg is not None:
        _check_array(seg, "seg", (np.int8, np.int16))
        _check_array(seg_out, "seg_out", (np.int16,))
        if seg.shape != (1, *data.shape[1:]) or seg_out.shape != (1, *out.shape[1:]):
            raise ValueError(f"seg must be (1, {', '.join(map(str, data.shape[1:]))}) and seg_out "
                             f"(1, {', '.join(map(str, out.shape[1:]))}), got {seg.shape} and {seg_out.shape}")
    if out.shape[0] != data.shape[0]:
        raise ValueError(f"out must have data's {data.shape[0]} channels, got shape {out.shape}")
    for name, a in (("data", data), ("seg", seg)):
        if a is not None and not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous (a preprocessed case's memory map is)")
    for name, a in (("out", out), ("seg_out", seg_out)):
        if a is not None and (not a.flags.c_contiguous or not a.flags.writeable):
            raise ValueError(f"{name} must be a writable C-contiguous array")
    matrix = np.ascontiguousarray(matrix, dtype=np.float64)
    box = np.ascontiguousarray(box, dtype=np.int64)
    if matrix.shape != (3, 4) or not np.isfinite(matrix).all():
        raise ValueError(f"matrix must be a finite (3, 4) array, got shape {matrix.shape}")
    if box.shape != (3, 2) or not all(0 <= lo <= hi <= n for (lo, hi), n in zip(box.tolist(), data.shape[1:])):
        raise ValueError(f"box must be (3, 2) with 0 <= lo <= hi <= {data.shape[1:]} per axis, got {box.tolist()}")
    if not noise_std >= 0.0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    _native.cpu().affine_patch(data, seg, out, seg_out, matrix, box, int(outside), float(noise_std),
                               int(noise_seed) % (1 << 64))
