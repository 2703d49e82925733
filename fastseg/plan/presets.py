"""The planner presets: the numbers that distinguish nnU-Net's classic ExperimentPlanner from its
residual-encoder presets (nnUNetPlannerResEncM / L / XL). Kept free of heavy imports, so the CLI can
list the choices without loading the planner."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from fastseg.plan.vram import PLAIN_UNET, RESENC_UNET

#: The `--planner` choices.
PLANNERS = ("classic", "resenc-m", "resenc-l", "resenc-xl")


@dataclass(frozen=True)
class PlannerPreset:
    """The numbers that distinguish nnU-Net's planners.

    Attributes:
        planner_class_name: nnU-Net's class name, written as `experiment_planner_used`.
        plans_name: default plans identifier (file name without .json).
        network_class_name: the U-Net class (PlainConvUNet or ResidualEncoderUNet).
        default_gpu_memory_gb: the preset's GPU memory target.
        reference_gb: the GPU memory the reference values correspond to.
        reference_val_2d / reference_val_3d: feature-map count that fits `reference_gb` at the
            reference batch size (12 in 2D, 2 in 3D).
        blocks_per_stage_encoder: convolutions (plain) or residual blocks per encoder stage.
        blocks_per_stage_decoder: convolutions per decoder stage.
        max_dataset_covered: largest fraction of the dataset's voxels one batch may cover.
        shrink_for_min_batch: True shrinks the patch until a batch of 2 fits the reference
            (the classic planner); False until one reference batch fits (the ResEnc planners).
        reuses_default_data: ResEnc presets share the 2d / 3d_fullres data of nnUNetPlans.
    """

    planner_class_name: str
    plans_name: str
    network_class_name: str
    default_gpu_memory_gb: float
    reference_gb: float
    reference_val_2d: int
    reference_val_3d: int
    blocks_per_stage_encoder: tuple[int, ...]
    blocks_per_stage_decoder: tuple[int, ...]
    max_dataset_covered: float
    shrink_for_min_batch: bool
    reuses_default_data: bool


_RESENC_ENCODER = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
_RESENC_DECODER = (1,) * 12

_RESENC = {
    "network_class_name": RESENC_UNET,
    "blocks_per_stage_encoder": _RESENC_ENCODER,
    "blocks_per_stage_decoder": _RESENC_DECODER,
    "max_dataset_covered": 1.0,
    "shrink_for_min_batch": False,
    "reuses_default_data": True,
}

PRESETS: dict[str, PlannerPreset] = {
    "classic": PlannerPreset(
        planner_class_name="ExperimentPlanner",
        plans_name="nnUNetPlans",
        network_class_name=PLAIN_UNET,
        default_gpu_memory_gb=8,
        reference_gb=8,
        reference_val_2d=85_000_000,
        reference_val_3d=560_000_000,
        blocks_per_stage_encoder=(2,) * 14,
        blocks_per_stage_decoder=(2,) * 13,
        max_dataset_covered=0.05,
        shrink_for_min_batch=True,
        reuses_default_data=False,
    ),
    "resenc-m": PlannerPreset(
        planner_class_name="nnUNetPlannerResEncM",
        plans_name="nnUNetResEncUNetMPlans",
        default_gpu_memory_gb=8,
        reference_gb=8,
        reference_val_2d=135_000_000,
        reference_val_3d=680_000_000,
        **_RESENC,
    ),
    "resenc-l": PlannerPreset(
        planner_class_name="nnUNetPlannerResEncL",
        plans_name="nnUNetResEncUNetLPlans",
        default_gpu_memory_gb=24,
        reference_gb=24,
        reference_val_2d=380_000_000,
        reference_val_3d=2_100_000_000,
        **_RESENC,
    ),
    "resenc-xl": PlannerPreset(
        planner_class_name="nnUNetPlannerResEncXL",
        plans_name="nnUNetResEncUNetXLPlans",
        default_gpu_memory_gb=40,
        reference_gb=40,
        reference_val_2d=560_000_000,
        reference_val_3d=3_600_000_000,
        **_RESENC,
    ),
}


def look_up_planner(name: str) -> str:
    """Validates a planner name, suggesting the closest one when it is unknown."""
    if name in PRESETS:
        return name
    close = difflib.get_close_matches(str(name), PLANNERS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown planner {name!r}; expected one of {', '.join(PLANNERS)}.{hint}")
