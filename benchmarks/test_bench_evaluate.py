"""`fastseg.evaluate.evaluate_folders` vs nnU-Net's `compute_metrics_on_folder`, and the read floor.

20 CT-like reference segmentations with 4 foreground classes (fastseg's synthetic generator,
≈100×256×256, uint8 .nii.gz) and predictions made from them (shifted by a voxel, 2 % of the voxels
relabelled). Three things are timed in this process, each with 2 worker processes, one warm-up
round and the same timed rounds (ROUNDS; medians):

- the floor: reading every prediction and reference once (`fastseg.io.read_seg` in fastseg's pool);
- fastseg: `evaluate_folders` (reading, one confusion-matrix pass per case, summary);
- nnU-Net: `compute_metrics_on_folder` with its SimpleITK reader and a pool of 2.

Both summaries are compared (every number). Opt-in, a few minutes:

    pytest benchmarks/test_bench_evaluate.py -m slow -s -p no:cacheprovider

Goals (issue "Evaluation"): at most 1.3x the read floor, and >= 2x nnU-Net.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the workers import read_floor from here
from read_floor import read_pair  # noqa: E402

pytestmark = pytest.mark.slow

PROCESSES = 2
ROUNDS = int(os.environ.get("FASTSEG_BENCH_ROUNDS", "3"))
CASES = 20


@pytest.fixture(scope="module", autouse=True)
def opt_in(request):
    if "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("opt-in benchmark (a few minutes): run with -m slow")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from fastseg import io as fio
    from fastseg.datasets.synthetic import SyntheticConfig, write_synthetic_dataset

    root = tmp_path_factory.mktemp("bench_evaluate")
    raw = root / "Dataset970_Eval"
    write_synthetic_dataset(raw, SyntheticConfig(num_cases=CASES, ct=True, shape=(100, 256, 256)), num_processes=PROCESSES)
    pred = root / "pred"
    pred.mkdir()
    rng = np.random.default_rng(0)
    for ref_file in sorted((raw / "labelsTr").glob("*.nii.gz")):
        seg, props = fio.read_seg(ref_file)
        out = np.roll(seg[0], 1, axis=1)
        flip = rng.random(out.shape) < 0.02
        out[flip] = rng.integers(0, 5, int(flip.sum()))
        fio.write_seg(out.astype(np.uint8), pred / ref_file.name, props)
    import json

    return pred, raw / "labelsTr", json.loads((raw / "dataset.json").read_text())


def _timed(fn, rounds=ROUNDS):
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), sorted(times), result


def test_evaluate_against_nnunet_and_the_read_floor(folders, tmp_path):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from fastseg.evaluate import evaluate_folders
    from fastseg.evaluate.folder import labels_to_score
    from fastseg.runtime.workers import parallel_map

    pred, ref, dataset_json = folders
    names = sorted(p.name for p in pred.glob("*.nii.gz"))
    jobs = [(str(ref / n), str(pred / n)) for n in names]
    floor, floor_all, _ = _timed(lambda: parallel_map(read_pair, jobs, PROCESSES, progress=False))
    ours, ours_all, summary = _timed(lambda: evaluate_folders(pred, ref, dataset_json, num_processes=PROCESSES, progress=False))
    labels, ignore = labels_to_score(dataset_json)
    theirs, theirs_all, reference = _timed(
        lambda: compute_metrics_on_folder(str(ref), str(pred), None, SimpleITKIO(), ".nii.gz", labels, ignore, PROCESSES)
    )
    for k in labels:
        for m, v in reference["mean"][k].items():
            assert (math.isnan(v) and math.isnan(summary["mean"][k][m])) or summary["mean"][k][m] == pytest.approx(v, rel=1e-9)
    print(
        f"\nevaluate, {len(names)} cases ≈100x256x256, {len(labels)} foreground classes, {PROCESSES} processes each, "
        f"{ROUNDS} rounds after a warm-up (medians):\n"
        f"  read floor   {floor:.2f} s  {[round(t, 2) for t in floor_all]}\n"
        f"  fastseg      {ours:.2f} s  {[round(t, 2) for t in ours_all]}  = {ours / floor:.2f}x the floor (goal <= 1.3x)\n"
        f"  nnunetv2     {theirs:.2f} s  {[round(t, 2) for t in theirs_all]}  -> fastseg {theirs / ours:.2f}x faster (goal >= 2x)"
    )


SURFACE_CASES = 4


@pytest.fixture(scope="module")
def folders_256(tmp_path_factory):
    """4 CT-like 256^3 reference maps and predictions that look like a model's: shifted by a voxel,
    one label dilated, one eroded, three small false-positive blobs far from the organs."""
    from scipy import ndimage

    from fastseg import io as fio
    from fastseg.datasets.synthetic import SyntheticConfig, write_synthetic_dataset

    root = tmp_path_factory.mktemp("bench_surface")
    raw = root / "Dataset971_Surface"
    write_synthetic_dataset(raw, SyntheticConfig(num_cases=SURFACE_CASES, ct=True, shape=(256, 256, 256)), num_processes=PROCESSES)
    pred = root / "pred"
    pred.mkdir()
    rng = np.random.default_rng(0)
    for ref_file in sorted((raw / "labelsTr").glob("*.nii.gz")):
        seg, props = fio.read_seg(ref_file)
        out = np.roll(seg[0].astype(np.uint8), 1, axis=2)
        out[ndimage.binary_dilation(out == 2) & (out == 0)] = 2
        out[(out == 3) & ~ndimage.binary_erosion(out == 3)] = 0
        for _ in range(3):
            z, y, x = (int(rng.integers(5, n - 5)) for n in out.shape)
            out[z - 2:z + 2, y - 2:y + 2, x - 2:x + 2] = rng.integers(1, 5)
        fio.write_seg(out, pred / ref_file.name, props)
    import json

    return pred, raw / "labelsTr", json.loads((raw / "dataset.json").read_text())


def test_surface_metrics_cost_against_the_overlap_pass(folders_256):
    from fastseg.evaluate import evaluate_folders

    pred, ref, dataset_json = folders_256
    overlap, overlap_all, _ = _timed(lambda: evaluate_folders(pred, ref, dataset_json, num_processes=PROCESSES, progress=False))
    surface, surface_all, summary = _timed(
        lambda: evaluate_folders(pred, ref, dataset_json, num_processes=PROCESSES, progress=False, nsd_tolerance_mm=2.0)
    )
    assert all(math.isfinite(m["HD95"]) for m in summary["mean"].values())
    print(
        f"\nevaluate, {SURFACE_CASES} cases ≈256^3, 4 foreground classes, {PROCESSES} processes, {ROUNDS} rounds after a warm-up:\n"
        f"  overlap only          {overlap:.2f} s  {[round(t, 2) for t in overlap_all]}\n"
        f"  + HD95, ASSD, NSD     {surface:.2f} s  {[round(t, 2) for t in surface_all]}  -> surface metrics add "
        f"{(surface - overlap) / overlap:.2f}x the overlap evaluation (goal <= 1x)"
    )
