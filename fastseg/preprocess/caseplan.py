"""What preprocessing takes from nnU-Net-format plans for one configuration (`CasePlan`).

Kept apart from the pipeline (`fastseg.preprocess.case`) so that the process that schedules the work
can read plans without loading the kernels.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from fastseg.plan.plans import resolve_configuration
from fastseg.preprocess.locations import classes_to_sample

_RESAMPLING_FN = "resample_data_or_seg_to_shape"
_RESAMPLING_KWARGS = ("is_seg", "order", "order_z", "force_separate_z", "separate_z_anisotropy_threshold")


@dataclass(frozen=True)
class CasePlan:
    """What preprocessing takes from the plans for one configuration.

    Attributes:
        configuration: configuration name ("3d_fullres", "2d", ...).
        data_identifier: output folder name.
        transpose_forward: axis order applied before everything else.
        spacing: target spacing after transposition (two entries for 2d configurations).
        normalization_schemes: scheme per channel.
        use_mask_for_norm: per channel, normalize inside the nonzero mask only.
        intensity_properties: per channel, the fingerprint's foreground statistics (CT scheme).
        data_resampling: keyword arguments of `fastseg.ops.resample` for the image.
        seg_resampling: keyword arguments of `fastseg.ops.resample` for the segmentation.
        classes: classes / regions whose locations are sampled (`classes_to_sample`).
    """

    configuration: str
    data_identifier: str
    transpose_forward: tuple[int, ...]
    spacing: tuple[float, ...]
    normalization_schemes: tuple[str, ...]
    use_mask_for_norm: tuple[bool, ...]
    intensity_properties: tuple[Mapping[str, float], ...]
    data_resampling: Mapping[str, Any] = field(default_factory=dict)
    seg_resampling: Mapping[str, Any] = field(default_factory=dict)
    classes: tuple = ()

    @classmethod
    def from_plans(cls, plans: Mapping[str, Any], configuration: str, dataset_json: Mapping[str, Any]) -> CasePlan:
        """Reads one configuration (inheritance resolved) of nnU-Net-format plans."""
        cfg = resolve_configuration(plans, configuration)
        for key in ("resampling_fn_data", "resampling_fn_seg"):
            if cfg.get(key, _RESAMPLING_FN) != _RESAMPLING_FN:
                raise ValueError(
                    f"configuration {configuration!r} uses {key}={cfg[key]!r}; fastseg implements {_RESAMPLING_FN!r} only"
                )
        if cfg.get("preprocessor_name", "DefaultPreprocessor") != "DefaultPreprocessor":
            raise ValueError(
                f"configuration {configuration!r} uses preprocessor {cfg['preprocessor_name']!r}; fastseg implements "
                "DefaultPreprocessor only"
            )
        schemes = tuple(cfg["normalization_schemes"])
        props = plans.get("foreground_intensity_properties_per_channel", {})
        return cls(
            configuration=configuration,
            data_identifier=cfg["data_identifier"],
            transpose_forward=tuple(int(a) for a in plans["transpose_forward"]),
            spacing=tuple(float(s) for s in cfg["spacing"]),
            normalization_schemes=schemes,
            use_mask_for_norm=tuple(bool(u) for u in cfg["use_mask_for_norm"]),
            intensity_properties=tuple(dict(props.get(str(c), {})) for c in range(len(schemes))),
            data_resampling=_resampling_kwargs(cfg.get("resampling_fn_data_kwargs", {}), configuration),
            seg_resampling=_resampling_kwargs(cfg.get("resampling_fn_seg_kwargs", {}), configuration),
            classes=tuple(classes_to_sample(dataset_json["labels"])),
        )

    def digest(self) -> str:
        """A hash of everything that determines the output (stored with each case). The configuration's
        name is left out: 3d_cascade_fullres writes the same data as 3d_fullres."""
        content = asdict(self)
        del content["configuration"]
        blob = json.dumps(content, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def normalization_key(self) -> str:
        """Equal for plans whose transpose, crop and normalization steps are the same."""
        return json.dumps(
            [self.transpose_forward, self.normalization_schemes, self.use_mask_for_norm, self.intensity_properties],
            sort_keys=True,
        )


def _resampling_kwargs(kwargs: Mapping[str, Any], configuration: str) -> dict:
    unknown = sorted(set(kwargs) - set(_RESAMPLING_KWARGS))
    if unknown:
        raise ValueError(f"configuration {configuration!r}: unsupported resampling arguments {unknown}")
    return {k: v for k, v in kwargs.items() if k != "is_seg"}
