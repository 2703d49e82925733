"""`fastseg plan --preprocess` vs `nnUNetv2_plan_and_preprocess --clean`, end to end, on two datasets.

- "ct": 20 synthetic CT-like cases of about 100x256x256 voxels (int16 .nii.gz; slice spacing 2-5 mm,
  in-plane 0.6-0.95 mm, shapes jittered per case: `fastseg.datasets.synthetic`), so the cases need
  resampling to the median spacing as real data does.
- "noisy-mr": 5 MR-like cases of 181x217x181 voxels at 1 mm, float32 with Gaussian noise (sigma 3) in
  every voxel (`benchmarks/noisy_mr.py`): about 27 MB of nearly incompressible .nii.gz each, so
  reading (decompressing) the files is the largest cost and nothing is cropped away.

Both tools run as one command with 2 worker processes each: `fastseg plan -j 2 --preprocess` (the
installed `fastseg` command, started from a scratch folder so no source tree is on the import path)
against `nnUNetv2_plan_and_preprocess -npfp 2 -np 2 --clean`; `fastseg plan -j 2` followed by
`fastseg preprocess -j 2` (two processes) is timed too and reported beside it;
fingerprint -> plan -> preprocess of the configurations nnU-Net preprocesses by default (2d,
3d_fullres, 3d_lowres when planned). Neither side's library threads are changed: fastseg's workers
use cores / 2 OpenMP threads each, nnU-Net's use their libraries' defaults. fastseg's time includes
its dataset verification; nnU-Net's does not (no --verify_dataset_integrity). nnU-Net also compresses
its output (blosc2 .b2nd) while fastseg writes uncompressed .npy, which costs nnU-Net time and saves
it disk space. Both sides get one warm-up run and the same number of timed rounds (ROUNDS); the
outputs are then compared (plans, fingerprint, preprocessed arrays).

Opt-in, it takes several minutes (nearly all of it nnU-Net), from the repository root:

    pip install ".[test]"
    pytest benchmarks/test_bench_pipeline.py -m slow -s -p no:cacheprovider
    pytest benchmarks/test_bench_pipeline.py -m slow -s -p no:cacheprovider -k noisy-mr   # one dataset

Goal (issues "Datasets, fingerprint, planner and preprocessing" and "plan on noisy float32 MR"):
>= 10x less wall time on both datasets.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from noisy_mr import NAME as MR_NAME  # noqa: E402
from noisy_mr import write_noisy_mr_dataset  # noqa: E402

pytestmark = pytest.mark.slow

#: Worker processes on both sides.
PROCESSES = 2
#: Timed rounds per tool and dataset (after one warm-up run each); FASTSEG_BENCH_ROUNDS overrides.
ROUNDS = int(os.environ.get("FASTSEG_BENCH_ROUNDS", "3"))
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Bench:
    name: str  # nnU-Net dataset folder name
    num_cases: int
    shape: str
    dtype: str


DATASETS = {
    "ct": Bench("Dataset010_BenchCT", 20, "20x(100,256,256) jittered", "int16 CT .nii.gz"),
    "noisy-mr": Bench(MR_NAME, 5, "5x(181,217,181)", "float32 MR + noise .nii.gz"),
}
RESULTS: dict[tuple[str, str], list[dict]] = {}


@pytest.fixture(scope="module", autouse=True)
def opt_in(request):
    if "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("opt-in benchmark (several minutes): run with -m slow")


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory) -> Path:
    from fastseg.datasets.synthetic import SyntheticConfig, write_synthetic_dataset

    root = tmp_path_factory.mktemp("raw")
    ct = DATASETS["ct"]
    config = SyntheticConfig(num_cases=ct.num_cases, ct=True, shape=(100, 256, 256), name="BenchCT")
    write_synthetic_dataset(root / ct.name, config, num_processes=PROCESSES)
    write_noisy_mr_dataset(root / MR_NAME, DATASETS["noisy-mr"].num_cases)
    return root


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """The folder both tools run in: nothing of the source tree on the import path."""
    return tmp_path_factory.mktemp("cwd")


def _env(**extra: str) -> dict:
    """This environment without import-path entries inside the repository."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    kept = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and not Path(p).resolve().is_relative_to(REPO)]
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    env.update(extra)
    return env


def _command(name: str) -> str:
    """The console script `name` of this interpreter's environment, else the one on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.is_file() else shutil.which(name)
    assert found, f"{name} not found next to {sys.executable} or on PATH (pip install '.[test]')"
    return found


def _run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{cmd[:3]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def run_fastseg(raw: Path, out: Path, cwd: Path) -> dict:
    """`fastseg plan --preprocess`: one command, as nnU-Net's plan_and_preprocess is one."""
    exe, j, env = _command("fastseg"), str(PROCESSES), _env()
    start = time.perf_counter()
    text = _run([exe, "plan", str(raw), "-o", str(out), "-j", j, "--preprocess"], cwd, env)
    end = time.perf_counter()
    stages = next(line for line in text.splitlines() if line.startswith("time:"))
    return {"work": out, "total_s": end - start, "stages": stages}


def run_fastseg_two_commands(raw: Path, out: Path, cwd: Path) -> dict:
    """`fastseg plan` then `fastseg preprocess`: two processes, each with its own workers."""
    exe, j, env = _command("fastseg"), str(PROCESSES), _env()
    start = time.perf_counter()
    text = _run([exe, "plan", str(raw), "-o", str(out), "-j", j], cwd, env)
    planned = time.perf_counter()
    text += _run([exe, "preprocess", str(out), "-j", j], cwd, env)
    end = time.perf_counter()
    stages = next(line for line in text.splitlines() if line.startswith("time:"))
    return {"work": out, "total_s": end - start, "stages": f"plan {planned - start:.1f} s ({stages}) + preprocess {end - planned:.1f} s"}


def run_nnunet(raw: Path, out: Path, cwd: Path) -> dict:
    env = _env(nnUNet_raw=str(raw.parent), nnUNet_preprocessed=str(out), nnUNet_results=str(out / "results"))
    dataset_id = str(int(raw.name.split("_")[0][len("Dataset") :]))
    j = str(PROCESSES)
    start = time.perf_counter()
    _run([_command("nnUNetv2_plan_and_preprocess"), "-d", dataset_id, "-npfp", j, "-np", j, "--clean"], cwd, env)
    return {"work": out / raw.name, "total_s": time.perf_counter() - start}


def _installed_fastseg(cwd: Path) -> str:
    code = "import fastseg, os; print(os.path.dirname(fastseg.__file__))"
    where = _run([sys.executable, "-c", code], cwd, _env()).strip()
    assert not Path(where).resolve().is_relative_to(REPO), f"the benchmark would run the source tree {where}; pip install . first"
    return where


@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("impl", ["nnunetv2", "fastseg", "fastseg-two-commands"])
def test_plan_and_preprocess(benchmark, raw_root, scratch, tmp_path_factory, impl, dataset):
    bench = DATASETS[dataset]
    if impl.startswith("fastseg"):
        benchmark.extra_info["package"] = _installed_fastseg(scratch)
    benchmark.extra_info.update(op=f"plan + preprocess ({dataset}, {PROCESSES} processes)", shape=bench.shape, dtype=bench.dtype, impl=impl)
    benchmark.group = f"plan + preprocess {dataset}"
    fn = {"fastseg": run_fastseg, "fastseg-two-commands": run_fastseg_two_commands, "nnunetv2": run_nnunet}[impl]
    runs: list[dict] = []

    def setup():
        return (raw_root / bench.name, tmp_path_factory.mktemp(f"{impl}-{dataset}"), scratch), {}

    def run(*args):
        runs.append(fn(*args))
        if len(runs) > 1:  # keep the latest output only (for the comparison): hundreds of MB each
            shutil.rmtree(runs[-2]["work"].parent if impl == "nnunetv2" else runs[-2]["work"], ignore_errors=True)

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, warmup_rounds=1)
    timed = runs[1:] or runs  # the first run is the warm-up (unless benchmarking is disabled)
    RESULTS[(dataset, impl)] = timed
    totals = sorted(r["total_s"] for r in timed)
    line = f"\n{impl} {dataset}: median {statistics.median(totals):.1f} s (range {totals[0]:.1f}-{totals[-1]:.1f} s, {len(timed)} rounds)"
    if impl.startswith("fastseg"):
        median_run = sorted(timed, key=lambda r: r["total_s"])[len(timed) // 2]
        line += f"; median run: {median_run['stages']}"
    print(line)


def _check_outputs(dataset: str) -> None:
    import blosc2

    bench = DATASETS[dataset]
    ours, ref = RESULTS[(dataset, "fastseg")][-1]["work"], RESULTS[(dataset, "nnunetv2")][-1]["work"]
    plans = json.loads((ours / "plans.json").read_text())
    ref_plans = json.loads((ref / "nnUNetPlans.json").read_text())
    assert plans["configurations"] == ref_plans["configurations"]
    fingerprint = json.loads((ours / "dataset_fingerprint.json").read_text())
    ref_fingerprint = json.loads((ref / "dataset_fingerprint.json").read_text())
    assert fingerprint["shapes_after_crop"] == ref_fingerprint["shapes_after_crop"]
    for c, ref_stats in ref_fingerprint["foreground_intensity_properties_per_channel"].items():
        stats = fingerprint["foreground_intensity_properties_per_channel"][c]
        for k, v in ref_stats.items():
            assert stats[k] == pytest.approx(v, rel=1e-6, abs=1e-6), (dataset, c, k)
    for name in ("2d", "3d_fullres"):
        ident = plans["configurations"][name]["data_identifier"]
        for case in ("case_0000", f"case_{bench.num_cases - 1:04d}"):
            data = np.load(ours / ident / f"{case}.npy")
            seg = np.load(ours / ident / f"{case}_seg.npy")
            ref_data = blosc2.open(str(ref / ident / f"{case}.b2nd"))[:]
            ref_seg = blosc2.open(str(ref / ident / f"{case}_seg.b2nd"))[:]
            assert float(np.abs(data - ref_data).max()) <= 1e-3 * float(ref_data.max() - ref_data.min())
            assert (seg == ref_seg).mean() >= 0.999


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_outputs_agree_and_report_speedup(dataset):
    if (dataset, "fastseg") not in RESULTS or (dataset, "nnunetv2") not in RESULTS:
        pytest.skip("needs both runs of test_plan_and_preprocess")
    _check_outputs(dataset)
    ours = sorted(r["total_s"] for r in RESULTS[(dataset, "fastseg")])
    ref = sorted(r["total_s"] for r in RESULTS[(dataset, "nnunetv2")])
    ratio = statistics.median(ref) / statistics.median(ours)
    verdict = "meets" if ratio >= 10 else "misses"
    from fastseg.runtime.workers import default_num_workers

    threads = max(1, default_num_workers() // PROCESSES)
    print(
        f"\nplan + preprocess, {dataset} ({DATASETS[dataset].shape}, {DATASETS[dataset].dtype}), {len(ours)} rounds each after a "
        f"warm-up: fastseg {statistics.median(ours):.1f} s ({ours[0]:.1f}-{ours[-1]:.1f}), nnunetv2 {statistics.median(ref):.1f} s "
        f"({ref[0]:.1f}-{ref[-1]:.1f}); {ratio:.1f}x (range {ref[0] / ours[-1]:.1f}-{ref[-1] / ours[0]:.1f}x; {verdict} the >= 10x goal)\n"
        f"  fastseg: plan -j {PROCESSES} --preprocess, one command ({PROCESSES} worker processes, {threads} OpenMP thread(s) each), "
        f"writes uncompressed .npy\n"
        f"  nnunetv2: nnUNetv2_plan_and_preprocess -npfp {PROCESSES} -np {PROCESSES} --clean ({PROCESSES} worker processes, library "
        f"default threads), writes blosc2-compressed .b2nd"
    )
    two = sorted(r["total_s"] for r in RESULTS.get((dataset, "fastseg-two-commands"), []))
    if two:
        print(
            f"  fastseg as two commands (plan -j {PROCESSES}, then preprocess -j {PROCESSES}): {statistics.median(two):.1f} s "
            f"({two[0]:.1f}-{two[-1]:.1f}), {statistics.median(ref) / statistics.median(two):.1f}x"
        )
