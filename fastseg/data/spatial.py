"""The spatial augmentation (and the Gaussian noise after it) where the patch is read: parameters drawn
by nnU-Net's rules, one native pass from the memory-mapped case into the final patch.

On the CPU the loader does not hand DALI the larger initial patch that rotation and scaling need:
the sampler (`PatchSampler.sample_transformed_batch`) picks the initial patch's position as nnU-Net
does, and `transform_patch` resamples the final patch straight out of the case's memory map with
`fastseg.ops.spatial.affine_patch`. Only the voxels the final patch needs are read; the initial
patch is never copied. The DALI pipeline then starts at the blur (`AugmentSpec.source_spatial`).

The parameters, per sample, as batchgeneratorsv2's SpatialTransform and GaussianNoiseTransform in
nnunetv2's `get_training_transforms` draw them (see fastseg.data.augment for the table):

    rotation   with p_rotation: an angle per axis ~ U(spec.rotation) (3D: three; 2D, dummy 2D: one)
    scaling    with p_scaling: one factor ~ U(spec.scaling) for all (in-plane for dummy 2D) axes
    noise      with p_noise: one std ~ U(spec.noise_std) for all channels

The geometry is augment.py's: output voxel centre `x` (patch size P, centred `x - P/2`) samples the
initial patch (size S, first voxel `start` in the case) at `A (x - P/2) + S/2`, voxel centres at
k + 1/2, so in voxel indices of the case

    i = A o + (A (1/2 - P/2) + S/2 - 1/2 + start),      o = the output voxel's index.

A sample with neither rotation nor scaling is the plain crop at `start + S // 2 - P // 2` (what
batchgeneratorsv2's crop_tensor does), an integer translation the kernel copies. Voxels of the
initial patch outside the case are zero (image) and -1 (segmentation), as the sampler's padding makes
them: the kernel's box is the initial patch's intersection with the case.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastseg.ops.spatial import affine_patch

__all__ = ["SpatialDraw", "affine_matrix", "draw_spatial", "index_matrix", "transform_patch"]

SEG_OUTSIDE = -1  # nnU-Net's padding of the segmentation (removed at the end of the pipeline)


@dataclass(frozen=True)
class SpatialDraw:
    """The spatial and noise parameters of one sample.

    Attributes:
        matrix: A, (ndim, ndim) in array-axis order, mapping output offsets from the patch centre to
            input offsets; None: neither rotated nor scaled (the plain crop).
        noise_std: the Gaussian noise's standard deviation, 0 for none.
        noise_seed: the noise generator's seed.
    """

    matrix: np.ndarray | None
    noise_std: float = 0.0
    noise_seed: int = 0


def _rotation_2d(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def affine_matrix(angles: Sequence[float], scale: float, ndim: int, dummy_2d: bool) -> np.ndarray:
    """A of augment.py's `spatial_matrix_entries` (batchgeneratorsv2's create_affine_matrix_{2,3}d).

    Args:
        angles: 3 angles (a0, a1, a2) for 3D, 1 in-plane angle for 2D and dummy 2D.
        scale: the scaling factor (> 1: objects look smaller).
        ndim: 2 or 3.
        dummy_2d: 3D rotated and scaled in the (h, w) plane only.

    Returns:
        (ndim, ndim) float64: `Rz(a2) Ry(a1) Rx(a0) * s` (3D), `R(a) * s` (2D; dummy 2D: on h, w).
    """
    if ndim == 2:
        rot = _rotation_2d(angles[0])
    elif dummy_2d:
        rot = np.eye(3)
        rot[1:, 1:] = _rotation_2d(angles[0])
    else:
        c0, s0 = np.cos(angles[0]), np.sin(angles[0])
        c1, s1 = np.cos(angles[1]), np.sin(angles[1])
        c2, s2 = np.cos(angles[2]), np.sin(angles[2])
        rx = np.array([[1.0, 0.0, 0.0], [0.0, c0, -s0], [0.0, s0, c0]])
        ry = np.array([[c1, 0.0, s1], [0.0, 1.0, 0.0], [-s1, 0.0, c1]])
        rz = np.array([[c2, -s2, 0.0], [s2, c2, 0.0], [0.0, 0.0, 1.0]])
        rot = rz @ ry @ rx
    scales = np.ones(ndim)
    scales[1 if dummy_2d else 0:] = scale
    return rot * scales[None, :]


def draw_spatial(spec: Any, rng: np.random.Generator) -> SpatialDraw:
    """Draws one sample's rotation, scaling and noise by nnU-Net's probabilities and ranges.

    Args:
        spec: the `fastseg.data.augment.AugmentSpec` (patch size, ranges, probabilities, dummy_2d).
        rng: the generator (the loader's per-batch generator, so batches are reproducible).

    Returns:
        The `SpatialDraw`; with `spec.augment` False always the plain crop without noise.
    """
    if not spec.augment:
        return SpatialDraw(None)
    ndim = len(spec.patch_size)
    rotate = rng.random() < spec.probability("rotation")
    scale = rng.random() < spec.probability("scaling")
    matrix = None
    if rotate or scale:
        n_angles = 3 if ndim == 3 and not spec.dummy_2d else 1
        angles = [rng.uniform(*spec.rotation) if rotate else 0.0 for _ in range(n_angles)]
        factor = rng.uniform(*spec.scaling) if scale else 1.0
        matrix = affine_matrix(angles, factor, ndim, spec.dummy_2d)
    std, seed = 0.0, 0
    if rng.random() < spec.probability("noise"):
        std = float(rng.uniform(*spec.noise_std))
        seed = int(rng.integers(0, 1 << 63))
    return SpatialDraw(matrix, std, seed)


def index_matrix(a: np.ndarray | None, input_size: Sequence[int], patch_size: Sequence[int],
                 start: Sequence[int]) -> np.ndarray:
    """The kernel's (3, 4) matrix: case voxel index = M[:, :3] @ o + M[:, 3] for output voxel o.

    Args:
        a: A (ndim, ndim), or None for the plain crop.
        input_size: S, the initial patch (ndim sides).
        patch_size: P, the final patch (ndim sides).
        start: the initial patch's first voxel in the case, 3 coordinates (z, y, x); for a 2D patch
            z is the slice.

    Returns:
        (3, 4) float64; a 2D patch is (1, P0, P1) with the first row (1, 0, 0, slice) (the output's
        depth index is always 0).
    """
    ndim = len(patch_size)
    size, patch = np.asarray(input_size, np.int64), np.asarray(patch_size, np.int64)
    m = np.zeros((3, 4))
    lead = 3 - ndim
    if lead:
        m[0, 0], m[0, 3] = 1.0, start[0]
    if a is None:
        m[lead:, lead:3] = np.eye(ndim)
        m[lead:, 3] = size // 2 - patch // 2 + np.asarray(start[lead:], np.int64)
    else:
        m[lead:, lead:3] = a
        m[lead:, 3] = a @ (0.5 - patch / 2.0) + size / 2.0 - 0.5 + np.asarray(start[lead:], np.float64)
    return m


def transform_patch(data: np.ndarray, seg: np.ndarray, start: Sequence[int], input_size: Sequence[int],
                    draw: SpatialDraw, out: np.ndarray, seg_out: np.ndarray) -> None:
    """Writes one sample's final patch (spatial transform, then noise) from its case into out / seg_out.

    Args:
        data: the case's image, float32 (C, z, y, x) (a memory map: only the voxels needed are read).
        seg: the case's segmentation, int8/int16 (1, z, y, x).
        start: the initial patch's first voxel in the case, (z, y, x) (may lie outside the case).
        input_size: the initial patch, 3 sides, or 2 for a 2D patch (one slice, start[0]).
        draw: the sample's parameters (`draw_spatial`).
        out: float32 (C, *patch), written; seg_out: int16 (1, *patch), written (-1 outside the case
            and the initial patch).
    """
    patch = out.shape[1:]
    ndim = len(patch)
    matrix = index_matrix(draw.matrix, input_size, patch, start)
    size = (1, *input_size) if ndim == 2 else tuple(input_size)
    box = []  # the initial patch within the case, [lo, hi) per axis (plain ints: this runs per sample)
    for first, side, n in zip(start, size, data.shape[1:]):
        lo = min(max(int(first), 0), n)
        box.append((lo, max(lo, min(max(int(first) + int(side), 0), n))))
    box = np.array(box, np.int64)
    view = (lambda x: x[:, None]) if ndim == 2 else (lambda x: x)
    affine_patch(data, seg, view(out), view(seg_out), matrix, box, outside=SEG_OUTSIDE,
                 noise_std=draw.noise_std, noise_seed=draw.noise_seed)
