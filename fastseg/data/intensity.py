"""The augmentations after the spatial one, where the batch is made: parameters drawn by nnU-Net's rules,
one native pass over the batch (`fastseg.ops.intensity.augment_intensity`).

On the CPU the loader's source applies the spatial transform and the noise while reading the patches
(`fastseg.data.spatial`) and then these, so that its batches leave the source finished and DALI runs
none of its operators on them (`AugmentSpec.source_intensity`); on a GPU DALI's graph does all of it
(fastseg.data.augment). The parameters, per sample, as nnunetv2's `get_training_transforms` draws them
(the table in fastseg.data.augment):

    blur               with p_blur; each channel with p_blur_per_channel, sigma ~ U(spec.blur_sigma) per axis
    brightness         with p_brightness: a factor per channel ~ BGContrast(spec.brightness)
    contrast           with p_contrast: a factor per channel ~ BGContrast(spec.contrast)
    low resolution     with p_lowres; each channel with p_lowres_per_channel, one scale s ~ U(spec.lowres_scale)
                       for its axes (dummy 2D: not axis 0): round(n * s) voxels (s as float32, Python's round)
    inverted gamma     with p_gamma_inverted: an exponent per channel ~ BGContrast(spec.gamma)
    gamma              with p_gamma: likewise
    mirror             each of spec.mirror_axes with p_mirror

then the spec's mask channels are set to 0 where the segmentation is negative and -1 becomes 0.
BGContrast(lo, hi) is U(lo, 1) with probability 1/2 (if lo < 1), else U(max(lo, 1), hi); a degenerate range
(v, v) always gives v (as in fastseg.data.augment). Validation specs (`augment=False`) draw nothing: only
-1 becomes 0.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from fastseg.ops.intensity import augment_intensity

__all__ = ["IntensityDraw", "apply_intensity", "draw_intensity"]

SEG_OUTSIDE = -1  # nnU-Net's padding of the segmentation, 0 after the pass


@dataclass(frozen=True)
class IntensityDraw:
    """One batch's parameters (B samples, C channels, ndim spatial axes); the neutral value leaves a
    step out.

    Attributes:
        blur_sigma: (B, C, ndim) float64, 0: not blurred.
        brightness: (B, C) float32, 1: unchanged.
        contrast, gamma_inverted, gamma: (B, C) float32, NaN: not applied.
        lowres_size: (B, C, ndim) int64, 0: not resampled.
        mirror: (B, ndim) bool.
    """

    blur_sigma: np.ndarray
    brightness: np.ndarray
    contrast: np.ndarray
    lowres_size: np.ndarray
    gamma_inverted: np.ndarray
    gamma: np.ndarray
    mirror: np.ndarray

    def __getitem__(self, samples: slice) -> IntensityDraw:
        """The parameters of a slice of the batch's samples."""
        return IntensityDraw(*(getattr(self, f.name)[samples] for f in fields(self)))


def _uniform(rng: np.random.Generator, low: float, high: float, shape) -> np.ndarray:
    """U(low, high) of `shape`; (v, v) gives v."""
    if low == high:
        return np.full(shape, low)
    return rng.uniform(low, high, shape)


def _bg_contrast(rng: np.random.Generator, low: float, high: float, shape) -> np.ndarray:
    """batchgeneratorsv2's BGContrast of `shape`: U(low, 1) with probability 1/2 (if low < 1), else
    U(max(low, 1), high); (v, v) gives v."""
    if low == high:
        return np.full(shape, low)
    u = rng.random(shape)
    below = rng.random(shape) < 0.5
    mid = max(low, 1.0)
    above = mid + u * (high - mid)
    if low >= 1.0:
        return above
    return np.where(below, low + u * (1.0 - low), above)


def _drawn(rng: np.random.Generator, probability: float, shape) -> np.ndarray:
    return rng.random(shape) < probability


def draw_intensity(spec: Any, rng: np.random.Generator, batch_size: int, channels: int) -> IntensityDraw:
    """Draws one batch's blur, brightness, contrast, low resolution, gamma and mirroring.

    Args:
        spec: the `fastseg.data.augment.AugmentSpec` (patch size, ranges, probabilities, dummy_2d, mirror axes).
        rng: the generator (the loader's per-batch generator, so batches are reproducible).
        batch_size: B; channels: C.

    Returns:
        The `IntensityDraw`; with `spec.augment` False every step left out.
    """
    patch = tuple(spec.patch_size)
    ndim = len(patch)
    b, c = batch_size, channels
    if not spec.augment:
        nan = np.full((b, c), np.nan, np.float32)
        return IntensityDraw(np.zeros((b, c, ndim)), np.ones((b, c), np.float32), nan, np.zeros((b, c, ndim), np.int64),
                             nan, nan, np.zeros((b, ndim), bool))
    p = spec.probability
    sample = lambda name: _drawn(rng, p(name), (b, 1))  # noqa: E731
    blurred = sample("blur") & _drawn(rng, p("blur_per_channel"), (b, c))
    sigma = np.where(blurred[..., None], _uniform(rng, *spec.blur_sigma, (b, c, ndim)), 0.0)
    brightness = np.where(sample("brightness"), _bg_contrast(rng, *spec.brightness, (b, c)), 1.0).astype(np.float32)
    contrast = np.where(sample("contrast"), _bg_contrast(rng, *spec.contrast, (b, c)), np.nan).astype(np.float32)
    resampled = sample("lowres") & _drawn(rng, p("lowres_per_channel"), (b, c))
    scale = _uniform(rng, *spec.lowres_scale, (b, c)).astype(np.float32).astype(np.float64)
    size = np.round(np.array(patch, np.float64) * scale[..., None]).astype(np.int64)  # ties to even
    if spec.dummy_2d:
        size[..., 0] = patch[0]
    size = np.where(resampled[..., None], size, 0)
    gamma_inverted = np.where(sample("gamma_inverted"), _bg_contrast(rng, *spec.gamma, (b, c)), np.nan)
    gamma_inverted = gamma_inverted.astype(np.float32)
    gamma = np.where(sample("gamma"), _bg_contrast(rng, *spec.gamma, (b, c)), np.nan).astype(np.float32)
    mirror = np.zeros((b, ndim), bool)
    for axis in spec.mirror_axes:
        mirror[:, axis] = _drawn(rng, p("mirror"), b)
    return IntensityDraw(sigma, brightness, contrast, size, gamma_inverted, gamma, mirror)


def apply_intensity(data: np.ndarray, seg: np.ndarray, draw: IntensityDraw, spec: Any) -> None:
    """Applies `draw` to a batch in place: data float32 (B, C, *patch), seg int16 (B, 1, *patch)
    (-1 outside the image, 0 afterwards); the spec's mask channels are masked when it augments."""
    augment_intensity(data, seg, blur_sigma=draw.blur_sigma, brightness=draw.brightness, contrast=draw.contrast,
                      lowres_size=draw.lowres_size, gamma_inverted=draw.gamma_inverted, gamma=draw.gamma,
                      mirror=draw.mirror, mask_channels=spec.mask_channels if spec.augment else (),
                      outside=SEG_OUTSIDE, replacement=0)
