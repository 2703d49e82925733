"""nnU-Net's intensity augmentations, mirroring and masking of a batch of training patches, as one
native pass (in place, samples split over the CPU kernel threads).

Per sample and channel, in nnunetv2's order (batchgeneratorsv2's transforms, torch's arithmetic; the
formulas are in csrc/include/fastseg/intensity.h):

1. Gaussian blur with a sigma per axis (window: the odd integer nearest to 6 sigma + 1/2, mirrored borders);
2. multiplication by the brightness factor;
3. contrast: (x - mean) * factor + mean, clipped to the channel's former [min, max];
4. low resolution: nearest-exact down to `lowres_size` voxels per axis, linear back up;
5. inverted gamma, then gamma, each keeping the channel's mean and standard deviation;

then per sample: the axes in `mirror` flipped (image and segmentation), the `mask_channels` set to 0
where the segmentation is negative, and the label `outside` replaced by `replacement`.

A parameter that leaves its step out: blur sigma 0 (per axis), brightness 1, contrast / gamma NaN,
lowres size 0 (per axis; or the axis' own size), mirror False. CPU only (numpy arrays); the GPU path
augments with DALI's operators (fastseg.data.augment).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fastseg import _native

__all__ = ["augment_intensity"]

_CONTRAST, _GAMMA_INVERTED, _GAMMA, _MIRROR_SHIFT = 1, 2, 4, 4  # csrc/cpu/intensity.h


def _parameter(value, name: str, shape: tuple, dtype) -> np.ndarray:
    a = np.asarray(value)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    return np.ascontiguousarray(a, dtype=dtype)


def augment_intensity(
    data: np.ndarray,
    seg: np.ndarray,
    *,
    blur_sigma: np.ndarray,
    brightness: np.ndarray,
    contrast: np.ndarray,
    lowres_size: np.ndarray,
    gamma_inverted: np.ndarray,
    gamma: np.ndarray,
    mirror: np.ndarray,
    mask_channels: Sequence[int] = (),
    outside: int = -1,
    replacement: int = 0,
) -> None:
    """Augments `data` and `seg` in place (see the module docstring for the steps and their order).

    Args:
        data: float32 (B, C, *spatial), 2 or 3 spatial axes, C-contiguous, written.
        seg: int16 (B, 1, *spatial), C-contiguous, written.
        blur_sigma: (B, C, ndim) sigma per sample, channel and axis (> 0), 0: no blur along the axis.
        brightness: (B, C) factors; 1 leaves the channel as it is.
        contrast: (B, C) factors; NaN: no contrast change.
        lowres_size: (B, C, ndim) integers: the downsampled size per axis (1..n); 0 or n: axis untouched.
        gamma_inverted, gamma: (B, C) exponents (> 0); NaN: that gamma is not applied.
        mirror: (B, ndim) booleans: flip the sample along the axis.
        mask_channels: channels set to 0 where seg < 0 (indices past C are ignored; default none).
        outside: the segmentation's padding label (default -1) ...
        replacement: ... replaced by this one at the end (default 0).

    Raises:
        TypeError: data or seg of the wrong kind or dtype.
        ValueError: shapes that do not fit, a non-positive sigma or gamma, a lowres size out of range.
    """
    for name, a, dtype in (("data", data, np.float32), ("seg", seg, np.int16)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
        if a.dtype != dtype:
            raise TypeError(f"{name} must be {np.dtype(dtype)}, got {a.dtype}")
        if not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"{name} must be a writable C-contiguous array")
    if data.ndim not in (4, 5):
        raise ValueError(f"data must be (B, C, *spatial) with 2 or 3 spatial axes, got shape {data.shape}")
    if seg.shape != (data.shape[0], 1, *data.shape[2:]):
        raise ValueError(f"seg must be (B, 1, *spatial) of data's shape {data.shape}, got {seg.shape}")
    batch, channels, spatial = data.shape[0], data.shape[1], data.shape[2:]
    ndim = len(spatial)
    sigma = _parameter(blur_sigma, "blur_sigma", (batch, channels, ndim), np.float64)
    size = _parameter(lowres_size, "lowres_size", (batch, channels, ndim), np.int64)
    factors = {name: _parameter(v, name, (batch, channels), np.float32)
               for name, v in (("brightness", brightness), ("contrast", contrast),
                               ("gamma_inverted", gamma_inverted), ("gamma", gamma))}
    flips = _parameter(mirror, "mirror", (batch, ndim), bool)
    if not (sigma >= 0).all():
        raise ValueError(f"blur_sigma must be >= 0, got min {sigma.min()}")
    if ((size < 0) | (size > np.array(spatial))).any():
        raise ValueError(f"lowres_size must lie in [0, {list(spatial)}] per axis, "
                         f"got {size.reshape(-1, ndim).tolist()}")
    for name in ("gamma_inverted", "gamma"):
        g = factors[name]
        if (g[~np.isnan(g)] <= 0).any():
            raise ValueError(f"{name} exponents must be > 0 (or NaN: off), got {g[~np.isnan(g)].min()}")
    off = {name: np.isnan(factors[name]) for name in ("contrast", "gamma_inverted", "gamma")}
    if any((o != o.all(1, keepdims=True)).any() for o in off.values()):
        raise ValueError("contrast and gamma are drawn per sample: NaN (off) for all channels of a sample or none")
    lead = 3 - ndim  # the kernel's axes are (D, H, W); a 2D batch has D = 1
    sigma3 = np.zeros((batch, channels, 3))
    sigma3[..., lead:] = sigma
    size3 = np.zeros((batch, channels, 3), np.int32)
    size3[..., lead:] = size
    flags = np.zeros(batch, np.int32)
    for name, bit in (("contrast", _CONTRAST), ("gamma_inverted", _GAMMA_INVERTED), ("gamma", _GAMMA)):
        flags |= np.where(off[name].all(1), 0, bit).astype(np.int32)
    for axis in range(ndim):
        flags |= np.where(flips[:, axis], 1 << (_MIRROR_SHIFT + lead + axis), 0).astype(np.int32)
    contrast_f = np.nan_to_num(factors["contrast"], nan=1.0)
    gammas = np.stack([np.nan_to_num(factors[name], nan=1.0) for name in ("gamma_inverted", "gamma")], axis=-1)
    mask = np.zeros(channels, np.uint8)
    mask[[c for c in mask_channels if 0 <= c < channels]] = 1
    view = (lambda a: a[:, :, None]) if ndim == 2 else (lambda a: a)
    _native.cpu().augment_intensity(view(data), view(seg), flags, sigma3, factors["brightness"], contrast_f, size3,
                                    gammas.astype(np.float32), mask, int(outside), int(replacement))
