"""nnU-Net dataset ids (`-d 4`, `-d Dataset004_Name`): resolution against hand-made nnU-Net roots and
against nnU-Net's own `maybe_convert_to_dataset_name`, then the commands end to end with nnU-Net's
environment variables set (plan -> preprocess -> train -> predict, folders where nnU-Net keeps them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import fastseg_script

from fastseg.datasets.nnunet_paths import (
    PREPROCESSED,
    RAW,
    RESULTS,
    DatasetIdError,
    dataset_id,
    dataset_name,
    parse_dataset,
    resolve_dataset,
)


def _roots(tmp_path: Path, layout: dict[str, list[str]]) -> dict[str, str]:
    """Makes the folders `layout` names under each root; returns the environment naming the roots."""
    env = {}
    for variable in (RAW, PREPROCESSED, RESULTS):
        root = tmp_path / variable
        root.mkdir()
        for name in layout.get(variable, []):
            (root / name).mkdir()
        env[variable] = str(root)
    return env


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("4", 4, id="id"),
        pytest.param("004", 4, id="padded-id"),
        pytest.param(" 12 ", 12, id="spaces"),
        pytest.param(999, 999, id="int"),
        pytest.param("Dataset004_Hippocampus", "Dataset004_Hippocampus", id="name"),
        pytest.param("Dataset120_Two_Parts", "Dataset120_Two_Parts", id="name-with-underscores"),
    ],
)
def test_parse_dataset(text, expected):
    assert parse_dataset(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("Hippocampus", "nnU-Net dataset id", id="word"),
        pytest.param("Dataset4_Hippocampus", "three digits", id="short-id-in-name"),
        pytest.param("Dataset004", "DatasetXXX_Name", id="name-without-name"),
        pytest.param("1000", "0-999", id="too-large"),
        pytest.param("-1", "0-999", id="negative"),
        pytest.param("4.0", "nnU-Net dataset id", id="float"),
    ],
)
def test_parse_dataset_refuses(text, message):
    with pytest.raises(DatasetIdError, match=message):
        parse_dataset(text)


def test_resolution_in_hand_made_roots(tmp_path):
    env = _roots(tmp_path, {RAW: ["Dataset004_Hippocampus", "Dataset040_Other", "Dataset005_Spleen"],
                            PREPROCESSED: ["Dataset004_Hippocampus"], RESULTS: ["Dataset006_OnlyTrained"]})
    (Path(env[RAW]) / "Dataset007_AFile").write_text("not a folder")
    assert dataset_name("4", env) == "Dataset004_Hippocampus"  # Dataset040_ does not match id 4
    assert dataset_name(5, env) == "Dataset005_Spleen"  # only in the raw root
    assert dataset_name("6", env) == "Dataset006_OnlyTrained"  # only among the results
    assert dataset_name("Dataset123_NotThereYet", env) == "Dataset123_NotThereYet"  # a full name is taken as it is
    d = resolve_dataset("4", env)
    assert (d.name, d.id) == ("Dataset004_Hippocampus", 4)
    assert d.raw == Path(env[RAW]) / d.name and d.preprocessed == Path(env[PREPROCESSED]) / d.name
    assert d.results == Path(env[RESULTS]) / d.name
    assert d.model_folder("3d_fullres") == Path(env[RESULTS]) / d.name / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert d.model_folder("2d", "nnUNetTrainerNoMirroring", "nnUNetResEncUNetMPlans").name == \
        "nnUNetTrainerNoMirroring__nnUNetResEncUNetMPlans__2d"
    assert dataset_id("Dataset004_Hippocampus") == 4

    with pytest.raises(DatasetIdError, match=r"no dataset with id 7: .*Dataset007_\*"):
        dataset_name("7", env)
    with pytest.raises(DatasetIdError, match="no dataset with id 8"):
        dataset_name("8", env)


def test_two_folders_with_one_id_are_an_error(tmp_path):
    env = _roots(tmp_path, {RAW: ["Dataset009_Liver"], PREPROCESSED: ["Dataset009_LiverOld"]})
    with pytest.raises(DatasetIdError, match=r"id 9 names more than one dataset: Dataset009_Liver in \$nnUNet_raw.*"
                                             r"Dataset009_LiverOld in \$nnUNet_preprocessed"):
        dataset_name("9", env)


def test_unset_variables_are_named(tmp_path):
    with pytest.raises(DatasetIdError, match=r"none of \$nnUNet_raw, \$nnUNet_preprocessed, \$nnUNet_results is set"):
        dataset_name("4", {})
    env = _roots(tmp_path, {RAW: ["Dataset004_Hippocampus"]})
    del env[RESULTS]
    d = resolve_dataset("4", env)  # one root is enough to find the name
    assert d.results is None
    with pytest.raises(DatasetIdError, match=r"\$nnUNet_results is not set.*\$nnUNet_results/Dataset004_Hippocampus"):
        d.model_folder("3d_fullres")
    assert d.require(RAW) == Path(env[RAW]) / "Dataset004_Hippocampus"
    env[PREPROCESSED] = str(tmp_path / "does_not_exist")  # a root that is not there holds nothing
    assert dataset_name("4", env) == "Dataset004_Hippocampus"


_NNUNET_NAME = """
import sys
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
try:
    print(maybe_convert_to_dataset_name(sys.argv[1]))
except RuntimeError:
    print("error")
"""


def test_same_names_as_nnunets_own_resolution(tmp_path):
    env = _roots(tmp_path, {RAW: ["Dataset004_Hippocampus", "Dataset009_Liver"], PREPROCESSED: ["Dataset009_LiverOld"],
                            RESULTS: ["Dataset006_OnlyTrained", "Dataset004_Hippocampus"]})
    for query in ("4", "6", "9", "11", "Dataset004_Hippocampus"):
        run = subprocess.run([sys.executable, "-c", _NNUNET_NAME, query], env={**os.environ, **env}, capture_output=True,
                             text=True, encoding="utf-8", errors="replace", timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        theirs = run.stdout.strip().splitlines()[-1]
        try:
            ours = dataset_name(query, env)
        except DatasetIdError:
            ours = "error"
        assert ours == theirs, query


def test_commands_with_dataset_ids_use_nnunets_folders(tmp_path):
    from fastseg.datasets.synthetic import SyntheticConfig, write_synthetic_dataset

    env = {**os.environ, **_roots(tmp_path, {})}
    name = "Dataset007_Tiny"
    raw = Path(env[RAW]) / name
    write_synthetic_dataset(raw, SyntheticConfig(num_cases=3, ct=True, shape=(12, 28, 24)), num_processes=1)

    def fastseg(*args):
        return subprocess.run([fastseg_script(), *args], capture_output=True, text=True, encoding="utf-8", errors="replace",
                              env=env, timeout=300)

    run = fastseg("verify", "-d", "7", "-j", "1")
    assert run.returncode == 0, run.stdout + run.stderr
    run = fastseg("plan", "-d", "7", "-j", "1")
    assert run.returncode == 0, run.stderr
    work = Path(env[PREPROCESSED]) / name
    assert json.loads((work / "plans.json").read_text())["dataset_name"] == name
    assert json.loads((work / "source.json").read_text())["raw_dataset_dir"] == str(raw)
    assert "fastseg preprocess -d 7" in run.stdout
    run = fastseg("preprocess", "-d", name, "-c", "3d_fullres", "-j", "1")
    assert run.returncode == 0, run.stderr
    assert len(list((work / "nnUNetPlans_3d_fullres").glob("*_seg.npy"))) == 3
    run = fastseg("train", "-d", "7", "-c", "3d_fullres", "-f", "all", "--epochs", "1", "--iterations-per-epoch", "1",
                  "--val-iterations", "0", "--workers", "1", "--no-final-validation", "--no-compile")
    assert run.returncode == 0, run.stderr
    model = Path(env[RESULTS]) / name / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert (model / "fold_all" / "checkpoint_final.pth").is_file()
    assert not (work / "results").exists()
    run = fastseg("predict", "-d", "7", "-c", "3d_fullres", "-f", "all", "-i", str(raw / "imagesTr"), "-o",
                  str(tmp_path / "pred"), "--no-tta")
    assert run.returncode == 0, run.stderr
    assert f"model {model.name}" in run.stdout and len(list((tmp_path / "pred").glob("*.nii.gz"))) == 3

    # errors name what is wrong
    run = fastseg("plan", "-d", "8")
    assert run.returncode == 1 and "no dataset with id 8" in run.stderr
    run = fastseg("plan", str(raw), "-d", "7")
    assert run.returncode == 1 and "not both" in run.stderr
    run = fastseg("predict", "-d", "7", "-c", "2d", "-i", str(raw / "imagesTr"), "-o", str(tmp_path / "p2"))
    assert run.returncode == 1 and "no trained model nnUNetTrainer__nnUNetPlans__2d" in run.stderr
    run = fastseg("find-best", "-d", "7", "-c", "2d")
    assert run.returncode == 1 and str(Path(env[RESULTS]) / name) in run.stderr
    env.pop(RESULTS)
    run = fastseg("train", "-d", "7", "-c", "3d_fullres", "-f", "0")
    assert run.returncode == 1 and "$nnUNet_results is not set" in run.stderr
