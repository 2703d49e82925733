"""Experiment planning: from a dataset fingerprint and dataset.json to nnU-Net v2 plans.

A pure function, `plan_experiment(fingerprint, dataset_json, options) -> plans dict`, that applies the
rules of nnU-Net's `ExperimentPlanner` and of its residual-encoder presets (nnUNetPlannerResEncM/L/XL)
and returns the same plans, value for value, in the same schema and key order. The rules:

1. Target spacing (3d_fullres): the per-axis median of the case spacings. If the coarsest axis is
   more than 3x coarser than the others *and* has fewer than a third of their voxels, that axis takes
   the 10th percentile of its spacings instead (never finer than the other axes, +1e-5).
2. Transpose: the coarsest axis of the target spacing goes first; the others keep their order.
3. Per configuration: start from a patch with the spacing's aspect ratio and the volume of 256^3
   (3D) or 2048^2 (2D), clipped to the median shape after resampling; derive the topology
   (`fastseg.plan.topology`); while the network's feature-map count (`fastseg.plan.vram`) exceeds the
   reference (scaled by the GPU memory target), shrink the axis that is largest relative to the median
   shape by one pooling step. The batch size is the remaining headroom times the reference batch size,
   capped so a batch covers at most 5 % of the dataset's voxels (100 % for the ResEnc presets), and
   never below 2.
4. 3d_lowres: while the fullres patch covers less than 25 % of the median image, grow the spacing by
   3 % per step (the axes finer than half the coarsest first) and re-plan; the configuration is dropped
   when the image shrinks by less than 2x. With a 3d_lowres there is a 3d_cascade_fullres.
5. 2d: the in-plane axes of the transposed fullres spacing and median shape.
6. Normalization per channel from its dataset.json name (CT, noNorm, zscore, rescale_to_0_1,
   rgb_to_0_1; anything else z-score); z-score uses the nonzero mask when cropping kept less than 3/4
   of the voxels (median over cases).

Numbers follow nnU-Net's arithmetic step by step (same float operations in the same order), so the
plans compare equal, not just close.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastseg.plan.presets import PRESETS, PlannerPreset, look_up_planner
from fastseg.plan.topology import pool_and_conv_props
from fastseg.plan.vram import PLAIN_UNET, UNetSpec, feature_map_size

logger = logging.getLogger(__name__)

#: nnU-Net's ANISO_THRESHOLD, for the target spacing rule.
ANISO_THRESHOLD = 3.0

# Constants every nnU-Net planner shares.
_BASE_FEATURES = 32
_MAX_FEATURES_2D = 512
_MAX_FEATURES_3D = 320
_REF_BATCH_2D = 12
_REF_BATCH_3D = 2
_MIN_EDGE = 4
_MIN_BATCH = 2
_LOWRES_THRESHOLD = 0.25
_LOWRES_STEP = 1.03
_MAX_ITERATIONS = 100_000

#: Channel name (case-insensitive) -> normalization scheme; other names get ZScoreNormalization.
CHANNEL_NAME_TO_SCHEME = {
    "ct": "CTNormalization",
    "nonorm": "NoNormalization",
    "zscore": "ZScoreNormalization",
    "rescale_to_0_1": "RescaleTo01Normalization",
    "rgb_to_0_1": "RGBTo01Normalization",
}
#: Schemes that leave voxels outside the nonzero mask at zero when use_mask_for_norm is on.
_MASKABLE_SCHEMES = ("ZScoreNormalization",)

_RESAMPLING_FN = "resample_data_or_seg_to_shape"
_RESAMPLING_DATA_KWARGS = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
_RESAMPLING_SEG_KWARGS = {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None}
_RESAMPLING_PROB_KWARGS = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}

# image_reader_writer candidates in nnU-Net's registry order, with their file endings.
_READERS = (
    ("NaturalImage2DIO", (".png", ".bmp", ".tif")),
    ("SimpleITKIO", (".nii.gz", ".nrrd", ".mha", ".gipl")),
    ("Tiff3DIO", (".tif", ".tiff")),
    ("NibabelIO", (".nii", ".nii.gz")),
)


@dataclass(frozen=True)
class PlannerOptions:
    """What `plan_experiment` may be told besides the data.

    Attributes:
        planner: "classic" (nnU-Net's ExperimentPlanner, default), "resenc-m", "resenc-l" or "resenc-xl".
        gpu_memory_gb: GPU memory target in GB; None uses the preset's (8, 8, 24, 40).
        dataset_name: written as `dataset_name` (nnU-Net uses the raw folder name, e.g.
            "Dataset001_Heart"); None uses dataset.json's "name".
        plans_name: plans identifier; None uses the preset's ("nnUNetPlans", "nnUNetResEncUNetMPlans", ...).
        overwrite_target_spacing: a fixed 3d_fullres target spacing (z, y, x) instead of rule 1.
        suppress_transpose: keep the axis order (transpose [0, 1, 2]).
        image_reader_writer: nnU-Net reader class name for the plans; None derives it from
            dataset.json (`overwrite_image_reader_writer`, else the file ending).
    """

    planner: str = "classic"
    gpu_memory_gb: float | None = None
    dataset_name: str | None = None
    plans_name: str | None = None
    overwrite_target_spacing: tuple[float, ...] | None = None
    suppress_transpose: bool = False
    image_reader_writer: str | None = None

    def __post_init__(self) -> None:
        look_up_planner(self.planner)
        if self.gpu_memory_gb is not None and not (np.isfinite(self.gpu_memory_gb) and self.gpu_memory_gb > 0):
            raise ValueError(f"gpu_memory_gb must be a positive number, got {self.gpu_memory_gb}")
        if self.overwrite_target_spacing is not None:
            sp = tuple(self.overwrite_target_spacing)
            if len(sp) != 3 or not all(isinstance(v, (int, float)) and v > 0 for v in sp):
                raise ValueError(f"overwrite_target_spacing must be three positive floats (z, y, x), got {sp}")


# --- rules ------------------------------------------------------------------------------------------


def fullres_target_spacing(
    spacings: Sequence[Sequence[float]],
    shapes_after_crop: Sequence[Sequence[int]],
    anisotropy_threshold: float = ANISO_THRESHOLD,
) -> np.ndarray:
    """Rule 1: the 3d_fullres target spacing (median, or the 10th percentile along a coarse axis)."""
    sp = np.vstack(spacings).astype(np.float64)
    target = np.percentile(sp, 50, 0)
    median_size = np.percentile(np.vstack(shapes_after_crop), 50, 0)
    worst = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != worst]
    other_spacings = [target[a] for a in others]
    other_sizes = [median_size[a] for a in others]
    coarse_spacing = target[worst] > anisotropy_threshold * max(other_spacings)
    few_voxels = median_size[worst] * anisotropy_threshold < min(other_sizes)
    if coarse_spacing and few_voxels:
        value = np.percentile(sp[:, worst], 10)
        if value < max(other_spacings):
            value = max(max(other_spacings), value) + 1e-5
        target[worst] = value
    return target


def transpose_axes(target_spacing: Sequence[float], suppress: bool = False) -> tuple[list[int], list[int]]:
    """Rule 2: (transpose_forward, transpose_backward)."""
    if suppress:
        return [0, 1, 2], [0, 1, 2]
    first = int(np.argmax(target_spacing))
    forward = [first] + [a for a in range(3) if a != first]
    backward = [forward.index(a) for a in range(3)]
    return forward, backward


def normalization_schemes(channel_names: Mapping[str, str], median_relative_size_after_cropping: float) -> tuple[list[str], list[bool]]:
    """Rule 6: (normalization_schemes, use_mask_for_norm) per channel, in channel order."""
    schemes = [CHANNEL_NAME_TO_SCHEME.get(str(n).casefold(), "ZScoreNormalization") for n in channel_names.values()]
    if median_relative_size_after_cropping < 3 / 4:
        use_mask = [s in _MASKABLE_SCHEMES for s in schemes]
    else:
        use_mask = [False] * len(schemes)
    return schemes, use_mask


def reader_writer_name(dataset_json: Mapping[str, Any], is_2d: bool) -> str:
    """The nnU-Net image reader class name nnU-Net would write for this dataset.

    nnU-Net tries its readers in registry order on an example image; here the choice follows from the
    file ending, and for .tif from whether the images are 2D.
    """
    override = dataset_json.get("overwrite_image_reader_writer")
    if override not in (None, "None"):
        return str(override)
    ending = str(dataset_json.get("file_ending", "")).lower()
    for name, endings in _READERS:
        if ending in endings:
            if name == "NaturalImage2DIO" and ending == ".tif" and not is_2d:
                continue
            return name
    raise ValueError(
        f"no nnU-Net image reader handles file_ending {dataset_json.get('file_ending')!r}; supported: "
        f"{sorted({e for _, es in _READERS for e in es})}"
    )


# --- one configuration --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    preset: PlannerPreset
    gpu_memory_gb: float
    num_classes: int  # output channels nnU-Net assumes for the estimate: len(dataset.json labels)
    schemes: list[str]
    use_mask: list[bool]


def _features(num_stages: int, dim: int) -> tuple[int, ...]:
    cap = _MAX_FEATURES_2D if dim == 2 else _MAX_FEATURES_3D
    return tuple(min(cap, _BASE_FEATURES * 2**i) for i in range(num_stages))


def _initial_patch_size(spacing: np.ndarray, median_shape: Sequence[float]) -> list:
    inverse = 1 / np.asarray(spacing)
    volume = 256**3 if len(spacing) == 3 else 2048**2  # deliberately larger than any GPU fits
    scaled = inverse * (volume / np.prod(inverse)) ** (1 / len(spacing))
    initial = [round(v) for v in scaled]
    # Clipped to the median shape, which may be fractional: topology pads fractions differently.
    return [min(p, m) for p, m in zip(initial, median_shape[: len(spacing)])]


def _architecture(ctx: _Context, dim: int, topo) -> dict:
    p = ctx.preset
    n = topo.num_stages
    blocks_key = "n_conv_per_stage" if p.network_class_name == PLAIN_UNET else "n_blocks_per_stage"
    conv = "torch.nn.modules.conv.Conv3d" if dim == 3 else "torch.nn.modules.conv.Conv2d"
    norm = "torch.nn.modules.instancenorm.InstanceNorm3d" if dim == 3 else "torch.nn.modules.instancenorm.InstanceNorm2d"
    return {
        "network_class_name": p.network_class_name,
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": list(_features(n, dim)),
            "conv_op": conv,
            "kernel_sizes": [list(k) for k in topo.conv_kernel_sizes],
            "strides": [list(s) for s in topo.pool_kernel_sizes],
            blocks_key: list(p.blocks_per_stage_encoder[:n]),
            "n_conv_per_stage_decoder": list(p.blocks_per_stage_decoder[: n - 1]),
            "conv_bias": True,
            "norm_op": norm,
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _estimate(ctx: _Context, topo, cache: dict) -> int:
    key = (topo.patch_size, topo.pool_kernel_sizes)
    if key not in cache:
        n = topo.num_stages
        spec = UNetSpec(
            ctx.preset.network_class_name,
            _features(n, len(topo.patch_size)),
            topo.pool_kernel_sizes,
            ctx.preset.blocks_per_stage_encoder[:n],
            ctx.preset.blocks_per_stage_decoder[: n - 1],
        )
        cache[key] = feature_map_size(spec, topo.patch_size, ctx.num_classes)
    return cache[key]


def _plan_configuration(
    ctx: _Context,
    spacing: np.ndarray,
    median_shape: Sequence[float],
    data_identifier: str,
    approximate_n_voxels_dataset: float,
    cache: dict,
) -> dict:
    """Rule 3 for one spacing: patch size, topology, batch size."""
    if not all(s > 0 for s in spacing):
        raise ValueError(f"spacing must be positive, got {list(spacing)}")
    dim = len(spacing)
    p = ctx.preset
    topo = pool_and_conv_props(spacing, _initial_patch_size(spacing, median_shape), _MIN_EDGE)
    estimate = _estimate(ctx, topo, cache)
    reference_val = p.reference_val_2d if dim == 2 else p.reference_val_3d
    reference = reference_val * (ctx.gpu_memory_gb / p.reference_gb)
    ref_bs = _REF_BATCH_2D if dim == 2 else _REF_BATCH_3D

    def too_large(est: int) -> bool:
        return (est / ref_bs * 2) > reference if p.shrink_for_min_batch else est > reference

    iterations = 0
    while too_large(estimate):
        iterations += 1
        if iterations > _MAX_ITERATIONS:
            raise ValueError(
                f"could not shrink the patch below the memory target (patch {list(topo.patch_size)}, "
                f"estimate {estimate}, reference {reference}); raise --gpu-memory-gb"
            )
        patch = list(topo.patch_size)
        ratios = [pv / mv for pv, mv in zip(patch, median_shape[:dim])]
        axis = int(np.argsort(ratios)[-1])  # the axis largest relative to the median shape
        # Step down by the divisibility the *smaller* patch would need: stepping by the current one
        # could skip valid sizes (256 -> 192 although 224 pools fine).
        trial = list(patch)
        trial[axis] -= topo.divisible_by[axis]
        patch[axis] -= pool_and_conv_props(spacing, trial, _MIN_EDGE).divisible_by[axis]
        topo = pool_and_conv_props(spacing, patch, _MIN_EDGE)
        estimate = _estimate(ctx, topo, cache)

    batch_size = round((reference / estimate) * ref_bs)
    cap = round(approximate_n_voxels_dataset * p.max_dataset_covered / np.prod(topo.patch_size, dtype=np.float64))
    batch_size = max(min(batch_size, cap), _MIN_BATCH)

    return {
        "data_identifier": data_identifier,
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": int(batch_size),
        "patch_size": [int(v) for v in topo.patch_size],
        "median_image_size_in_voxels": [_json_number(v) for v in median_shape],
        "spacing": [float(v) for v in spacing],
        "normalization_schemes": list(ctx.schemes),
        "use_mask_for_norm": list(ctx.use_mask),
        "resampling_fn_data": _RESAMPLING_FN,
        "resampling_fn_seg": _RESAMPLING_FN,
        "resampling_fn_data_kwargs": dict(_RESAMPLING_DATA_KWARGS),
        "resampling_fn_seg_kwargs": dict(_RESAMPLING_SEG_KWARGS),
        "resampling_fn_probabilities": _RESAMPLING_FN,
        "resampling_fn_probabilities_kwargs": dict(_RESAMPLING_PROB_KWARGS),
        "architecture": _architecture(ctx, dim, topo),
    }


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> list[int]:
    """Shape after resampling, `round(spacing / target * shape)` per axis: the rule of
    `fastseg.ops.compute_new_shape` (tests/test_planner.py checks they agree), restated here so that
    planning does not load the kernels (and torch with them)."""
    return [round(s / t * n) for s, t, n in zip(spacing, target, shape)]


def _json_number(v: Any) -> int | float:
    if isinstance(v, (int, np.integer)):
        return int(v)
    return float(v)


# --- the whole plan -------------------------------------------------------------------------------------


def _normalized_fingerprint(fingerprint: Mapping[str, Any]) -> dict:
    """The fingerprint as nnU-Net's planner sees it: loaded from JSON (string channel keys, floats)."""
    missing = [
        k
        for k in ("spacings", "shapes_after_crop", "foreground_intensity_properties_per_channel", "median_relative_size_after_cropping")
        if k not in fingerprint
    ]
    if missing:
        raise ValueError(f"fingerprint lacks {missing}; got keys {sorted(fingerprint)}")

    def default(o):
        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return float(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"fingerprint holds a {type(o).__name__}, which JSON cannot store")

    fp = json.loads(json.dumps(fingerprint, default=default, sort_keys=True))
    if not fp["spacings"] or len(fp["spacings"]) != len(fp["shapes_after_crop"]):
        raise ValueError(
            f"fingerprint needs one spacing per case and at least one case, got {len(fp['spacings'])} spacings and "
            f"{len(fp['shapes_after_crop'])} shapes"
        )
    if any(len(s) != 3 for s in fp["spacings"]) or any(len(s) != 3 for s in fp["shapes_after_crop"]):
        raise ValueError("fingerprint spacings and shapes_after_crop must have 3 entries (z, y, x) per case")
    return fp


def _channel_names(dataset_json: Mapping[str, Any]) -> Mapping[str, str]:
    names = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not names:
        raise ValueError(f"dataset.json needs 'channel_names' (channel index -> name), got keys {sorted(dataset_json)}")
    return names


def data_identifier(options: PlannerOptions, configuration: str) -> str:
    """Folder name of a configuration's preprocessed data (ResEnc presets reuse nnUNetPlans' 2d and 3d_fullres)."""
    preset = PRESETS[options.planner]
    if preset.reuses_default_data and configuration in ("2d", "3d_fullres"):
        return "nnUNetPlans_" + configuration
    return (options.plans_name or preset.plans_name) + "_" + configuration


def plan_experiment(fingerprint: Mapping[str, Any], dataset_json: Mapping[str, Any], options: PlannerOptions = PlannerOptions()) -> dict:
    """Plans the 2d, 3d_fullres, 3d_lowres and 3d_cascade_fullres configurations of a dataset.

    Args:
        fingerprint: the dataset fingerprint (`fastseg.plan.fingerprint`, or nnU-Net's
            dataset_fingerprint.json loaded): spacings and shapes_after_crop per case (z, y, x),
            foreground_intensity_properties_per_channel, median_relative_size_after_cropping.
        dataset_json: the dataset's dataset.json: channel_names, labels, numTraining, file_ending.
        options: planner preset and overrides (default: nnU-Net's classic planner, 8 GB).

    Returns:
        The plans as a JSON-ready dict in nnU-Net v2's schema (what nnUNetv2_plan_experiment writes).

    Raises:
        ValueError: missing fingerprint or dataset.json fields, non-positive spacings, an unknown planner.
    """
    fp = _normalized_fingerprint(fingerprint)
    preset = PRESETS[look_up_planner(options.planner)]
    gpu_gb = preset.default_gpu_memory_gb if options.gpu_memory_gb is None else float(options.gpu_memory_gb)
    if gpu_gb != preset.default_gpu_memory_gb and preset.reuses_default_data:
        logger.warning(
            "planner %s is tuned for %s GB; planning for %s GB as requested", options.planner, preset.default_gpu_memory_gb, gpu_gb
        )
    for key in ("labels", "numTraining"):
        if key not in dataset_json:
            raise ValueError(f"dataset.json lacks {key!r}; got keys {sorted(dataset_json)}")
    num_training = dataset_json["numTraining"]
    channel_names = _channel_names(dataset_json)
    schemes, use_mask = normalization_schemes(channel_names, fp["median_relative_size_after_cropping"])
    ctx = _Context(preset, gpu_gb, len(dataset_json["labels"]), schemes, use_mask)
    plans_name = options.plans_name or preset.plans_name
    cache: dict = {}

    spacings, shapes = fp["spacings"], fp["shapes_after_crop"]
    if any(v <= 0 for s in spacings for v in s):
        raise ValueError(f"fingerprint spacings must be positive, got {spacings}")
    if options.overwrite_target_spacing is not None:
        target = np.array(options.overwrite_target_spacing, dtype=np.float64)
    else:
        target = fullres_target_spacing(spacings, shapes)
    forward, backward = transpose_axes(target, options.suppress_transpose)
    spacing_t = target[forward]
    new_shapes = [resampled_shape(shape, sp, target) for sp, shape in zip(spacings, shapes)]
    median_t = np.median(new_shapes, 0)[forward]
    n_voxels_dataset = float(np.prod(median_t, dtype=np.float64) * num_training)

    fullres = lowres = None
    if median_t[0] != 1:
        fullres = _plan_configuration(ctx, spacing_t, median_t, data_identifier(options, "3d_fullres"), n_voxels_dataset, cache)
        lowres = _plan_lowres(ctx, fullres, spacing_t, median_t, num_training, options, cache)
        fullres["batch_dice"] = lowres is not None
        if lowres is not None:
            lowres["batch_dice"] = False
    plan_2d = _plan_configuration(ctx, spacing_t[1:], median_t[1:], data_identifier(options, "2d"), n_voxels_dataset, cache)
    plan_2d["batch_dice"] = True

    configurations: dict[str, dict] = {"2d": plan_2d}
    if lowres is not None:
        configurations["3d_lowres"] = lowres
        lowres["next_stage"] = "3d_cascade_fullres"
    if fullres is not None:
        configurations["3d_fullres"] = fullres
        if lowres is not None:
            configurations["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}

    median_spacing = np.median(spacings, 0)[forward]
    median_shape = np.median(shapes, 0)[forward]
    is_2d = all(s[0] == 1 for s in shapes)
    plans = {
        "dataset_name": options.dataset_name or str(dataset_json.get("name", "Dataset")),
        "plans_name": plans_name,
        "original_median_spacing_after_transp": [float(v) for v in median_spacing],
        "original_median_shape_after_transp": [round(float(v)) for v in median_shape],
        "image_reader_writer": options.image_reader_writer or reader_writer_name(dataset_json, is_2d),
        "transpose_forward": forward,
        "transpose_backward": backward,
        "configurations": configurations,
        "experiment_planner_used": preset.planner_class_name,
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": copy.deepcopy(fp["foreground_intensity_properties_per_channel"]),
    }
    for name, cfg in configurations.items():
        if "patch_size" in cfg:
            logger.debug("%s: spacing %s, patch %s, batch %s", name, cfg["spacing"], cfg["patch_size"], cfg["batch_size"])
    return plans


def _plan_lowres(ctx, fullres: dict, spacing_t: np.ndarray, median_t: np.ndarray, num_training, options, cache) -> dict | None:
    """Rule 4: the 3d_lowres configuration, or None."""
    median_voxels = np.prod(median_t, dtype=np.float64)
    patch_voxels = np.prod(fullres["patch_size"], dtype=np.float64)
    spacing = np.array(spacing_t, dtype=np.float64)
    lowres = None
    iterations = 0
    while patch_voxels / median_voxels < _LOWRES_THRESHOLD:
        iterations += 1
        if iterations > _MAX_ITERATIONS:
            raise ValueError(f"3d_lowres search did not converge (spacing {spacing.tolist()})")
        coarsest = max(spacing)
        fine = (coarsest / spacing) > 2
        if np.any(fine):
            spacing[fine] *= _LOWRES_STEP
        else:
            spacing *= _LOWRES_STEP
        shape = spacing_t / spacing * median_t
        median_voxels = np.prod(shape, dtype=np.float64)
        lowres = _plan_configuration(
            ctx,
            spacing.copy(),
            tuple(round(v) for v in shape),
            data_identifier(options, "3d_lowres"),
            float(np.prod(median_voxels) * num_training),
            cache,
        )
        patch_voxels = np.prod(lowres["patch_size"], dtype=np.int64)
    if np.prod(median_t, dtype=np.float64) / median_voxels < 2:
        if lowres is not None:
            logger.info("dropping 3d_lowres: its images are less than 2x smaller than 3d_fullres's")
        return None
    return lowres
