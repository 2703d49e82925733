"""Smooth random fields and implicit shapes on a voxel grid, in vectorised numpy.

A smooth field is a tensor product of Gaussian radial basis functions: per axis a matrix
`W[i, a] = exp(-((p_i - c_a) / s)^2 / 2)` maps `n` basis centres to the axis' voxel positions, and
the field is `G x_z W_z x_y W_y x_x W_x` for a small random coefficient grid `G` (n_z, n_y, n_x). The
three products are matrix multiplications, so a 256 x 256 x 100 field costs a few passes over the
volume, and its smoothness is set by the number of basis functions per axis.

Shapes are implicit: `q(p) = sum(((R (p - c)) / r)^2) + wobble * field(p)`, inside where `q < 1`,
evaluated only on the shape's bounding box. Coordinates are normalised per axis to [-1, 1], so
shapes scale with the image; an axis of size 1 (a 2D image) has the single coordinate 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def axis_coords(n: int) -> np.ndarray:
    """Voxel-centre coordinates of an axis of `n` voxels, normalised to (-1, 1); [0] when n == 1."""
    if n == 1:
        return np.zeros(1, dtype=np.float32)
    return ((np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1).astype(np.float32)


def _basis(n: int, k: int) -> np.ndarray:
    """(n, k) Gaussian basis weights; k centres spread slightly past both ends of the axis."""
    if n == 1 or k == 1:
        return np.ones((n, 1), dtype=np.float32)
    pos = (np.arange(n, dtype=np.float32) + 0.5) / n
    centres = np.linspace(-0.15, 1.15, k, dtype=np.float32)
    sigma = 1.3 / (k - 1)
    return np.exp(-0.5 * ((pos[:, None] - centres[None, :]) / sigma) ** 2).astype(np.float32)


def smooth_field(rng: np.random.Generator, shape: Sequence[int], n_basis: int | Sequence[int] = 4) -> np.ndarray:
    """A smooth random float32 field of `shape` (z, y, x), normalised to mean 0 and std 1 (estimated).

    Args:
        rng: the random generator (the only source of randomness).
        shape: (z, y, x); axes of size 1 are constant.
        n_basis: basis functions per axis (default 4: one or two bumps across the image); more means
            finer detail.
    """
    ks = [n_basis] * 3 if isinstance(n_basis, int) else list(n_basis)
    ks = [1 if s == 1 else max(int(k), 2) for s, k in zip(shape, ks)]
    wz, wy, wx = (_basis(s, k) for s, k in zip(shape, ks))
    g = rng.standard_normal(ks).astype(np.float32)
    nz, ny, nx = shape
    kz, ky, kx = ks
    # Three plain 2D GEMMs (batched matmul over z is far slower for these shapes).
    f = (wz @ g.reshape(kz, ky * kx)).reshape(nz, ky, kx)
    f = (f.transpose(0, 2, 1).reshape(nz * kx, ky) @ wy.T).reshape(nz, kx, ny)
    f = np.ascontiguousarray(f.transpose(0, 2, 1)).reshape(nz * ny, kx) @ wx.T
    f = f.reshape(nz, ny, nx)
    # Mean and std from every 7th voxel: the field is smooth, so a sparse sample estimates them well
    # at a fraction of the cost of two full passes.
    sample = f.ravel()[::7]
    mean, std = float(sample.mean()), float(sample.std())
    f -= mean
    if std > 0:
        f *= 1.0 / std
    return f


def box(coords: Sequence[np.ndarray], centre: Sequence[float], extent: Sequence[float]) -> tuple[slice, ...]:
    """Index slices covering centre +- extent (normalised units) on each axis, clipped to the grid."""
    out = []
    for c, m, e in zip(coords, centre, extent):
        lo = int(np.searchsorted(c, m - e, side="left"))
        hi = int(np.searchsorted(c, m + e, side="right"))
        out.append(slice(max(lo - 1, 0), min(hi + 1, len(c))))
    return tuple(out)


def ellipsoid(
    coords: Sequence[np.ndarray],
    centre: Sequence[float],
    radii: Sequence[float],
    theta: float = 0.0,
    *,
    wobble: float = 0.0,
    rng: np.random.Generator | None = None,
    n_basis: int = 3,
) -> tuple[tuple[slice, ...], np.ndarray]:
    """The implicit function q of a (deformed) ellipsoid on its bounding box.

    Args:
        coords: normalised (z, y, x) coordinate vectors (`axis_coords`).
        centre: (z, y, x) centre.
        radii: (z, y, x) semi-axes; the z term is dropped on a 2D grid (a single z coordinate).
        theta: rotation in the y-x plane, radians.
        wobble: amplitude of the smooth deformation added to q (0 = exact ellipsoid); needs `rng`.
        n_basis: smoothness of the deformation (basis functions per axis).

    Returns:
        `(slices, q)`: the bounding box in the grid and q on it (float32); the shape is `q < 1`.
    """
    centre = [float(c) for c in centre]  # Python floats keep the float32 coordinates float32
    radii = [float(r) for r in radii]
    # The deformation (std 1, rarely beyond -3) can push the surface out to sqrt(1 + 3 * wobble) radii.
    grow = float(np.sqrt(1 + 3 * wobble))
    reach = max(radii[1], radii[2]) * grow
    extent = (radii[0] * grow, reach, reach)
    sl = box(coords, centre, extent)
    z, y, x = (c[s] for c, s in zip(coords, sl))
    dz = (z - centre[0])[:, None, None]
    dy = (y - centre[1])[None, :, None]
    dx = (x - centre[2])[None, None, :]
    cos, sin = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    u = (cos * dy + sin * dx) / radii[1]
    v = (-sin * dy + cos * dx) / radii[2]
    q = u * u + v * v
    if len(coords[0]) > 1:
        q = q + (dz / radii[0]) ** 2
    q = np.asarray(q, dtype=np.float32)
    if wobble and q.size:
        if rng is None:
            raise ValueError("ellipsoid needs rng when wobble > 0")
        q = q + wobble * smooth_field(rng, q.shape, n_basis)
    return sl, q
