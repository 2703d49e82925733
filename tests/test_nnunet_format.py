"""`fastseg preprocess --format nnunet` against nnunetv2 itself.

Reference: `nnUNetv2_preprocess` run (in a subprocess, nnU-Net's environment variables pointing into
tmp_path) on the same raw dataset with the same plans. Compared: every array (data within 1e-6 of its
range, segmentation exactly, dtypes), the blosc2 storage settings (chunks, blocks, codec, level,
filter), every .pkl property (class locations exactly: nnU-Net draws them with a fixed seed, numpy's
RandomState(1234), so they are deterministic and fastseg draws the same voxels), the plans file,
dataset.json and gt_segmentations. Then nnU-Net's own data loader reads every case of the folder, and
nnU-Net's trainer trains on it and validates against its gt_segmentations.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import blosc2
import numpy as np
import pytest
from helpers import fastseg_script, planned_dataset

from fastseg.preprocess.nnunet_format import (
    NnunetFormatError,
    STATE_FILE,
    blosc2_layout,
    case_paths,
    preprocess_dataset_nnunet,
)
from fastseg.preprocess.runner import PreprocessOptions

NAME = "Dataset001_Synthetic"
CONFIGS = ("2d", "3d_fullres")


def _nnunet_env(root: Path) -> dict:
    return {**os.environ, "nnUNet_raw": str(root / "nnUNet_raw"), "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
            "nnUNet_results": str(root / "nnUNet_results"), "OMP_NUM_THREADS": "1", "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1"}


def _nnunet_preprocess(raw: Path, work: Path, root: Path, configurations) -> Path:
    """nnUNetv2_preprocess on the work folder's plans (copied as nnU-Net's plan step leaves them)."""
    name = json.loads((work / "plans.json").read_text())["dataset_name"]
    (root / "nnUNet_raw").mkdir(parents=True)
    (root / "nnUNet_raw" / name).symlink_to(raw.resolve(), target_is_directory=True)
    pre = root / "nnUNet_preprocessed" / name
    pre.mkdir(parents=True)
    shutil.copy(work / "plans.json", pre / "nnUNetPlans.json")
    for f in ("dataset.json", "dataset_fingerprint.json"):
        shutil.copy(work / f, pre / f)
    code = ("import sys; from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import preprocess_entry; "
            f"sys.argv = ['nnUNetv2_preprocess', '-d', '{int(name[7:10])}', '-c', *{list(configurations)!r}, '-np', '1']; "
            "preprocess_entry()")
    run = subprocess.run([sys.executable, "-c", code], env=_nnunet_env(root), capture_output=True, text=True,
                         encoding="utf-8", errors="replace", timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return pre


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(raw, work, nnU-Net's folder, fastseg's folder) of 3 small CT cases, 2d and 3d_fullres."""
    base = tmp_path_factory.mktemp("nnunet_format")
    raw, work = planned_dataset(base)
    reference = _nnunet_preprocess(raw, work, base / "reference", CONFIGS)
    ours = base / "ours" / "nnUNet_preprocessed" / NAME
    run = subprocess.run([fastseg_script(), "preprocess", str(work), "--format", "nnunet", "-o", str(ours), "-j", "1",
                          "-c", *CONFIGS], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "nnUNetv2_train" in run.stdout
    return raw, work, reference, ours


def _identifiers(folder: Path) -> list[str]:
    return sorted(p.name[:-5] for p in folder.glob("*.b2nd") if not p.name.endswith("_seg.b2nd"))


def _storage(path: Path) -> tuple:
    array = blosc2.open(str(path), mode="r")
    cparams = array.schunk.cparams
    return array.dtype, array.shape, array.chunks, array.blocks, cparams.codec, cparams.clevel, cparams.filters[0]


def _data_folder(work: Path, configuration: str) -> str:
    return json.loads((work / "plans.json").read_text())["configurations"][configuration]["data_identifier"]


def _assert_same_properties(theirs: dict, ours: dict) -> None:
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        if key == "class_locations":
            assert {(k, type(k)) for k in ours[key]} == {(k, type(k)) for k in value}
            for label, locations in value.items():
                assert np.array_equal(np.asarray(ours[key][label]), np.asarray(locations)), label
                if len(locations):
                    assert ours[key][label].dtype == locations.dtype and ours[key][label].shape == locations.shape
        else:
            assert ours[key] == value, key
            assert type(ours[key]) is type(value), key


@pytest.mark.parametrize("configuration", CONFIGS)
def test_arrays_storage_and_properties_equal_nnunet_preprocess(folders, configuration):
    _, work, reference, ours = folders
    sub = _data_folder(work, configuration)
    cases = _identifiers(reference / sub)
    assert len(cases) == 3 and _identifiers(ours / sub) == cases
    assert sorted(p.name for p in (ours / sub).iterdir()) == sorted(p.name for p in (reference / sub).iterdir())
    for case in cases:
        (ref_data, ref_seg, ref_pkl), (data, seg, pkl) = case_paths(reference / sub, case), case_paths(ours / sub, case)
        assert _storage(data) == _storage(ref_data)
        assert _storage(seg) == _storage(ref_seg)
        a, b = blosc2.open(str(ref_data), mode="r")[:], blosc2.open(str(data), mode="r")[:]
        assert a.dtype == b.dtype == np.float32
        assert np.abs(a.astype(np.float64) - b).max() <= 1e-6 * (a.max() - a.min())
        s, t = blosc2.open(str(ref_seg), mode="r")[:], blosc2.open(str(seg), mode="r")[:]
        assert s.dtype == t.dtype == np.int16 and np.array_equal(s, t)
        with open(ref_pkl, "rb") as f, open(pkl, "rb") as g:
            _assert_same_properties(pickle.load(f), pickle.load(g))


def test_dataset_folder_files_are_nnunets(folders):
    _, work, reference, ours = folders
    assert json.loads((ours / "nnUNetPlans.json").read_text()) == json.loads((reference / "nnUNetPlans.json").read_text())
    for name in ("dataset.json", "dataset_fingerprint.json"):
        assert (ours / name).read_bytes() == (reference / name).read_bytes()
    gt = sorted(p.name for p in (reference / "gt_segmentations").iterdir())
    assert len(gt) == 3 and sorted(p.name for p in (ours / "gt_segmentations").iterdir()) == gt
    for name in gt:
        assert (ours / "gt_segmentations" / name).read_bytes() == (reference / "gt_segmentations" / name).read_bytes()
    assert not list(ours.rglob(".tmp-*")) and not (ours / ".fastseg.lock").exists()


@pytest.mark.parametrize("configuration", CONFIGS)
def test_nnunet_data_loader_reads_every_case(folders, configuration):
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class, nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    _, work, reference, ours = folders
    sub = _data_folder(work, configuration)
    assert infer_dataset_class(str(ours / sub)) is nnUNetDatasetBlosc2
    plans = PlansManager(str(ours / "nnUNetPlans.json"))
    labels = plans.get_label_manager(json.loads((ours / "dataset.json").read_text()))
    patch = plans.get_configuration(configuration).patch_size
    dataset = nnUNetDatasetBlosc2(str(ours / sub))
    assert dataset.identifiers == _identifiers(reference / sub)
    for k, case in enumerate(dataset.identifiers):
        batches = []
        for folder in (ours / sub, reference / sub):  # the same draws on both folders: the same patches
            loader = nnUNetDataLoader(nnUNetDatasetBlosc2(str(folder), [case]), 2, patch, patch, labels,
                                      oversample_foreground_percent=0.5)
            np.random.seed(k)
            batches.append(next(loader))
        ours_batch, ref_batch = batches
        assert ours_batch["keys"].tolist() == [case, case]
        assert ours_batch["target"].dtype == ref_batch["target"].dtype
        assert np.array_equal(ours_batch["target"].numpy(), ref_batch["target"].numpy())
        a, b = ref_batch["data"].numpy(), ours_batch["data"].numpy()
        assert np.abs(a - b).max() <= 1e-6 * max(1.0, float(a.max() - a.min()))


_TRAIN = """
import json, os, sys, torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

class Tiny(nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cpu")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1
        self.num_epochs = 1

torch.set_num_threads(1)
folder = os.path.join(os.environ["nnUNet_preprocessed"], sys.argv[1])
plans = json.load(open(os.path.join(folder, "nnUNetPlans.json")))
plans["continue_training"] = False
trainer = Tiny(plans, sys.argv[2], "all", json.load(open(os.path.join(folder, "dataset.json"))))
trainer.run_training()
trainer.perform_actual_validation(False)
print(trainer.output_folder)
"""


def test_nnunet_trainer_trains_and_validates_on_it(folders, tmp_path):
    _, _, _, ours = folders
    env = {**_nnunet_env(tmp_path), "nnUNet_preprocessed": str(ours.parent)}
    run = subprocess.run([sys.executable, "-c", _TRAIN, NAME, "3d_fullres"], env=env, capture_output=True, text=True,
                         encoding="utf-8", errors="replace", timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    fold = tmp_path / "nnUNet_results" / NAME / "Tiny__nnUNetPlans__3d_fullres" / "fold_all"
    assert (fold / "checkpoint_final.pth").is_file()
    summary = json.loads((fold / "validation" / "summary.json").read_text())  # scored against gt_segmentations
    assert len(summary["metric_per_case"]) == 3


def _layout_cases():
    rng = random.Random(0)
    sizes = [1, 2, 3, 7, 8, 16, 31, 64, 100, 128, 255, 256, 257, 300, 512, 600]
    patches = [1, 4, 8, 12, 20, 24, 28, 40, 48, 64, 80, 96, 112, 128, 160, 192, 256, 384, 512]
    for _ in range(3000):
        shape = (rng.choice([1, 2, 4]), *(rng.choice(sizes) if rng.random() < 0.5 else rng.randint(1, 700) for _ in range(3)))
        patch = tuple(rng.choice(patches) for _ in range(rng.choice([2, 3])))
        yield shape, patch, rng.choice([1, 2, 4, 8])


def test_blosc2_layout_is_nnunets_rule():
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params

    named = [((1, 128, 128, 128), (128, 128, 128), 4), ((1, 1, 512, 512), (512, 512), 4), ((2, 300, 512, 512), (80, 160, 160), 4),
             ((1, 9, 26, 24), (10, 28, 24), 2), ((1, 5000, 7, 7), (1, 7), 1)]
    for shape, patch, itemsize in [*named, *_layout_cases()]:
        assert blosc2_layout(shape, patch, itemsize) == comp_blosc2_params(shape, patch, itemsize), (shape, patch, itemsize)
    with pytest.raises(ValueError, match="4 positive sizes"):
        blosc2_layout((1, 0, 4, 4), (4, 4), 4)
    with pytest.raises(ValueError, match="patch_size"):
        blosc2_layout((1, 4, 4, 4), (4,), 4)


def _copy_work(work: Path, dest: Path) -> Path:
    shutil.copytree(work, dest, ignore=shutil.ignore_patterns("nnUNetPlans_*", "results"))
    return dest


def _run(work: Path, out: Path, configurations=("3d_fullres",)):
    return preprocess_dataset_nnunet(work, out, options=PreprocessOptions(configurations=configurations, num_processes=1,
                                                                          progress=False))


def test_rerun_skips_finished_cases_and_repairs_the_folder(folders, tmp_path):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class, nnUNetDatasetBlosc2

    _, work, reference, ours = folders
    out = tmp_path / NAME
    shutil.copytree(ours, out)
    sub = out / _data_folder(work, "3d_fullres")
    cases = _identifiers(sub)
    untouched = case_paths(sub, cases[1])[0]
    mtime = untouched.stat().st_mtime_ns
    damaged = case_paths(sub, cases[0])[0]
    damaged.write_bytes(damaged.read_bytes()[:-50])  # cut off, as by a full disk
    (sub / f".tmp-99999999-0123abcd-{cases[2]}.b2nd").write_bytes(b"left by a killed run")
    (sub / "gone_case.b2nd").write_bytes(b"x")  # a case no longer in the dataset
    (sub / "gone_case.pkl").write_bytes(b"x")

    [report] = _run(work, out)
    assert report.processed == [cases[0]] and report.skipped == cases[1:]
    assert untouched.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in sub.iterdir()) == sorted(p.name for p in (reference / sub.name).iterdir())
    assert infer_dataset_class(str(sub)) is nnUNetDatasetBlosc2
    ref = blosc2.open(str(case_paths(reference / sub.name, cases[0])[0]), mode="r")[:]
    assert np.abs(blosc2.open(str(damaged), mode="r")[:] - ref).max() <= 1e-6 * (ref.max() - ref.min())
    [again] = _run(work, out)
    assert again.processed == [] and again.skipped == cases


def test_changed_plans_redo_every_case(folders, tmp_path):
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params

    _, work, _, ours = folders
    w = _copy_work(work, tmp_path / "work")
    out = tmp_path / NAME
    shutil.copytree(ours, out)
    plans = json.loads((w / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["patch_size"] = [8, 16, 16]
    (w / "plans.json").write_text(json.dumps(plans))
    [report] = _run(w, out)
    assert len(report.processed) == 3 and report.skipped == []
    assert json.loads((out / "nnUNetPlans.json").read_text())["configurations"]["3d_fullres"]["patch_size"] == [8, 16, 16]
    data = blosc2.open(str(case_paths(report.folder, report.processed[0])[0]), mode="r")
    blocks, chunks = comp_blosc2_params(data.shape, (8, 16, 16), 4)
    assert (data.chunks, data.blocks) == (chunks, blocks)
    assert report.folder.name in json.loads((out / STATE_FILE).read_text())


def test_refusals_name_the_file(folders, tmp_path, monkeypatch):
    _, work, _, _ = folders
    w = _copy_work(work, tmp_path / "work")

    # fastseg's own cases in the data folder: refused before anything is written
    out = tmp_path / "mixed" / NAME
    (out / _data_folder(work, "3d_fullres")).mkdir(parents=True)
    (out / _data_folder(work, "3d_fullres") / "case_0000.json").write_text("{}")
    with pytest.raises(NnunetFormatError, match="case_0000.json"):
        _run(w, out)
    assert not (out / "nnUNetPlans.json").exists() and not (out / "gt_segmentations").exists()

    plans = json.loads((w / "plans.json").read_text())
    del plans["configurations"]["3d_fullres"]["patch_size"]
    (w / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(NnunetFormatError, match=r"plans\.json.*'3d_fullres'.*patch_size"):
        _run(w, tmp_path / "a" / NAME)
    del plans["plans_name"]
    (w / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(NnunetFormatError, match=r"plans\.json has no 'plans_name'"):
        _run(w, tmp_path / "b" / NAME)

    monkeypatch.setitem(sys.modules, "blosc2", None)  # as if it were not installed
    with pytest.raises(NnunetFormatError, match="blosc2"):
        _run(work, tmp_path / "c" / NAME)
    assert not (tmp_path / "c").exists()


def test_cli_output_defaults_and_format_clashes(folders, tmp_path):
    _, work, _, ours = folders
    w = _copy_work(work, tmp_path / "work")
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}

    def fastseg(*args, **extra):
        return subprocess.run([fastseg_script(), "preprocess", *args], capture_output=True, text=True, encoding="utf-8",
                              errors="replace", env={**env, **extra}, timeout=300)

    run = fastseg(str(w), "--format", "nnunet", "-c", "3d_fullres", "-j", "1")
    assert run.returncode == 1 and "nnUNet_preprocessed is not set" in run.stderr and "-o" in run.stderr
    run = fastseg(str(w), "--format", "nnunet", "-c", "3d_fullres", "-j", "1", nnUNet_preprocessed=str(tmp_path / "pre"))
    assert run.returncode == 0, run.stderr
    assert len(_identifiers(tmp_path / "pre" / NAME / _data_folder(work, "3d_fullres"))) == 3
    # the work folder as nnU-Net's dataset folder (as with -d): then fastseg's own format must not join it
    run = fastseg(str(w), "--format", "nnunet", "-c", "3d_fullres", "-j", "1", "-o", str(w))
    assert run.returncode == 0, run.stderr
    run = fastseg(str(w), "-c", "3d_fullres", "-j", "1")
    assert run.returncode == 1 and "holds nnU-Net's preprocessed format" in run.stderr and "case_0000.b2nd" in run.stderr
    run = fastseg(str(w), "-o", str(tmp_path / "x"))
    assert run.returncode == 1 and "--format nnunet" in run.stderr
