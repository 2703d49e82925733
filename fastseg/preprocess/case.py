"""Preprocessing of one case held in memory, as nnU-Net's DefaultPreprocessor does it:

    transpose (plans' transpose_forward; the spacing too)
    -> crop to the nonzero region (segmentation: -1 for background outside the filled mask)
    -> normalize each channel with its scheme (before resampling, so the mask still fits the image)
    -> resample to the configuration's spacing (2d: the slice axis keeps its spacing)
    -> sample class locations for foreground oversampling (training cases)

The kernels are `fastseg.ops.normalize` and `fastseg.ops.resample`. `preprocess_case_multi` runs the
shared first three steps once for several configurations of the same plans. The plans' side of it
is `fastseg.preprocess.caseplan.CasePlan`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastseg.ops import compute_new_shape, normalize, resample, separate_z_axis
from fastseg.preprocess.caseplan import CasePlan
from fastseg.ops.crop import crop_to_nonzero
from fastseg.preprocess.locations import sample_class_locations


def _compact_labels(seg: np.ndarray) -> np.ndarray:
    """The segmentation as int16 (labels -1 .. 32767), checked."""
    if seg.dtype in (np.int8, np.int16):
        return seg
    if seg.size:
        lo, hi = seg.min(), seg.max()
        if lo < -1 or hi > np.iinfo(np.int16).max:
            raise ValueError(f"segmentation labels must lie in [0, 32767], found [{lo}, {hi}]")
    if seg.dtype.kind == "f":
        out = seg.astype(np.int16)
        if not np.array_equal(out, seg):
            raise ValueError("segmentation holds non-integer values; labels must be integers")
        return out
    return seg.astype(np.int16)


@dataclass
class _Cropped:
    data: np.ndarray  # normalized float32 (C, z, y, x)
    seg: np.ndarray  # int16 (1, z, y, x), -1 outside the mask
    spacing: list[float]  # transposed original spacing
    properties: dict


def _transpose_crop(data: np.ndarray, seg: np.ndarray | None, properties: Mapping[str, Any], plan: CasePlan) -> _Cropped:
    if data.ndim != 4:
        raise ValueError(f"data must be (C, z, y, x), got shape {data.shape}")
    if len(plan.normalization_schemes) != data.shape[0]:
        raise ValueError(f"the plans normalize {len(plan.normalization_schemes)} channels, the image has {data.shape[0]}")
    if seg is not None and tuple(seg.shape) != (1,) + tuple(data.shape[1:]):
        raise ValueError(f"segmentation shape {seg.shape} does not match image shape {data.shape} (expected (1, z, y, x))")
    if "spacing" not in properties:
        raise ValueError(f"properties need the image 'spacing', got keys {sorted(properties)}")
    axes = [0] + [a + 1 for a in plan.transpose_forward]
    data = data.transpose(axes)
    if seg is not None:
        seg = _compact_labels(np.asarray(seg)).transpose(axes)
    spacing = [float(properties["spacing"][a]) for a in plan.transpose_forward]
    props = dict(properties)
    props["shape_before_cropping"] = tuple(int(s) for s in data.shape[1:])
    cropped, seg, bbox = crop_to_nonzero(data, seg)
    props["bbox_used_for_cropping"] = bbox
    props["shape_after_cropping_and_before_resampling"] = tuple(int(s) for s in cropped.shape[1:])
    normalized = None
    mask = None
    for c in range(cropped.shape[0]):
        use_mask = plan.use_mask_for_norm[c]
        if use_mask and mask is None:
            mask = seg[0] >= 0
        channel = normalize(
            cropped[c],
            plan.normalization_schemes[c],
            intensity_properties=plan.intensity_properties[c] or None,
            mask=mask if use_mask else None,
        )
        if cropped.shape[0] == 1:
            normalized = channel[None]  # one channel: the normalized array itself, no copy
        else:
            if normalized is None:
                normalized = np.empty(cropped.shape, dtype=np.float32)
            normalized[c] = channel
    if normalized is None:  # no channels
        normalized = np.empty(cropped.shape, dtype=np.float32)
    return _Cropped(normalized, seg, spacing, props)


@dataclass
class _InPlane:
    """A 2d configuration's result: the case resampled in-plane only (slice axis 0 untouched)."""

    data: np.ndarray
    seg: np.ndarray
    spacing: list[float]  # (original z, target y, target x)
    plan: CasePlan
    class_locations: dict | None = None  # sampled from `seg` for `plan.classes` (labelled cases)


def _reuse_in_plane(cropped: _Cropped, plan: CasePlan, target: list[float], previous: _InPlane | None) -> _InPlane | None:
    """`previous` when `plan` (3D) may start from it and only resample along z.

    With the slice axis resampled on its own (nnU-Net's separate-z rule picks axis 0), a 3D
    configuration's result is its in-plane passes (per-slice range clip included) followed by the z
    pass; when a 2d configuration of the same in-plane spacing and resampling settings ran the same
    in-plane passes, the z pass alone completes the 3D result -- provided the rule picks axis 0 for
    all three resamplings involved.
    """
    if previous is None or len(plan.spacing) != 3 or previous.data.shape[0] != cropped.data.shape[0]:
        return None
    p = previous.plan
    if list(p.spacing) != target[1:] or p.data_resampling != plan.data_resampling or p.seg_resampling != plan.seg_resampling:
        return None
    for kwargs in (plan.data_resampling, plan.seg_resampling):
        force = kwargs.get("force_separate_z")
        threshold = kwargs.get("separate_z_anisotropy_threshold", 3.0)
        for current, new in ((cropped.spacing, target), (cropped.spacing, previous.spacing), (previous.spacing, target)):
            if separate_z_axis(current, new, force, threshold) != 0:
                return None
    return previous


def _resample_and_sample(
    cropped: _Cropped, plan: CasePlan, has_seg: bool, in_plane: _InPlane | None = None
) -> tuple[np.ndarray, np.ndarray, dict, _InPlane | None]:
    """Resamples and samples locations. Returns (data, seg, properties, in-plane result to reuse)."""
    data, seg, spacing = cropped.data, cropped.seg, cropped.spacing
    target = list(plan.spacing)
    if len(target) < 3:
        target = [spacing[0]] + target  # 2d: the slice axis keeps its spacing
    new_shape = compute_new_shape(data.shape[1:], spacing, target)
    start = _reuse_in_plane(cropped, plan, target, in_plane)
    if start is not None and tuple(start.data.shape[2:]) == tuple(new_shape[1:]):
        data, seg, spacing = start.data, start.seg, start.spacing
    if tuple(new_shape) != tuple(data.shape[1:]):
        data = resample(data, new_shape, spacing, target, is_seg=False, **plan.data_resampling)
        seg = resample(seg, new_shape, spacing, target, is_seg=True, **plan.seg_resampling)
    props = dict(cropped.properties)
    if has_seg:
        if (
            in_plane is not None
            and seg is in_plane.seg
            and in_plane.class_locations is not None
            and list(in_plane.plan.classes) == list(plan.classes)
        ):
            # The 2d result's segmentation itself (nothing left to resample): the same samples.
            props["class_locations"] = dict(in_plane.class_locations)
        else:
            props["class_locations"] = sample_class_locations(seg, plan.classes)
    reusable = _InPlane(data, seg, target, plan, props.get("class_locations")) if len(plan.spacing) == 2 else None
    seg = seg.astype(np.int16 if seg.size and seg.max() > 127 else np.int8, copy=False)
    return data, seg, props, reusable


def preprocess_case(
    data: np.ndarray, seg: np.ndarray | None, properties: Mapping[str, Any], plan: CasePlan
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Preprocesses one case for one configuration.

    Args:
        data: (C, z, y, x) image as read (any real dtype; read as float32 by fastseg.io).
        seg: (1, z, y, x) integer segmentation, or None for a case without labels.
        properties: the reader's properties; needs "spacing" (z, y, x). Kept and extended.
        plan: the configuration (`CasePlan.from_plans`).

    Returns:
        (data float32 (C, *new_shape), seg int8/int16 (1, *new_shape) with -1 outside the nonzero
        mask, properties with shape_before_cropping, bbox_used_for_cropping,
        shape_after_cropping_and_before_resampling and, for labelled cases, class_locations).
    """
    cropped = _transpose_crop(data, seg, properties, plan)
    return _resample_and_sample(cropped, plan, seg is not None)[:3]


def preprocess_case_multi(
    data: np.ndarray, seg: np.ndarray | None, properties: Mapping[str, Any], plans: Sequence[CasePlan]
) -> Iterator[tuple[CasePlan, np.ndarray, np.ndarray, dict]]:
    """`preprocess_case` for several configurations, transposing, cropping and normalizing once
    per distinct normalization, starting a 3D configuration from a 2d one's in-plane result when
    that gives the same output (`_reuse_in_plane`), and sampling class locations once when a 3D
    configuration ends with the 2d one's segmentation itself (the same grid: nothing resampled).
    Yields (plan, data, seg, properties) per plan, in order (put 2d first to benefit)."""
    key, cropped, in_plane = None, None, None
    for plan in plans:
        if plan.normalization_key() != key:
            key, in_plane = plan.normalization_key(), None
            cropped = _transpose_crop(data, seg, properties, plan)
        out_data, out_seg, props, reusable = _resample_and_sample(cropped, plan, seg is not None, in_plane)
        in_plane = reusable or in_plane
        yield plan, out_data, out_seg, props
