"""fastseg.preprocess against nnunetv2's DefaultPreprocessor, plus the on-disk behaviour
(atomic cases, resuming, memory-bounded workers).

In memory: `preprocess_case` vs `DefaultPreprocessor.run_case_npy` on the same arrays and plans.
On disk: `fastseg plan` + `fastseg preprocess` (as functions) on small synthetic datasets vs
`DefaultPreprocessor.run_case` reading the same files with nnU-Net's reader. Tolerances: data
max |diff| <= 5e-6 of its range (measured at most 1.4e-6, z-score normalization, whose statistics
nnU-Net sums in float32), segmentation equal, properties equal, class locations identical.
"""

from __future__ import annotations

import copy
import json
import os

from pathlib import Path

import numpy as np
import pytest
from nnunetv2.preprocessing.preprocessors import default_preprocessor as pp
from nnunetv2.utilities.label_handling import label_handling
from nnunetv2.utilities.plans_handling import plans_handler

from fastseg.plan.planner import PlannerOptions, plan_experiment
from fastseg.preprocess.case import preprocess_case, preprocess_case_multi
from fastseg.preprocess.caseplan import CasePlan
from fastseg.preprocess.locations import classes_to_sample, sample_class_locations
from fastseg.preprocess.storage import (
    case_identifiers,
    decode_location_key,
    encode_location_key,
    is_complete,
    load_case,
    save_case,
)


LABELS = {"background": 0, "organ": 1, "lesion": 2, "neighbour": 3}
REGIONS = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}


# --- helpers -------------------------------------------------------------------------------------------


def blobs(rng, shape, n=6, labels=3) -> np.ndarray:
    grids = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    seg = np.zeros(shape, np.int16)
    for _ in range(n):
        centre, radius = rng.uniform(-0.6, 0.6, 3), rng.uniform(0.15, 0.4)
        seg[sum((g - c) ** 2 for g, c in zip(grids, centre)) < radius**2] = rng.integers(1, labels + 1)
    return seg


def make_case(rng, shape, channels=1, zero_background=False, labels=3):
    seg = blobs(rng, shape, labels=labels)
    data = np.stack([(seg * 80 + rng.normal(0, 25, shape)).astype(np.float32) - 500 * (c == 0) for c in range(channels)])
    if zero_background:
        body = (blobs(rng, shape, 3) > 0) | (seg > 0)
        data[:, ~body] = 0
        data[:, :, 1:4, 2:5] = 0  # a hole inside the body
    return data, seg[None]


def make_plans(spacings, shapes, channels, names, labels, relative_size=1.0, **extra):
    fingerprint = {
        "foreground_intensity_properties_per_channel": {
            str(c): {"max": 300.0, "mean": -200.0, "median": -210.0, "min": -600.0, "percentile_00_5": -580.0, "percentile_99_5": 250.0, "std": 120.0}
            for c in range(channels)
        },
        "median_relative_size_after_cropping": relative_size,
        "shapes_after_crop": [list(s) for s in shapes],
        "spacings": [list(s) for s in spacings],
    }
    dataset_json = {"channel_names": {str(i): n for i, n in enumerate(names)}, "labels": labels, "numTraining": len(spacings), "file_ending": ".nii.gz", **extra}
    return plan_experiment(fingerprint, dataset_json, PlannerOptions(dataset_name="Dataset001_Test")), dataset_json


def assert_like_nnunet(got, ref) -> None:
    """(data, seg, properties) of fastseg against nnU-Net's."""
    data, seg, props = got
    ref_data, ref_seg, ref_props = ref
    assert data.dtype == np.float32 and data.shape == ref_data.shape
    span = float(ref_data.max() - ref_data.min()) or 1.0
    assert float(np.abs(data - ref_data).max()) <= 5e-6 * span
    assert seg.dtype == ref_seg.dtype and seg.shape == ref_seg.shape
    np.testing.assert_array_equal(seg, ref_seg)
    for key in ("shape_before_cropping", "bbox_used_for_cropping", "shape_after_cropping_and_before_resampling", "spacing"):
        assert np.asarray(props[key]).tolist() == np.asarray(ref_props[key]).tolist(), key
    if "class_locations" in ref_props:
        assert list(props["class_locations"]) == list(ref_props["class_locations"])
        for k, v in ref_props["class_locations"].items():
            np.testing.assert_array_equal(np.asarray(props["class_locations"][k]).reshape(-1, 4), np.asarray(v).reshape(-1, 4))


def nnunet_case_npy(data, seg, props, plans, configuration, dataset_json):
    pm = plans_handler.PlansManager(copy.deepcopy(plans))
    return pp.DefaultPreprocessor(verbose=False).run_case_npy(
        data.copy(), None if seg is None else seg.astype(np.float32), copy.deepcopy(props), pm, pm.get_configuration(configuration), dataset_json
    )


# --- one case in memory --------------------------------------------------------------------------------

IN_MEMORY = [
    pytest.param(
        {"shape": (30, 64, 56), "spacing": (3.0, 0.7, 0.7), "channels": 1, "names": ["CT"], "labels": LABELS,
             "fp": [(2.5, 0.8, 0.8), (3.0, 0.9, 0.9), (2.5, 0.75, 0.75)], "fp_shape": (40, 96, 80)},
        id="ct-aniso-separate-z",
    ),
    pytest.param(
        {"shape": (40, 44, 50), "spacing": (1.1, 1.0, 0.9), "channels": 2, "names": ["T1", "T2"], "labels": LABELS, "zero": True, "rel": 0.6,
             "fp": [(1.0, 1.0, 1.0), (1.2, 1.0, 1.0), (0.9, 0.9, 0.9)], "fp_shape": (50, 60, 70)},
        id="mr-2ch-use-mask",
    ),
    pytest.param(
        {"shape": (36, 40, 40), "spacing": (1.3, 1.1, 1.0), "channels": 1, "names": ["zscore"], "labels": REGIONS, "zero": True,
             "fp": [(1.0, 1.0, 1.0)] * 3, "fp_shape": (50, 60, 70), "extra": {"regions_class_order": [1, 2, 3]}},
        id="regions",
    ),
    pytest.param(
        {"shape": (20, 48, 40), "spacing": (0.9, 0.9, 4.0), "channels": 1, "names": ["CT"], "labels": {**LABELS, "ignore": 4}, "n_labels": 4,
             "fp": [(0.9, 0.9, 4.0), (0.8, 0.8, 5.0), (1.0, 1.0, 3.0)], "fp_shape": (64, 64, 30)},
        id="ignore-label-transposed",
    ),
    pytest.param(
        {"shape": (24, 40, 40), "spacing": (1.0, 1.0, 1.0), "channels": 1, "names": ["rescale_to_0_1"], "labels": LABELS,
             "fp": [(1.0, 1.0, 1.0)] * 3, "fp_shape": (400, 400, 400)},
        id="lowres-rescale",
    ),
]


@pytest.mark.parametrize("case", IN_MEMORY)
def test_preprocess_case_matches_nnunet(rng, case):
    plans, dataset_json = make_plans(
        case["fp"], [case["fp_shape"]] * len(case["fp"]), case["channels"], case["names"], case["labels"],
        relative_size=case.get("rel", 1.0), **case.get("extra", {}),
    )  # fmt: skip
    data, seg = make_case(rng, case["shape"], case["channels"], case.get("zero", False), case.get("n_labels", 3))
    if "ignore" in case["labels"]:
        seg[:, :, :5] = case["labels"]["ignore"]
    props = {"spacing": list(case["spacing"])}
    configurations = [c for c in plans["configurations"] if c != "3d_cascade_fullres"]
    if case.get("fp_shape") == (400, 400, 400):
        assert "3d_lowres" in configurations
    plans_list = [CasePlan.from_plans(plans, c, dataset_json) for c in configurations]
    for plan, *multi in preprocess_case_multi(data, seg, props, plans_list):
        ref = nnunet_case_npy(data, seg, props, plans, plan.configuration, dataset_json)
        single = preprocess_case(data, seg, props, plan)
        assert_like_nnunet(single, ref)
        assert_like_nnunet(tuple(multi), ref)
    # A case without labels (inference): the crop mask becomes the segmentation.
    plan = plans_list[-1]
    got = preprocess_case(data, None, props, plan)
    assert_like_nnunet(got, nnunet_case_npy(data, None, props, plans, plan.configuration, dataset_json))
    assert "class_locations" not in got[2]


def test_3d_starts_from_the_2d_in_plane_result(rng, monkeypatch):
    import fastseg.preprocess.case as case_module

    plans, dataset_json = make_plans([(2.5, 0.8, 0.8), (3.0, 0.9, 0.9), (2.5, 0.75, 0.75)], [(40, 96, 80)] * 3, 1, ["CT"], LABELS)
    data, seg = make_case(rng, (30, 64, 56))
    props = {"spacing": [3.5, 0.7, 0.7]}
    reused = []
    real = case_module._reuse_in_plane
    monkeypatch.setattr(case_module, "_reuse_in_plane", lambda *a: reused.append(real(*a)) or reused[-1])
    plan_2d, plan_3d = (CasePlan.from_plans(plans, c, dataset_json) for c in ("2d", "3d_fullres"))
    results = list(preprocess_case_multi(data, seg, props, [plan_2d, plan_3d]))
    assert reused[-1] is not None, "3d_fullres did not start from the 2d result"
    direct = preprocess_case(data, seg, props, plan_3d)
    np.testing.assert_array_equal(results[1][1], direct[0])
    np.testing.assert_array_equal(results[1][2], direct[1])
    assert_like_nnunet(tuple(results[1][1:]), nnunet_case_npy(data, seg, props, plans, "3d_fullres", dataset_json))


def test_2d_and_3d_of_the_same_grid_sample_locations_once(rng, monkeypatch):
    import fastseg.preprocess.case as case_module

    # Isotropic 1 mm cases: 2d and 3d_fullres need no resampling and give the same arrays.
    plans, dataset_json = make_plans([(1.0, 1.0, 1.0)] * 3, [(40, 48, 44)] * 3, 1, ["MR"], LABELS)
    data, seg = make_case(rng, (40, 48, 44))
    props = {"spacing": [1.0, 1.0, 1.0]}
    calls = []
    real = case_module.sample_class_locations
    monkeypatch.setattr(case_module, "sample_class_locations", lambda *a: calls.append(1) or real(*a))
    plan_2d, plan_3d = (CasePlan.from_plans(plans, c, dataset_json) for c in ("2d", "3d_fullres"))
    results = list(preprocess_case_multi(data, seg, props, [plan_2d, plan_3d]))
    assert len(calls) == 1
    for plan, (_, d, s, p) in zip((plan_2d, plan_3d), results):
        direct = preprocess_case(data, seg, props, plan)
        np.testing.assert_array_equal(d, direct[0])
        np.testing.assert_array_equal(s, direct[1])
        assert list(p["class_locations"]) == list(direct[2]["class_locations"])
        for k, v in direct[2]["class_locations"].items():
            np.testing.assert_array_equal(np.asarray(p["class_locations"][k]), np.asarray(v))
        assert_like_nnunet((d, s, p), nnunet_case_npy(data, seg, props, plans, plan.configuration, dataset_json))


@pytest.mark.parametrize(
    "spacing,linked",
    [pytest.param((1.0, 1.0, 1.0), True, id="isotropic-2d-equals-3d"), pytest.param((3.0, 1.0, 1.0), False, id="anisotropic")],
)
def test_worker_links_arrays_that_two_configurations_share(tmp_path, rng, spacing, linked):
    """A 2d and a 3d_fullres configuration whose arrays are the same share one copy on disk (hard
    links); rewriting one configuration's case replaces its files and leaves the other's intact."""
    from fastseg.io.raw_writer import write_case
    from fastseg.preprocess.storage import save_case
    from fastseg.preprocess.worker import preprocess_files

    plans, dataset_json = make_plans([(1.0, 1.0, 1.0)] * 3, [(40, 48, 44)] * 3, 1, ["MR"], LABELS)
    data, seg = make_case(rng, (40, 48, 44))
    write_case(tmp_path / "raw", "case_0000", [data[0]], seg[0], {"spacing": list(spacing)}, ".nii.gz")
    images, label = [str(tmp_path / "raw/imagesTr/case_0000_0000.nii.gz")], str(tmp_path / "raw/labelsTr/case_0000.nii.gz")
    plan_2d, plan_3d = (CasePlan.from_plans(plans, c, dataset_json) for c in ("2d", "3d_fullres"))
    folders = [str(tmp_path / "2d"), str(tmp_path / "3d")]
    preprocess_files("case_0000", images, label, [plan_2d, plan_3d], folders)
    from fastseg import io as fio

    raw_data, raw_props = fio.read_images([Path(images[0])])
    raw_seg = fio.read_seg(Path(label))[0]
    for plan, folder in zip((plan_2d, plan_3d), folders):
        expected = preprocess_case(raw_data, raw_seg, raw_props, plan)
        got = load_case(folder, "case_0000")
        np.testing.assert_array_equal(np.asarray(got[0]), expected[0])
        np.testing.assert_array_equal(np.asarray(got[1]), expected[1])
    for name in ("case_0000.npy", "case_0000_seg.npy"):
        same_inode = os.stat(tmp_path / "2d" / name).st_ino == os.stat(tmp_path / "3d" / name).st_ino
        assert same_inode == linked, name
    before = np.load(tmp_path / "3d" / "case_0000.npy")
    got = load_case(folders[0], "case_0000")
    save_case(folders[0], "case_0000", np.asarray(got[0]) + 1, np.asarray(got[1]), got[2])
    np.testing.assert_array_equal(np.load(tmp_path / "3d" / "case_0000.npy"), before)
    np.testing.assert_array_equal(np.load(tmp_path / "2d" / "case_0000.npy"), np.asarray(got[0]) + 1)


def test_preprocess_case_errors(rng):
    plans, dataset_json = make_plans([(1, 1, 1)] * 2, [(20, 20, 20)] * 2, 1, ["CT"], LABELS)
    plan = CasePlan.from_plans(plans, "3d_fullres", dataset_json)
    data, seg = make_case(rng, (10, 12, 14))
    with pytest.raises(ValueError, match="normalize 1 channels, the image has 2"):
        preprocess_case(np.concatenate([data, data]), seg, {"spacing": [1, 1, 1]}, plan)
    with pytest.raises(ValueError, match="does not match image shape"):
        preprocess_case(data, seg[:, :5], {"spacing": [1, 1, 1]}, plan)
    with pytest.raises(ValueError, match="'spacing'"):
        preprocess_case(data, seg, {}, plan)
    with pytest.raises(ValueError, match="configuration '3d_midres' is not in the plans"):
        CasePlan.from_plans(plans, "3d_midres", dataset_json)
    bad = copy.deepcopy(plans)
    bad["configurations"]["3d_fullres"]["resampling_fn_data"] = "resample_torch_fornnunet"
    with pytest.raises(ValueError, match="resample_torch_fornnunet"):
        CasePlan.from_plans(bad, "3d_fullres", dataset_json)


# --- class locations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels,extra",
    [
        pytest.param(LABELS, {}, id="labels"),
        pytest.param(REGIONS, {"regions_class_order": [1, 2, 3]}, id="regions"),
        pytest.param({**LABELS, "ignore": 4}, {}, id="ignore"),
        pytest.param({"background": 0, **{f"l{i}": i for i in range(1, 15)}}, {}, id="14-labels-sorted-index"),
        pytest.param({"background": 0, "a": 1, "absent": 2}, {}, id="absent-class"),
    ],
)
def test_class_locations_match_nnunet(rng, labels, extra):
    lm = label_handling.LabelManager(labels, extra.get("regions_class_order"))
    ref_classes = lm.foreground_regions if lm.has_regions else lm.foreground_labels
    if lm.has_ignore_label:
        ref_classes.append([-1] + lm.all_labels)
    classes = classes_to_sample(labels)
    assert [tuple(c) if isinstance(c, (list, tuple)) else int(c) for c in ref_classes] == classes
    top = 1 if "absent" in labels else max(max(v) if isinstance(v, list) else v for v in labels.values())
    seg = rng.integers(-1, top + 1, (1, 30, 41, 25)).astype(np.int16)
    seg[:, :4] = 1  # one large class: more than 10000 voxels -> the 1 % rule
    seg[:, 4:, :30] = np.where(seg[:, 4:, :30] == 1, 0, seg[:, 4:, :30])
    ref = pp.DefaultPreprocessor._sample_foreground_locations(seg.astype(np.float32), ref_classes)
    got = sample_class_locations(seg, classes)
    assert list(got) == [tuple(k) if isinstance(k, list) else k for k in ref]
    for k, v in ref.items():
        np.testing.assert_array_equal(np.asarray(got[k]).reshape(-1, 4), np.asarray(v).reshape(-1, 4))


def test_location_keys_round_trip():
    for key in (3, (1, 2, 3), (2,), (-1, 0, 1)):
        assert decode_location_key(encode_location_key(key)) == key
    with pytest.raises(ValueError, match="highest label"):
        classes_to_sample({"background": 0, "a": 1, "ignore": 7})


# --- on disk: whole datasets -----------------------------------------------------------------------------


def write_dataset(tmp_path, **config):
    from fastseg.datasets.synthetic import SyntheticConfig, write_synthetic_dataset

    raw = tmp_path / "raw" / "Dataset001_Synthetic"
    write_synthetic_dataset(raw, SyntheticConfig(**config), num_processes=1)
    return raw


def compare_with_nnunet(work, raw, configurations) -> None:
    from fastseg import io as fio

    plans = json.loads((work / "plans.json").read_text())
    dataset_json = json.loads((work / "dataset.json").read_text())
    pm = plans_handler.PlansManager(copy.deepcopy(plans))
    dataset = fio.load_raw_dataset(raw)
    for name in configurations:
        cm = pm.get_configuration(name)
        folder = work / cm.data_identifier
        assert case_identifiers(folder) == sorted(dataset.cases)
        for key, files in dataset.cases.items():
            ref = pp.DefaultPreprocessor(verbose=False).run_case([str(p) for p in files.images], str(files.label), pm, cm, dataset_json)
            data, seg, props = load_case(folder, key)
            assert isinstance(data, np.memmap) and isinstance(seg, np.memmap)
            assert_like_nnunet((np.asarray(data), np.asarray(seg), props), ref)
            if "sitk_stuff" in ref[2]:
                assert json.loads(json.dumps(ref[2]["sitk_stuff"])) == props["sitk_stuff"]


@pytest.mark.parametrize(
    "config,workers",
    [
        pytest.param({"num_cases": 4, "ct": True, "shape": (24, 56, 48)}, 2, id="ct-2-workers"),
        pytest.param({"num_cases": 3, "num_channels": 2, "regions": True, "shape": (20, 40, 40)}, 1, id="mr-regions"),
        pytest.param({"num_cases": 3, "two_d": True, "ignore_label": True, "shape": (60, 64)}, 1, id="2d-ignore"),
    ],
)
def test_plan_and_preprocess_dataset_match_nnunet(tmp_path, config, workers):
    from fastseg.workflow import plan_dataset
    from fastseg.preprocess.runner import PreprocessOptions, preprocess_dataset

    raw = write_dataset(tmp_path, **config)
    work = tmp_path / "work"
    result = plan_dataset(raw, work, num_processes=workers, progress=False)
    assert {p.name for p in work.iterdir()} >= {"dataset.json", "dataset_fingerprint.json", "plans.json", "source.json"}
    assert (work / "dataset.json").read_bytes() == (raw / "dataset.json").read_bytes()
    assert json.loads((work / "plans.json").read_text()) == json.loads(json.dumps(result.plans))
    reports = preprocess_dataset(work, options=PreprocessOptions(num_processes=workers, progress=False))
    names = [r.configuration for r in reports]
    assert names == [c for c in ("2d", "3d_fullres", "3d_lowres") if c in result.plans["configurations"]]
    compare_with_nnunet(work, raw, names)


def test_interrupted_run_leaves_no_partial_case_and_rerun_resumes(tmp_path, monkeypatch):
    from fastseg.workflow import plan_dataset
    from fastseg.preprocess.runner import PreprocessOptions, preprocess_dataset

    raw = write_dataset(tmp_path, num_cases=3, ct=True, shape=(16, 40, 40))
    work = tmp_path / "work"
    plan_dataset(raw, work, num_processes=1, progress=False)
    options = PreprocessOptions(configurations=("3d_fullres",), num_processes=1, progress=False)

    real_save, calls = np.save, []

    def interrupted_save(file, array, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the second case's image: stop mid-case, like Ctrl-C
            file.write(b"partial")
            raise KeyboardInterrupt
        return real_save(file, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        preprocess_dataset(work, options=options)
    monkeypatch.setattr(np, "save", real_save)
    folder = work / "nnUNetPlans_3d_fullres"
    assert case_identifiers(folder) == ["case_0000"]
    assert not is_complete(folder, "case_0001")
    assert not [p for p in os.listdir(folder) if p.startswith(".")], "temporary files left behind"
    assert sorted(os.listdir(folder)) == ["case_0000.json", "case_0000.npy", "case_0000_seg.npy"]

    report = preprocess_dataset(work, options=options)[0]
    assert report.skipped == ["case_0000"] and report.processed == ["case_0001", "case_0002"]
    report = preprocess_dataset(work, options=options)[0]
    assert report.processed == [] and len(report.skipped) == 3
    compare_with_nnunet(work, raw, ["3d_fullres"])

    # Different plans (here: another normalization) make the finished cases stale.
    plans = json.loads((work / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["normalization_schemes"] = ["ZScoreNormalization"]
    (work / "plans.json").write_text(json.dumps(plans))
    assert len(preprocess_dataset(work, options=options)[0].processed) == 3


def test_save_case_validates_and_round_trips(tmp_path, rng):
    data = rng.normal(size=(1, 3, 4, 5)).astype(np.float32)
    seg = rng.integers(-1, 3, (1, 3, 4, 5)).astype(np.int8)
    props = {"spacing": [1.0, 2.0, 3.0], "class_locations": {1: np.array([[0, 1, 2, 3]]), (1, 2): [], (-1, 0): np.zeros((0, 4), np.int64)}}
    save_case(tmp_path, "c", data, seg, props, "h1")
    d, s, p = load_case(tmp_path, "c")
    np.testing.assert_array_equal(d, data)
    np.testing.assert_array_equal(s, seg)
    assert list(p["class_locations"]) == [1, (1, 2), (-1, 0)]
    assert p["class_locations"][1].tolist() == [[0, 1, 2, 3]] and p["class_locations"][(1, 2)].shape == (0, 4)
    assert is_complete(tmp_path, "c", "h1") and not is_complete(tmp_path, "c", "h2")
    with pytest.raises(ValueError, match="float32"):
        save_case(tmp_path, "d", data.astype(np.float64), seg, props)
    with pytest.raises(ValueError, match="int8 or int16"):
        save_case(tmp_path, "d", data, seg.astype(np.int32), props)


def test_properties_json_is_json_dumps(rng):
    from fastseg.io.atomic import json_default as _to_json
    from fastseg.preprocess.storage import _properties_json

    props = {
        "spacing": [1.5, 0.75, 0.75],
        "sitk_stuff": {"spacing": (0.75, 0.75, 1.5), "origin": (0.0, -1e-7, 3.0), "direction": tuple(np.eye(3).ravel())},
        "bbox_used_for_cropping": [[0, 4], [1, 5], [2, 6]],
        "class_locations": {
            "1": rng.integers(0, 600, 4000),
            "1,2": np.array([0, 70000, 3, 2**40]),  # beyond the digit table
            "3": np.zeros(0, np.int64),  # an absent class
            "-1,1,2": np.array([0, 0, 0, 0]),
        },
        "empty": {},
    }
    assert _properties_json(props) == json.dumps(props, default=_to_json)
    props["class_locations"]["0"] = np.array([-1, 2])  # negative numbers too
    assert _properties_json(props) == json.dumps(props, default=_to_json)
    assert _properties_json({1: "int keys"}) == json.dumps({1: "int keys"})
