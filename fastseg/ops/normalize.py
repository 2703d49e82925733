"""Intensity normalization with the semantics of nnunetv2's normalization classes.

One reduction pass for the statistics a scheme needs (double accumulators), one fused pass that
reads any numeric dtype and writes float32. CPU arrays run in `fastseg._C`; CUDA tensors run the
Triton kernels of `fastseg.ops.triton.normalize`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import numpy as np

from fastseg import _native
from fastseg.ops._arrays import dispatch, native_contiguous, to_numpy

#: nnU-Net's scheme names, as plans.json spells them.
SCHEMES = (
    "CTNormalization",
    "ZScoreNormalization",
    "RescaleTo01Normalization",
    "RGBTo01Normalization",
    "NoNormalization",
)

# nnU-Net's eps for float32 targets: denominators never fall below it.
_EPS = 1e-8
_CT_KEYS = ("mean", "std", "percentile_00_5", "percentile_99_5")


def look_up_scheme(scheme: str) -> str:
    """Validates a scheme name, suggesting the closest one when it is unknown."""
    if scheme in SCHEMES:
        return scheme
    close = difflib.get_close_matches(str(scheme), SCHEMES, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown normalization scheme {scheme!r}; expected one of {', '.join(SCHEMES)}.{hint}")


class _Cpu:
    def __init__(self) -> None:
        self.C = _native.cpu()

    def moments(self, x, mask) -> dict:
        return self.C.moments(x, mask)

    def apply(self, x, mask, lo, hi, shift, denom, clip):
        return self.C.normalize_apply(x, mask, lo, hi, shift, denom, clip)


class _Triton:
    def __init__(self) -> None:
        from fastseg.ops.triton import normalize as kernels

        self.k = kernels

    def moments(self, x, mask) -> dict:
        return self.k.moments(x, mask)

    def apply(self, x, mask, lo, hi, shift, denom, clip):
        return self.k.normalize_apply(x, mask, lo, hi, shift, denom, clip)


def _raise_nonfinite(count: int) -> None:
    if count:
        raise ValueError(f"data contains {count} NaN or infinite values; fix or mask them before normalizing")


def normalize(
    data: Any,
    scheme: str,
    *,
    intensity_properties: Mapping[str, float] | None = None,
    mask: Any = None,
    statistics: Mapping[str, float] | None = None,
) -> Any:
    """Normalizes one channel with an nnU-Net scheme and returns float32.

    Args:
        data: one channel, any shape (numpy array or torch tensor, CPU or CUDA), any float or
            integer dtype, any layout or byte order. To normalize a multi-channel image, call this
            per channel with that channel's scheme from the plans.
        scheme: "CTNormalization", "ZScoreNormalization", "RescaleTo01Normalization",
            "RGBTo01Normalization" or "NoNormalization".
        intensity_properties: for CTNormalization, the channel's foreground statistics from the
            dataset fingerprint: "mean", "std", "percentile_00_5", "percentile_99_5".
        mask: bool array with data's shape, used by ZScoreNormalization only (nnU-Net's
            use_mask_for_norm: statistics over the mask, voxels outside keep their value); other
            schemes ignore it, as nnU-Net's do. Default None (whole image).
        statistics: the channel's statistics ("count", "mean", "std", "min", "max") computed
            beforehand over the whole image (over its mask), e.g. merged from its parts with
            `channel_statistics` and `merge_statistics`, to normalize an image part by part as the
            whole would be; None (default) computes them from `data` (and `mask`).

    Returns:
        float32 array of data's shape, the same kind as `data`.

    Raises:
        ValueError: unknown scheme, missing or non-finite intensity properties, mask shape
            mismatch, NaN/Inf in data, RGB values outside [0, 255], or an empty mask.
        TypeError: data is not an array/tensor or has a non-numeric dtype.
    """
    scheme = look_up_scheme(scheme)
    return dispatch(
        data,
        "data",
        cpu=lambda a: _normalize(_Cpu(), _cpu_data(a), mask, _cpu_mask, scheme, intensity_properties, statistics),
        cuda=lambda t: _normalize(
            _Triton(), _cuda_data(t), mask, lambda m: m.to(device=t.device).contiguous(), scheme, intensity_properties,
            statistics,
        ),
    )


def _cpu_data(a: np.ndarray) -> np.ndarray:
    """A numpy view of the data in a type fastseg._C reads: float16 is widened, byte order made native."""
    if a.dtype.kind not in "fiu":
        raise TypeError(f"data dtype must be a float or integer type, got {a.dtype}")
    if a.dtype == np.float16:
        a = a.astype(np.float32)
    return native_contiguous(a)


def _cpu_mask(mask: Any) -> np.ndarray:
    return native_contiguous(np.asarray(to_numpy(mask)), np.bool_)


def _cuda_data(t: Any) -> Any:
    if t.is_complex() or str(t.dtype) == "torch.bool":
        raise TypeError(f"data dtype must be a float or integer type, got {t.dtype}")
    return t


def channel_statistics(data: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """Count, mean, std (population), min and max of one channel (inside `mask`), in double.

    Args:
        data: numpy array of any shape and real dtype.
        mask: bool array of data's shape, or None (default: every voxel).

    Raises:
        ValueError: NaN or infinite values in data.
    """
    backend = _Cpu()
    x = _cpu_data(np.asarray(data))
    stats = backend.moments(x, None if mask is None else _cpu_mask(mask))
    _raise_nonfinite(stats["nonfinite"])
    return {k: stats[k] for k in ("count", "mean", "std", "min", "max")}


def merge_statistics(a: Mapping[str, float] | None, b: Mapping[str, float]) -> dict:
    """The statistics of two disjoint parts' union (Chan et al.'s pairwise update of mean and variance).

    Args:
        a: the statistics so far, or None for none yet.
        b: one more part's `channel_statistics`.
    """
    if a is None or a["count"] == 0:
        return dict(b)
    if b["count"] == 0:
        return dict(a)
    na, nb = float(a["count"]), float(b["count"])
    n = na + nb
    delta = float(b["mean"]) - float(a["mean"])
    m2 = float(a["std"]) ** 2 * na + float(b["std"]) ** 2 * nb + delta * delta * na * nb / n
    return {
        "count": int(a["count"]) + int(b["count"]),
        "mean": float(a["mean"]) + delta * nb / n,
        "std": float(np.sqrt(max(m2 / n, 0.0))),
        "min": min(float(a["min"]), float(b["min"])),
        "max": max(float(a["max"]), float(b["max"])),
    }


def _normalize(
    backend: Any, x: Any, mask: Any, convert_mask: Any, scheme: str, intensity_properties, statistics=None
) -> Any:
    """The scheme on one backend: x a numpy array (_Cpu) or a CUDA tensor (_Triton), mask as the caller
    gave it, turned into the backend's kind by convert_mask. Returns float32 of x's kind."""
    m = None
    if scheme == "ZScoreNormalization" and mask is not None:
        if tuple(mask.shape) != tuple(x.shape):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match data shape {tuple(x.shape)}")
        m = convert_mask(mask)

    if scheme == "CTNormalization":
        props = _ct_properties(intensity_properties)
        lo, hi = props["percentile_00_5"], props["percentile_99_5"]
        out, nonfinite = backend.apply(x, None, lo, hi, props["mean"], max(props["std"], _EPS), True)
        _raise_nonfinite(nonfinite)
        return out

    if scheme == "NoNormalization":
        out, nonfinite = backend.apply(x, None, 0.0, 0.0, 0.0, 1.0, False)
        _raise_nonfinite(nonfinite)
        return out

    if statistics is not None:
        missing = [k for k in ("count", "mean", "std", "min", "max") if k not in statistics]
        if missing:
            raise ValueError(f"statistics lacks {missing}; got keys {sorted(statistics)}")
        stats = dict(statistics)
    else:
        stats = backend.moments(x, m)
        _raise_nonfinite(stats["nonfinite"])
    if stats["count"] == 0:
        where = "inside the mask" if m is not None else "in data"
        raise ValueError(f"no voxels {where} to compute normalization statistics from (shape {tuple(x.shape)})")
    if scheme == "ZScoreNormalization":
        # nnU-Net computes the statistics of the float32 image; ours are accumulated in double.
        mean, std = np.float32(stats["mean"]), np.float32(stats["std"])
        out, _ = backend.apply(x, m, 0.0, 0.0, float(mean), float(max(std, np.float32(_EPS))), False)
    elif scheme == "RescaleTo01Normalization":
        lo = np.float32(stats["min"])
        span = np.float32(np.float32(stats["max"]) - lo)
        out, _ = backend.apply(x, None, 0.0, 0.0, float(lo), float(max(span, np.float32(_EPS))), False)
    else:  # RGBTo01Normalization
        if stats["min"] < 0 or stats["max"] > 255:
            raise ValueError(
                f"RGBTo01Normalization expects values in [0, 255] (8-bit RGB), found [{stats['min']}, {stats['max']}]; "
                "use ZScoreNormalization or RescaleTo01Normalization for other images"
            )
        out, _ = backend.apply(x, None, 0.0, 0.0, 0.0, 255.0, False)
    return out


def _ct_properties(props: Mapping[str, float] | None) -> dict:
    if props is None:
        raise ValueError(
            "CTNormalization needs intensity_properties with the foreground 'mean', 'std', 'percentile_00_5' "
            "and 'percentile_99_5' of the channel (dataset_fingerprint.json: foreground_intensity_properties_per_channel)"
        )
    missing = [k for k in _CT_KEYS if k not in props]
    if missing:
        raise ValueError(f"intensity_properties lacks {missing}; got keys {sorted(props)}")
    values = {k: float(props[k]) for k in _CT_KEYS}
    bad = {k: v for k, v in values.items() if not np.isfinite(v)}
    if bad:
        raise ValueError(f"intensity_properties must be finite, got {bad}")
    if values["percentile_00_5"] > values["percentile_99_5"]:
        raise ValueError(
            f"percentile_00_5 ({values['percentile_00_5']}) exceeds percentile_99_5 ({values['percentile_99_5']})"
        )
    return values
