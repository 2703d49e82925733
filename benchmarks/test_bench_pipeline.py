"""`fastseg plan` + `fastseg preprocess` vs `nnUNetv2_plan_and_preprocess`, end to end, same -np.

The dataset: 20 synthetic CT-like cases of about 100x256x256 voxels (int16 .nii.gz; slice spacing
2-5 mm, in-plane 0.6-0.95 mm, shapes jittered per case: `fastseg.datasets.synthetic`), so the cases
need resampling to the median spacing as real data does. Both tools run as separate processes with
the same number of worker processes (the core count), fingerprint -> plan -> preprocess of the
configurations nnU-Net preprocesses by default (2d, 3d_fullres, 3d_lowres when planned). fastseg's
time includes its dataset verification; nnU-Net's does not (no --verify_dataset_integrity).

Opt-in, it takes several minutes (nearly all of it nnU-Net):

    pytest benchmarks/test_bench_pipeline.py -m slow -s

Goal (issue "Datasets, fingerprint, planner and preprocessing"): >= 10x less wall time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

NAME = "Dataset010_BenchCT"
NUM_CASES = 20
SHAPE = (100, 256, 256)
RESULTS: dict[str, dict] = {}

# `fastseg` as a fresh process, from the same interpreter and import path as this run.
CLI = "import sys; from fastseg.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module", autouse=True)
def opt_in(request):
    if "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("opt-in benchmark (several minutes): run with -m slow")


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory) -> Path:
    from fastseg.datasets.synthetic import SyntheticConfig, write_synthetic_dataset
    from fastseg.runtime.workers import default_num_workers

    root = tmp_path_factory.mktemp("raw")
    write_synthetic_dataset(root / NAME, SyntheticConfig(num_cases=NUM_CASES, ct=True, shape=SHAPE, name="BenchCT"), num_processes=default_num_workers())
    return root


def _workers() -> int:
    from fastseg.runtime.workers import default_num_workers

    return default_num_workers()


def _run(cmd: list[str], env: dict | None = None) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{cmd[:3]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def run_fastseg(raw_root: Path, out: Path) -> dict:
    j = str(_workers())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    text = _run([sys.executable, "-c", CLI, "plan", str(raw_root / NAME), "-o", str(out), "-j", j], env)
    planned = time.perf_counter()
    text += _run([sys.executable, "-c", CLI, "preprocess", str(out), "-j", j], env)
    end = time.perf_counter()
    return {"work": out, "plan_s": planned - start, "preprocess_s": end - planned, "log": text}


def run_nnunet(raw_root: Path, out: Path) -> dict:
    j = str(_workers())
    env = {**os.environ, "nnUNet_raw": str(raw_root), "nnUNet_preprocessed": str(out), "nnUNet_results": str(out / "results")}
    exe = shutil.which("nnUNetv2_plan_and_preprocess")
    assert exe, "nnUNetv2_plan_and_preprocess not on PATH (pip install nnunetv2)"
    start = time.perf_counter()
    _run([exe, "-d", NAME.split("_")[0][len("Dataset"):], "-npfp", j, "-np", j], env)
    return {"work": out / NAME, "total_s": time.perf_counter() - start}


@pytest.mark.parametrize("impl", ["nnunetv2", "fastseg"])
def test_plan_and_preprocess(benchmark, raw_root, tmp_path_factory, impl):
    benchmark.extra_info.update(op="plan + preprocess", shape=f"{NUM_CASES}x{SHAPE}", dtype="int16 CT .nii.gz", impl=impl)
    benchmark.group = "plan + preprocess"

    def setup():
        return (raw_root, tmp_path_factory.mktemp(impl)), {}

    fn = run_fastseg if impl == "fastseg" else run_nnunet
    runs = []
    # nnU-Net once (minutes); fastseg three times, the median counts (a shared machine is noisy).
    benchmark.pedantic(lambda *a: runs.append(fn(*a)), setup=setup, rounds=3 if impl == "fastseg" else 1, warmup_rounds=0)
    RESULTS[impl] = runs[0] if impl == "nnunetv2" else sorted(runs, key=lambda r: r["plan_s"] + r["preprocess_s"])[len(runs) // 2]
    if impl == "fastseg":
        r = RESULTS[impl]
        stages = next(line for line in r["log"].splitlines() if line.startswith("time:"))
        print(f"\nfastseg (median of {len(runs)}): plan {r['plan_s']:.1f} s ({stages}) + preprocess {r['preprocess_s']:.1f} s")


def test_outputs_agree_and_report_speedup():
    if set(RESULTS) != {"fastseg", "nnunetv2"}:
        pytest.skip("needs both runs of test_plan_and_preprocess")
    import blosc2

    ours, ref = RESULTS["fastseg"]["work"], RESULTS["nnunetv2"]["work"]
    plans = json.loads((ours / "plans.json").read_text())
    ref_plans = json.loads((ref / "nnUNetPlans.json").read_text())
    assert plans["configurations"] == ref_plans["configurations"]
    for name in ("2d", "3d_fullres"):
        ident = plans["configurations"][name]["data_identifier"]
        for case in ("case_0000", f"case_{NUM_CASES - 1:04d}"):
            data = np.load(ours / ident / f"{case}.npy")
            seg = np.load(ours / ident / f"{case}_seg.npy")
            ref_data = blosc2.open(str(ref / ident / f"{case}.b2nd"))[:]
            ref_seg = blosc2.open(str(ref / ident / f"{case}_seg.b2nd"))[:]
            assert float(np.abs(data - ref_data).max()) <= 1e-3 * float(ref_data.max() - ref_data.min())
            assert (seg == ref_seg).mean() >= 0.999
    f = RESULTS["fastseg"]
    ours_s, ref_s = f["plan_s"] + f["preprocess_s"], RESULTS["nnunetv2"]["total_s"]
    verdict = "meets" if ref_s / ours_s >= 10 else "misses"
    print(
        f"\nplan + preprocess, {NUM_CASES} cases, -j {_workers()}: fastseg {ours_s:.1f} s, nnunetv2 {ref_s:.1f} s, "
        f"{ref_s / ours_s:.1f}x ({verdict} the >= 10x goal)"
    )
