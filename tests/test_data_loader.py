"""`make_training_loader`: batches of the plans' sizes with deep-supervision targets, reproducible,
validation batches without augmentation, named errors, clean shutdown."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest
import torch
from helpers import planned_dataset

from fastseg.data.loader import LoaderError, make_training_loader
from fastseg.data.targets import deep_supervision_scales
from fastseg.preprocess.storage import load_case


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    _, work = planned_dataset(tmp_path_factory.mktemp("loader"), preprocess_3d_fullres=True)
    return work


CASES = ["case_0000", "case_0001", "case_0002"]


def _batches(work, n, **kwargs):
    with make_training_loader(work, "3d_fullres", CASES, **kwargs) as loader:
        return [next(loader) for _ in range(n)], loader


def test_batches_have_the_plans_sizes_and_deep_supervision_targets(work):
    plans = json.loads((work / "plans.json").read_text())
    cfg = plans["configurations"]["3d_fullres"]
    batches, loader = _batches(work, 3, workers=1)
    data, targets = batches[-1]
    assert data.dtype == torch.float32 and tuple(data.shape) == (cfg["batch_size"], 1, *cfg["patch_size"])
    scales = deep_supervision_scales(cfg)
    assert len(targets) == len(scales)
    for t, s in zip(targets, scales):
        assert tuple(t.shape[2:]) == tuple(round(n * f) for n, f in zip(cfg["patch_size"], s))
        assert t.min() >= 0  # -1 (outside the image) became 0
    labels = set(np.unique(np.concatenate([load_case(work / cfg["data_identifier"], c)[1].ravel() for c in CASES])).tolist())
    assert set(torch.unique(targets[0]).tolist()) <= (labels - {-1}) | {0}
    assert loader.stats.batches == 3 and 0 <= loader.stats.wait_fraction <= 1


def test_same_seed_same_batches_other_seed_other_batches(work):
    a, _ = _batches(work, 3, seed=5, workers=2)
    b, _ = _batches(work, 3, seed=5, workers=1)
    c, _ = _batches(work, 3, seed=6, workers=2)
    for (da, ta), (db, tb) in zip(a, b):
        assert torch.equal(da, db) and all(torch.equal(x, y) for x, y in zip(ta, tb))
    assert any(not torch.equal(da, dc) for (da, _), (dc, _) in zip(a, c))


def test_validation_batches_are_unaugmented_crops_of_the_cases(work):
    plans = json.loads((work / "plans.json").read_text())
    cfg = plans["configurations"]["3d_fullres"]
    cases = {c: load_case(work / cfg["data_identifier"], c) for c in CASES}
    batches, _ = _batches(work, 4, augment=False, deep_supervision=False, workers=1)
    found = 0
    for data, targets in batches:
        for b in range(data.shape[0]):
            patch = data[b, 0].numpy()
            # an unaugmented patch is a window of one case's image (padding aside): find it
            for image, _, _ in cases.values():
                img = np.asarray(image[0])
                if img.shape == patch.shape and np.allclose(img, patch):
                    found += 1
                    break
                if all(i >= p for i, p in zip(img.shape, patch.shape)):
                    windows = np.lib.stride_tricks.sliding_window_view(img, patch.shape)
                    if np.any(np.all(np.isclose(windows, patch), axis=(-3, -2, -1))):
                        found += 1
                        break
            else:
                # the patch overhangs the image: its inside part is still a window; check value set only
                found += int(np.isin(np.round(patch[patch != 0], 4), np.round(np.concatenate([np.asarray(i[0]).ravel() for i, _, _ in cases.values()]), 4)).all())
    assert found == sum(d.shape[0] for d, _ in batches)


def test_errors_name_the_problem(work, tmp_path):
    with pytest.raises(LoaderError, match="fastseg preprocess"):
        make_training_loader(work, "2d", CASES)
    with pytest.raises(LoaderError, match="case_9999"):
        make_training_loader(work, "3d_fullres", ["case_9999"])
    with pytest.raises(LoaderError, match="plans.json"):
        make_training_loader(tmp_path, "3d_fullres", CASES)


def test_close_leaves_no_threads(work):
    before = threading.active_count()
    loader = make_training_loader(work, "3d_fullres", CASES, workers=2)
    next(loader)
    loader.close()
    with pytest.raises(StopIteration):
        next(loader)
    assert threading.active_count() <= before


def test_benchmark_loader_against_nnunet(work, capsys):
    # fastseg's pipeline and nnU-Net's own (its preprocessing made here by nnUNetv2_preprocess) on the same plans
    from fastseg import cli

    assert cli.main(["benchmark", "loader", str(work), "-c", "3d_fullres", "--against", "nnunet", "--batches", "3",
                     "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "fastseg" in text and "nnU-Net" in text and "x the samples per second" in text
    # CPU time of each tool's process tree over the timed batches, read in clock ticks (10 ms) from
    # /proc: a run of 3 batches can read no tick for one tool (seen in a fresh install), which prints "-"
    cpu = [float(m.replace(",", "")) for m in re.findall(r"([\d,.]+) CPU ms/sample", text)]
    assert 1 <= len(cpu) <= 2 and min(cpu) > 0
    assert ("x the CPU time per sample" in text) == (len(cpu) == 2)
    plans = json.loads((work / "plans.json").read_text())
    ref = work / ".nnunet_reference" / "nnUNet_preprocessed" / plans["dataset_name"] / plans["configurations"]["3d_fullres"]["data_identifier"]
    assert len(list(ref.glob("*.pkl"))) == 3  # nnU-Net preprocessed every case in its own format
