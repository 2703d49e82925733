"""fastseg.plan.planner (and its topology / VRAM rules) against nnunetv2's experiment planners.

The reference is nnU-Net itself: its planner classes run in this process on the same fingerprint
and dataset.json (written to a temporary nnUNet_raw / nnUNet_preprocessed pair), and the plans must
compare equal -- every configuration, every number, the same keys.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner as dep
from nnunetv2.experiment_planning.experiment_planners import network_topology as topology_ref
from nnunetv2.experiment_planning.experiment_planners.residual_unets import residual_encoder_unet_planners as resenc

from fastseg.plan.planner import PlannerOptions, fullres_target_spacing, look_up_planner, plan_experiment, transpose_axes
from fastseg.plan.topology import pad_to_multiple, pool_and_conv_props
from fastseg.plan.vram import PLAIN_UNET, RESENC_UNET, UNetSpec, feature_map_size


NNUNET_PLANNERS = {
    "classic": "ExperimentPlanner",
    "resenc-m": "nnUNetPlannerResEncM",
    "resenc-l": "nnUNetPlannerResEncL",
    "resenc-xl": "nnUNetPlannerResEncXL",
}
LABELS = {"background": 0, "organ": 1, "lesion": 2, "neighbour": 3}
CT_PROPS = {"max": 1500.0, "mean": 80.5, "median": 60.0, "min": -1000.0, "percentile_00_5": -950.0, "percentile_99_5": 1200.0, "std": 210.25}


def make_fingerprint(seed: int, n: int, spacing, shape, *, jitter=0.1, channels=1, relative_size=1.0) -> dict:
    """A fingerprint of `n` cases whose spacings and shapes scatter around the given ones."""
    rng = np.random.default_rng(seed)
    spacings = [[float(s * (1 + rng.uniform(-jitter, jitter))) for s in spacing] for _ in range(n)]
    shapes = [[1 if s == 1 else round(float(s * (1 + rng.uniform(-jitter, jitter)))) for s in shape] for _ in range(n)]
    return {
        "foreground_intensity_properties_per_channel": {str(c): dict(CT_PROPS) for c in range(channels)},
        "median_relative_size_after_cropping": relative_size,
        "shapes_after_crop": shapes,
        "spacings": spacings,
    }


def make_dataset_json(fingerprint: dict, channel_names, labels=LABELS, **extra) -> dict:
    return {
        "channel_names": {str(i): c for i, c in enumerate(channel_names)},
        "labels": labels,
        "numTraining": len(fingerprint["spacings"]),
        "file_ending": ".nii.gz",
        **extra,
    }


DATASETS = {
    "iso-ct": (make_fingerprint(0, 10, (1.0, 1.0, 1.0), (128, 128, 128)), ["CT"], {}),
    "aniso-10th-percentile": (make_fingerprint(1, 12, (5.0, 0.7, 0.7), (20, 256, 256), jitter=0.4), ["T2"], {}),
    "ct-lowres": (make_fingerprint(3, 30, (1.5, 0.8, 0.8), (300, 512, 512)), ["CT"], {}),
    "2d-rgb": (make_fingerprint(4, 8, (999.0, 1.0, 1.0), (1, 512, 640), channels=3), ["R", "G", "B"], {}),
    "mr-multichannel-mask": (make_fingerprint(5, 9, (1.0, 1.0, 1.0), (140, 170, 140), channels=4, relative_size=0.6), ["T1", "T1ce", "T2", "FLAIR"], {}),
    "x-coarse-transposed": (make_fingerprint(6, 9, (1.0, 1.0, 10.0), (200, 200, 15), jitter=0.3), ["rescale_to_0_1"], {}),
    "regions": (
        make_fingerprint(7, 6, (2.0, 0.9, 0.9), (60, 180, 200)),
        ["noNorm"],
        {"labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}, "regions_class_order": [1, 2, 3]},
    ),
    "ignore-label": (make_fingerprint(8, 7, (3.0, 0.75, 0.75), (48, 320, 300)), ["CT"], {"labels": {**LABELS, "ignore": 4}}),
}


def nnunet_plans(tmp_path, monkeypatch, fingerprint: dict, dataset_json: dict, planner: str = "classic", gpu_memory_gb=None) -> dict:
    """nnU-Net's planner on this fingerprint, run in this process; returns the plans it saved."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    name = "Dataset001_Test"
    raw, pre = tmp_path / "raw" / name, tmp_path / "pre" / name
    raw.mkdir(parents=True)
    pre.mkdir(parents=True)
    dj = copy.deepcopy(dataset_json)
    # Listing the cases in dataset.json spares nnU-Net from looking for image files.
    dj["dataset"] = {f"c{i}": {"images": [f"c{i}_0000.nii.gz"], "label": f"c{i}.nii.gz"} for i in range(len(fingerprint["spacings"]))}
    (raw / "dataset.json").write_text(json.dumps(dj))
    (pre / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")  # spares nnU-Net a `hostname` call per network it builds
    monkeypatch.setattr(dep, "nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setattr(dep, "nnUNet_preprocessed", str(tmp_path / "pre"))
    cls = getattr(resenc, NNUNET_PLANNERS[planner]) if planner != "classic" else dep.ExperimentPlanner
    kwargs = {} if gpu_memory_gb is None else {"gpu_memory_target_in_gb": gpu_memory_gb}
    planner_obj = cls(name, **kwargs)
    planner_obj.determine_reader_writer = lambda: SimpleITKIO
    with contextlib.redirect_stdout(io.StringIO()):
        planner_obj.plan_experiment()
    return json.loads((pre / f"{planner_obj.plans_identifier}.json").read_text())


def ours(fingerprint, dataset_json, planner="classic", gpu_memory_gb=None) -> dict:
    plans = plan_experiment(fingerprint, dataset_json, PlannerOptions(planner=planner, gpu_memory_gb=gpu_memory_gb, dataset_name="Dataset001_Test"))
    return json.loads(json.dumps(plans))  # what plans.json holds


def assert_plans_equal(got: dict, expected: dict) -> None:
    assert list(got["configurations"]) == list(expected["configurations"])
    for name, cfg in expected["configurations"].items():
        for key, value in cfg.items():
            assert got["configurations"][name].get(key) == value, f"{name}.{key}: {got['configurations'][name].get(key)} != {value}"
        assert list(got["configurations"][name]) == list(cfg), f"{name}: keys differ"
    assert got == expected
    assert json.dumps(got) == json.dumps(expected), "same content but a different key order"


@pytest.mark.parametrize("name", list(DATASETS))
def test_classic_planner_matches_nnunet(tmp_path, monkeypatch, name):
    fingerprint, channels, extra = DATASETS[name]
    dataset_json = make_dataset_json(fingerprint, channels, **extra)
    assert_plans_equal(ours(fingerprint, dataset_json), nnunet_plans(tmp_path, monkeypatch, fingerprint, dataset_json))


@pytest.mark.parametrize(
    "planner,name",
    [
        pytest.param("resenc-m", "iso-ct", id="resenc-m-iso"),
        pytest.param("resenc-l", "aniso-10th-percentile", id="resenc-l-aniso"),
        pytest.param("resenc-l", "x-coarse-transposed", id="resenc-l-transposed"),
        pytest.param("resenc-xl", "mr-multichannel-mask", id="resenc-xl-mr"),
        pytest.param("resenc-xl", "2d-rgb", id="resenc-xl-2d"),
    ],
)
def test_resenc_presets_match_nnunet(tmp_path, monkeypatch, planner, name):
    fingerprint, channels, extra = DATASETS[name]
    dataset_json = make_dataset_json(fingerprint, channels, **extra)
    assert_plans_equal(ours(fingerprint, dataset_json, planner), nnunet_plans(tmp_path, monkeypatch, fingerprint, dataset_json, planner))


@pytest.mark.parametrize("gb", [4.0, 12.0, 40.0], ids=lambda g: f"{g:g}GB")
def test_gpu_memory_target_matches_nnunet(tmp_path, monkeypatch, gb):
    fingerprint, channels, extra = DATASETS["iso-ct"]
    dataset_json = make_dataset_json(fingerprint, channels, **extra)
    expected = nnunet_plans(tmp_path, monkeypatch, fingerprint, dataset_json, gpu_memory_gb=gb)
    assert_plans_equal(ours(fingerprint, dataset_json, gpu_memory_gb=gb), expected)


def test_nnunet_plans_manager_reads_our_plans():
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    fingerprint, channels, extra = DATASETS["ct-lowres"]
    dataset_json = make_dataset_json(fingerprint, channels, **extra)
    plans = ours(fingerprint, dataset_json)
    pm = PlansManager(plans)
    assert pm.available_configurations == ["2d", "3d_lowres", "3d_fullres", "3d_cascade_fullres"]
    assert pm.image_reader_writer_class.__name__ == "SimpleITKIO"
    assert pm.get_label_manager(dataset_json).num_segmentation_heads == 4
    for name in pm.available_configurations:
        cm = pm.get_configuration(name)
        assert len(cm.patch_size) == len(cm.spacing) and cm.batch_size >= 2
        assert cm.normalization_schemes == ["CTNormalization"]
        assert callable(cm.resampling_fn_data)
    cm = pm.get_configuration("3d_cascade_fullres")
    assert cm.previous_stage_name == "3d_lowres" and cm.data_identifier == "nnUNetPlans_3d_fullres"
    cm = pm.get_configuration("3d_fullres")
    net = get_network_from_plans(
        cm.network_arch_class_name, cm.network_arch_init_kwargs, cm.network_arch_init_kwargs_req_import, 1, 4, allow_init=False
    )
    assert net.compute_conv_feature_map_size(cm.patch_size) > 0


def test_plans_are_a_pure_function_of_their_inputs():
    fingerprint, channels, extra = DATASETS["aniso-10th-percentile"]
    dataset_json = make_dataset_json(fingerprint, channels, **extra)
    snapshot = copy.deepcopy((fingerprint, dataset_json))
    first = ours(fingerprint, dataset_json)
    assert (fingerprint, dataset_json) == snapshot, "the planner modified its inputs"
    assert ours(fingerprint, dataset_json) == first
    # numpy values in the fingerprint (as an in-memory fingerprint holds them) plan the same.
    as_numpy = copy.deepcopy(fingerprint)
    as_numpy["spacings"] = np.asarray(as_numpy["spacings"])
    as_numpy["shapes_after_crop"] = np.asarray(as_numpy["shapes_after_crop"])
    assert ours(as_numpy, dataset_json) == first


# --- the rules one by one -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_topology_matches_nnunet(seed):
    rng = np.random.default_rng(seed)
    dim = 2 if seed % 4 == 0 else 3
    spacing = [float(rng.choice([0.5, 0.7, 1.0, 1.5, 3.0, 5.0]) * rng.uniform(0.8, 1.2)) for _ in range(dim)]
    patch = [float(rng.integers(4, 400)) + (0.5 if seed % 3 == 0 else 0.0) for _ in range(dim)]
    got = pool_and_conv_props(spacing, patch, 4, 999999)
    num_pool, pools, convs, padded, divisible = topology_ref.get_pool_and_conv_props(spacing, np.array(patch), 4, 999999)
    assert list(got.num_pool_per_axis) == list(num_pool)
    assert [list(p) for p in got.pool_kernel_sizes] == [list(p) for p in pools]
    assert [list(c) for c in got.conv_kernel_sizes] == [list(c) for c in convs]
    assert list(got.patch_size) == [int(p) for p in padded]
    assert list(got.divisible_by) == [int(d) for d in divisible]


def test_resampled_shape_is_ops_compute_new_shape(rng):
    from fastseg.ops import compute_new_shape
    from fastseg.plan.planner import resampled_shape

    for _ in range(200):
        shape = rng.integers(1, 600, 3).tolist()
        spacing, target = rng.uniform(0.3, 6, 3).tolist(), rng.uniform(0.3, 6, 3).tolist()
        assert resampled_shape(shape, spacing, target) == list(compute_new_shape(shape, spacing, target))
    assert resampled_shape([3], [1.0], [2.0]) == [2]  # 1.5 rounds half to even, as nnU-Net's round()


def test_pad_to_multiple():
    assert pad_to_multiple((128, 115.5, 1), (32, 32, 1)) == (128, 128, 1)
    with pytest.raises(ValueError, match="equal lengths"):
        pad_to_multiple((1, 2), (1,))


@pytest.mark.parametrize("arch", [PLAIN_UNET, RESENC_UNET], ids=["plain", "resenc"])
@pytest.mark.parametrize(
    "spacing,patch",
    [
        pytest.param((2.5, 0.8, 0.8), (40, 200, 190), id="3d-aniso"),
        pytest.param((1.0, 1.0, 1.0), (128, 112, 160), id="3d-iso"),
        pytest.param((1.0, 1.0), (512, 448), id="2d"),
        pytest.param((3.0, 1.0), (33, 64), id="2d-aniso-small"),
    ],
)
def test_vram_estimate_matches_instantiated_network(arch, spacing, patch):
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

    topo = pool_and_conv_props(spacing, patch)
    n, dim = topo.num_stages, len(spacing)
    features = tuple(min(512 if dim == 2 else 320, 32 * 2**i) for i in range(n))
    plain = arch == PLAIN_UNET
    blocks = (2,) * n if plain else (1, 3, 4, 6, 6, 6, 6, 6, 6, 6)[:n]
    decoder = (2,) * (n - 1) if plain else (1,) * (n - 1)
    kwargs = {"n_conv_per_stage": blocks} if plain else {"n_blocks_per_stage": blocks}
    net = (PlainConvUNet if plain else ResidualEncoderUNet)(
        input_channels=2, n_stages=n, features_per_stage=features, conv_op=torch.nn.Conv3d if dim == 3 else torch.nn.Conv2d,
        kernel_sizes=topo.conv_kernel_sizes, strides=topo.pool_kernel_sizes, num_classes=5, n_conv_per_stage_decoder=decoder,
        conv_bias=True, norm_op=torch.nn.InstanceNorm3d if dim == 3 else torch.nn.InstanceNorm2d,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU, **kwargs,
    )  # fmt: skip
    expected = int(net.compute_conv_feature_map_size(topo.patch_size))
    assert feature_map_size(UNetSpec(arch, features, topo.pool_kernel_sizes, blocks, decoder), topo.patch_size, 5) == expected


def test_anisotropic_target_spacing_takes_10th_percentile():
    spacings = [[s, 0.7, 0.7] for s in (2.0, 4.0, 5.0, 5.0, 5.0, 6.0, 6.0, 8.0, 9.0, 10.0)]
    shapes = [[20, 256, 256]] * 10
    target = fullres_target_spacing(spacings, shapes)
    assert target[0] == pytest.approx(np.percentile([s[0] for s in spacings], 10))
    assert target[1:].tolist() == [0.7, 0.7]
    # Enough slices along z: the median stays.
    assert fullres_target_spacing(spacings, [[200, 256, 256]] * 10)[0] == pytest.approx(5.5)
    assert transpose_axes([0.7, 0.7, 5.0]) == ([2, 0, 1], [1, 2, 0])
    assert transpose_axes([0.7, 0.7, 5.0], suppress=True) == ([0, 1, 2], [0, 1, 2])


def test_option_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="Did you mean 'resenc-l'"):
        look_up_planner("resenc_l")
    with pytest.raises(ValueError, match="gpu_memory_gb must be a positive number, got -1"):
        PlannerOptions(gpu_memory_gb=-1)
    with pytest.raises(ValueError, match="overwrite_target_spacing"):
        PlannerOptions(overwrite_target_spacing=(1.0, 1.0))
    fingerprint, channels, _ = DATASETS["iso-ct"]
    with pytest.raises(ValueError, match="lacks 'numTraining'"):
        plan_experiment(fingerprint, {"channel_names": {"0": "CT"}, "labels": LABELS, "file_ending": ".nii.gz"})
    with pytest.raises(ValueError, match="fingerprint lacks"):
        plan_experiment({"spacings": []}, make_dataset_json(fingerprint, channels))
    broken = copy.deepcopy(fingerprint)
    broken["spacings"][0][1] = 0.0
    with pytest.raises(ValueError, match="spacings must be positive"):
        plan_experiment(broken, make_dataset_json(fingerprint, channels))
    with pytest.raises(ValueError, match="file_ending"):
        plan_experiment(fingerprint, {**make_dataset_json(fingerprint, channels), "file_ending": ".jpg"})


def test_reader_writer_follows_file_ending_and_override():
    fingerprint, channels, _ = DATASETS["2d-rgb"]
    dj = make_dataset_json(fingerprint, channels)
    assert plan_experiment(fingerprint, {**dj, "file_ending": ".png"})["image_reader_writer"] == "NaturalImage2DIO"
    assert plan_experiment(fingerprint, {**dj, "file_ending": ".tif"})["image_reader_writer"] == "NaturalImage2DIO"
    iso, ch, _ = DATASETS["iso-ct"]
    dj3 = make_dataset_json(iso, ch)
    assert plan_experiment(iso, {**dj3, "file_ending": ".tif"})["image_reader_writer"] == "Tiff3DIO"
    assert plan_experiment(iso, {**dj3, "file_ending": ".nii"})["image_reader_writer"] == "NibabelIO"
    assert plan_experiment(iso, {**dj3, "overwrite_image_reader_writer": "NibabelIOWithReorient"})["image_reader_writer"] == "NibabelIOWithReorient"
