"""Model selection against nnU-Net's `find_best_configuration`, run here (in its own process, since
nnU-Net reads its folders from the environment at import) on a copy of the same results folder.

Two "trained" models (2d and 3d_fullres of a planned synthetic dataset), two folds, whose validation
predictions and probabilities are the references blurred by noise of different strength, so the
models, their ensemble and the postprocessing decision all have real, different scores.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import fastseg_script, planned_dataset

from fastseg import io as fio
from fastseg.evaluate.selection import find_best_configuration
from fastseg.predict.postprocess import load_postprocessing

MODELS = [("nnUNetTrainer", "nnUNetPlans", "2d"), ("nnUNetTrainer", "nnUNetPlans", "3d_fullres")]
FOLDS = {0: ["case_0000", "case_0001"], 1: ["case_0002"]}


def _softmax(x):
    e = np.exp(x - x.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    base = tmp_path_factory.mktemp("find_best")
    raw, work = planned_dataset(base)
    dataset = json.loads((raw / "dataset.json").read_text())
    plans = json.loads((work / "plans.json").read_text())
    n_classes = len(dataset["labels"])
    root = base / "results" / plans["dataset_name"]
    rng = np.random.default_rng(7)
    for (trainer, plans_id, config), noise in zip(MODELS, (1.6, 1.9)):
        model = root / f"{trainer}__{plans_id}__{config}"
        model.mkdir(parents=True)
        (model / "dataset.json").write_text(json.dumps(dataset))
        (model / "plans.json").write_text(json.dumps(plans))
        for fold, cases in FOLDS.items():
            folder = model / f"fold_{fold}" / "validation"
            folder.mkdir(parents=True)
            for case in cases:
                ref, props = fio.read_seg(raw / "labelsTr" / f"{case}.nii.gz")
                onehot = np.stack([ref[0] == c for c in range(n_classes)]).astype(np.float32)
                probabilities = _softmax(3 * onehot + rng.normal(0, noise, onehot.shape))
                np.savez_compressed(folder / f"{case}.npz", probabilities=probabilities)
                (folder / f"{case}.pkl").write_bytes(pickle.dumps(props))
                fio.write_seg(probabilities.argmax(0).astype(np.uint8), folder / f"{case}.nii.gz", props)
    preprocessed = base / "preprocessed" / plans["dataset_name"]
    preprocessed.mkdir(parents=True)
    shutil.copy(work / "plans.json", preprocessed / "nnUNetPlans.json")
    shutil.copytree(raw / "labelsTr", preprocessed / "gt_segmentations")
    return base, raw, root


def _nnunet(base, root, dataset_name):
    env = {**os.environ, "nnUNet_raw": str(base / "raw"), "nnUNet_preprocessed": str(base / "preprocessed"),
           "nnUNet_results": str(root.parent)}
    models = [{"plans": p, "configuration": c, "trainer": t} for t, p, c in MODELS]
    code = ("from nnunetv2.evaluation.find_best_configuration import find_best_configuration as f; "
            f"f({dataset_name!r}, {models!r}, True, 1, True, (0, 1))")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((root / "inference_information.json").read_text())


def _labels(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_selection_equals_nnunet(results, tmp_path):
    base, raw, root = results
    ours_root = tmp_path / "ours" / root.name
    theirs_root = tmp_path / "theirs" / root.name
    shutil.copytree(root, ours_root)
    shutil.copytree(root, theirs_root)

    selection = find_best_configuration(ours_root, MODELS, raw / "labelsTr", folds=(0, 1), num_processes=1)
    theirs = _nnunet(base, theirs_root, root.name)
    ours = json.loads((ours_root / "inference_information.json").read_text())

    assert set(ours["all_results"]) == set(theirs["all_results"]) and len(ours["all_results"]) == 3
    for key, dice in theirs["all_results"].items():
        assert ours["all_results"][key] == pytest.approx(dice, rel=1e-9)
    assert len(set(theirs["all_results"].values())) == 3  # the three candidates really differ
    mine, nn = ours["best_model_or_ensemble"], theirs["best_model_or_ensemble"]
    assert mine["selected_model_or_models"] == nn["selected_model_or_models"]
    assert mine["result_on_crossval_pre_pp"] == pytest.approx(nn["result_on_crossval_pre_pp"], rel=1e-9)
    assert mine["result_on_crossval_post_pp"] == pytest.approx(nn["result_on_crossval_post_pp"], rel=1e-9)
    assert load_postprocessing(mine["postprocessing_file"]) == load_postprocessing(nn["postprocessing_file"])
    assert ours["folds"] == list(theirs["folds"]) and ours["dataset_name_or_id"] == theirs["dataset_name_or_id"]
    assert ours["considered_models"] == theirs["considered_models"]

    # the ensemble's cross-validation predictions are the same files
    name = "ensemble___nnUNetTrainer__nnUNetPlans__2d___nnUNetTrainer__nnUNetPlans__3d_fullres___0_1"
    for case in sum(FOLDS.values(), []):
        np.testing.assert_array_equal(_labels(ours_root / "ensembles" / name / f"{case}.nii.gz"),
                                      _labels(theirs_root / "ensembles" / name / f"{case}.nii.gz"))
    assert selection.best in ours["all_results"]
    assert "fastseg predict -m" in selection.instructions and str(mine["postprocessing_file"]) in selection.instructions


def test_command_prints_the_winner_and_its_commands(results, tmp_path):
    _, raw, root = results
    copy = tmp_path / root.name
    shutil.copytree(root, copy)
    run = subprocess.run([fastseg_script(), "find-best", str(copy), "-c", "2d", "3d_fullres", "-f", "0", "1",
                          "--ref", str(raw / "labelsTr"), "-j", "1"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    info = json.loads((copy / "inference_information.json").read_text())
    best = max(info["all_results"], key=info["all_results"].get)
    assert f"Best: {best}" in run.stdout
    assert (copy / "inference_instructions.txt").read_text() in run.stdout


def test_missing_fold_or_probabilities_are_named(results, tmp_path):
    _, raw, root = results
    copy = tmp_path / root.name
    shutil.copytree(root, copy)
    with pytest.raises(FileNotFoundError, match="fold 2"):
        find_best_configuration(copy, MODELS, raw / "labelsTr", folds=(0, 1, 2), num_processes=1)
    for p in (copy / "nnUNetTrainer__nnUNetPlans__2d" / "fold_1" / "validation").glob("*.npz"):
        p.unlink()
    with pytest.raises(FileNotFoundError, match="no probabilities"):
        find_best_configuration(copy, MODELS, raw / "labelsTr", folds=(0, 1), num_processes=1)
    run = subprocess.run([fastseg_script(), "find-best", str(copy), "-c", "3d_lowres", "--ref", str(raw / "labelsTr")],
                         capture_output=True, text=True)
    assert run.returncode != 0 and "3d_lowres" in run.stderr
