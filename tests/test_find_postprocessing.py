"""Postprocessing selection against nnU-Net's `determine_postprocessing`, run here on the same folders.

The cases are built so that the decisions differ per label: a spurious blob far from the organ
(removing it helps), a lesion in two real parts of similar size (removing the smaller hurts), and,
in the "touching" layout, labels that touch one another so that the largest foreground component
is the whole anatomy (step 1 helps).
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import fastseg_script
from nnunetv2.postprocessing.remove_connected_components import (
    determine_postprocessing,
    remove_all_but_largest_component_from_segmentation,
)

from fastseg import io as fio
from fastseg.evaluate.postprocessing import find_postprocessing
from fastseg.predict.postprocess import load_postprocessing

LABELS = {"background": 0, "organ": 1, "lesion": 2, "vessel": 3}
REGIONS = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "vessel": 3}
SHAPE = (16, 40, 40)


def _box(seg, value, z, y, x):
    seg[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = value


def _case(rng, touching: bool):
    ref = np.zeros(SHAPE, dtype=np.uint8)
    _box(ref, 1, (2, 12), (4, 20), (4, 20))  # organ
    # the lesion has two real parts of similar size, apart from each other (touching the organ when touching)
    second = ((14, 20), (20, 26)) if touching else ((28, 34), (6, 12))
    _box(ref, 2, (4, 9), (6, 12), (20, 26) if touching else (24, 30))
    _box(ref, 2, (4, 9), *second)
    _box(ref, 3, (3, 11), (20, 22) if touching else (24, 26), (8, 18))  # vessel
    pred = ref.copy()
    # the lesion's second part is predicted a bit smaller, so removing it costs Dice
    (zs, ys), xs = (slice(4, 9), slice(*second[0])), slice(*second[1])
    pred[zs, ys, xs][rng.random((5, 6, 6)) < 0.2] = 0
    # spurious blobs, far away: organ and vessel, a few voxels each
    z, y, x = rng.integers(13, 15), rng.integers(30, 37), rng.integers(30, 37)
    pred[z:z + 2, y:y + 2, x:x + 2] = 1
    pred[1, 36:38, 2:4] = 3
    return ref, pred


def _write(tmp_path, labels, touching, cases=4, seed=0):
    rng = np.random.default_rng(seed)
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    props = {"spacing": [2.0, 0.8, 0.8]}
    for i in range(cases):
        ref, pred = _case(rng, touching)
        fio.write_seg(ref, ref_dir / f"case_{i:03d}.nii.gz", props)
        fio.write_seg(pred, pred_dir / f"case_{i:03d}.nii.gz", props)
    dataset = {"labels": labels, "file_ending": ".nii.gz", "channel_names": {"0": "CT"}, "numTraining": cases}
    if any(isinstance(v, list) for v in labels.values()):
        dataset["regions_class_order"] = [1, 2, 3]
    (pred_dir / "dataset.json").write_text(json.dumps(dataset))
    return pred_dir, ref_dir, dataset


PLANS = {"dataset_name": "Dataset001_Test", "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
         "configurations": {}, "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2]}


def _nnunet(pred_dir, ref_dir, dataset):
    _, kwargs = determine_postprocessing(str(pred_dir), str(ref_dir), PLANS, dataset, num_processes=1)
    return kwargs


def _read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.parametrize(
    "labels,touching,expected",
    [
        pytest.param(LABELS, False, [{"labels_or_regions": 1}, {"labels_or_regions": 3}], id="labels-apart"),
        pytest.param(LABELS, True, [{"labels_or_regions": [1, 2, 3]}], id="labels-touching"),
        pytest.param(REGIONS, True, None, id="regions-touching"),
    ],
)
def test_decisions_and_files_equal_nnunet(tmp_path, labels, touching, expected):
    pred_dir, ref_dir, dataset = _write(tmp_path, labels, touching)
    nn_dir = tmp_path / "pred_nnunet"
    shutil.copytree(pred_dir, nn_dir)

    theirs = _nnunet(nn_dir, ref_dir, dataset)
    ours = find_postprocessing(pred_dir, ref_dir, dataset, num_processes=1)

    norm = [{"labels_or_regions": list(k["labels_or_regions"]) if isinstance(k["labels_or_regions"], (list, tuple))
             else k["labels_or_regions"]} for k in theirs]
    assert [{"labels_or_regions": list(k["labels_or_regions"]) if isinstance(k["labels_or_regions"], (list, tuple))
             else k["labels_or_regions"]} for k in ours.nnunet_kwargs] == norm
    if expected is not None:
        assert norm == expected  # the constructed cases take the decisions they were built for
    for p in sorted(ref_dir.iterdir()):
        np.testing.assert_array_equal(_read(pred_dir / "postprocessed" / p.name), _read(nn_dir / "postprocessed" / p.name))

    # nnU-Net reads our pickle (its own function comes back) and we read its pickle and json
    with open(pred_dir / "postprocessing.pkl", "rb") as f:
        fns, kwargs = pickle.load(f)
    assert fns == [remove_all_but_largest_component_from_segmentation] * len(theirs) and kwargs == ours.nnunet_kwargs
    assert load_postprocessing(nn_dir / "postprocessing.pkl") == load_postprocessing(pred_dir / "postprocessing.pkl")
    assert load_postprocessing(pred_dir / "postprocessing.json") == load_postprocessing(pred_dir / "postprocessing.pkl")

    # the reports agree on the scores before and after
    mine, nn = json.loads((pred_dir / "postprocessing.json").read_text()), json.loads((nn_dir / "postprocessing.json").read_text())
    for part in ("input_folder", "postprocessed"):
        assert mine[part]["foreground_mean"]["Dice"] == pytest.approx(nn[part]["foreground_mean"]["Dice"], rel=1e-12)
        for key, scores in nn[part]["mean"].items():
            assert mine[part]["mean"][key]["Dice"] == pytest.approx(scores["Dice"], rel=1e-12, nan_ok=True)


def test_a_spurious_blob_is_removed_and_a_real_second_part_kept(tmp_path):
    # hand-decided on the "apart" layout: organ and vessel lose their far-away blobs; the lesion keeps both parts
    pred_dir, ref_dir, dataset = _write(tmp_path, LABELS, touching=False, cases=2)
    choice = find_postprocessing(pred_dir, ref_dir, dataset, num_processes=1)
    assert [s["labels_or_regions"] for s in choice.steps] == [1, 3]
    for p in sorted(ref_dir.iterdir()):
        out, before = _read(pred_dir / "postprocessed" / p.name), _read(pred_dir / p.name)
        assert (out == 2).sum() == (before == 2).sum()
        assert (out[12:, 28:, 28:] == 1).sum() == 0 and (out[1, 36:38, 2:4] == 3).sum() == 0
    assert choice.after["foreground_mean"]["Dice"] > choice.before["foreground_mean"]["Dice"]


def test_command_on_a_results_folder(tmp_path):
    # a model folder with two folds' validation predictions: merged, scored, decided, and used by predict's reader
    pred_dir, ref_dir, dataset = _write(tmp_path, LABELS, touching=False)
    model = tmp_path / "Trainer__Plans__3d_fullres"
    for fold, names in ((0, ["case_000", "case_001"]), (1, ["case_002", "case_003"])):
        (model / f"fold_{fold}" / "validation").mkdir(parents=True)
        for n in names:
            shutil.copy(pred_dir / f"{n}.nii.gz", model / f"fold_{fold}" / "validation")
    (model / "dataset.json").write_text(json.dumps(dataset))
    (model / "plans.json").write_text(json.dumps(PLANS))
    run = subprocess.run([fastseg_script(), "find-postprocessing", str(model), "--ref", str(ref_dir), "-j", "1"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    merged = model / "crossval_results_folds_0_1"
    assert sorted(p.name for p in merged.glob("*.nii.gz")) == sorted(p.name for p in ref_dir.iterdir())
    assert [s["labels_or_regions"] for s in load_postprocessing(merged / "postprocessing.pkl")] == [1, 3]
    assert "fastseg predict" in run.stdout and "--postprocessing" in run.stdout


@pytest.mark.parametrize("problem", ["missing-reference", "no-predictions", "shape"])
def test_bad_input_names_the_problem_and_writes_nothing(tmp_path, problem):
    pred_dir, ref_dir, dataset = _write(tmp_path, LABELS, touching=False, cases=2)
    if problem == "missing-reference":
        (ref_dir / "case_001.nii.gz").unlink()
        message = "case_001.nii.gz"
    elif problem == "no-predictions":
        for p in pred_dir.glob("*.nii.gz"):
            p.unlink()
        message = "no .nii.gz predictions"
    else:
        fio.write_seg(np.zeros((4, 4, 4), np.uint8), pred_dir / "case_001.nii.gz", {"spacing": [2.0, 0.8, 0.8]})
        message = "shape"
    with pytest.raises(ValueError, match=message):
        find_postprocessing(pred_dir, ref_dir, dataset, num_processes=1)
    assert not (pred_dir / "postprocessing.pkl").exists() and not (pred_dir / "postprocessed").exists()
