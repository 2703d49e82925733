"""Streamed 3D prediction (`--memory-budget-gb`): its cost over in-memory prediction, and its peak memory.

Two measurements on a 3d_fullres model trained briefly here (tests/model_factory.py, `WIDTH_DIVISOR`
times fewer features per stage than the plans say, as in test_bench_predict.py) on a synthetic
CT-like dataset:

- Cost: one CT-like volume predicted file to file in this process, in memory (`Predictor.predict_file`)
  and streamed (`fastseg.predict.streaming.stream_case`, the budget a third of what the case needs in
  memory), the same predictor (no TTA, step 0.5, batch 4), torch and the native kernels pinned to
  `THREADS` threads, alternating, `ROUNDS` rounds each; medians. Goal: streamed <= 1.15x in memory.
- Peak memory: `fastseg predict --memory-budget-gb G` in a subprocess on a volume whose float32
  image is 8x G; its VmHWM against a baseline process (the same command predicting a case of one
  tile in memory, then the forward passes of a whole batch: the interpreter, torch, the model, the
  code a prediction runs; tests/test_streaming.py's `_BASELINE`). Goal: peak <= baseline + G.

Opt-in (minutes), from the repository root:

    pytest benchmarks/test_bench_streaming.py -m slow -s -p no:cacheprovider
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from model_factory import train_model_folder  # noqa: E402

pytestmark = pytest.mark.slow

WIDTH_DIVISOR = int(os.environ.get("FASTSEG_BENCH_WIDTH_DIVISOR", "8"))
ROUNDS = int(os.environ.get("FASTSEG_BENCH_ROUNDS", "2"))
THREADS = len(os.sched_getaffinity(0))


@pytest.fixture(scope="module", autouse=True)
def opt_in(request):
    if "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("opt-in benchmark (minutes): run with -m slow")


def _write_volume(path: Path, shape, spacing, seed: int) -> Path:
    """A CT-like int16 volume of `shape` (z, y, x) at `spacing` mm."""
    import SimpleITK as sitk

    from fastseg.datasets.synthetic import SyntheticConfig, generate_case

    case = generate_case(SyntheticConfig(num_cases=1, seed=seed, shape=shape, shape_jitter=0.0, ct=True), 0)
    image = sitk.GetImageFromArray(case.images[0].astype(np.int16))
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from fastseg.datasets.synthetic import SyntheticConfig, write_synthetic_dataset

    root = tmp_path_factory.mktemp("bench_streaming")
    raw = root / "Dataset962_StreamBench"
    write_synthetic_dataset(raw, SyntheticConfig(num_cases=4, ct=True, shape=(20, 48, 48), name="StreamBench"), num_processes=2)
    folder = root / "models" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    return train_model_folder(raw, root / "work", folder, "3d_fullres", iterations=20, width_divisor=WIDTH_DIVISOR)


def _uptime() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[:3].__str__()


def test_streaming_costs_at_most_15_percent(model, tmp_path):
    import SimpleITK as sitk
    import torch

    from fastseg.predict import Predictor
    from fastseg.predict.streaming import in_memory_bytes, stream_case
    from fastseg.threads import num_threads

    case = _write_volume(tmp_path / "in" / "ct_0000.nii.gz", (240, 144, 144), (1.5, 0.8, 0.8), seed=3)
    predictor = Predictor.from_model_folder(model, tta=False, batch_size=4, threads=THREADS)
    need = in_memory_bytes(predictor, [case])
    budget = need // 3
    load_before = _uptime()
    times = {"in memory": [], "streamed": []}
    slabs = 0
    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        with num_threads(THREADS):
            for r in range(ROUNDS):
                t = time.perf_counter()
                predictor.predict_file(case, tmp_path / "mem" / "ct.nii.gz")
                times["in memory"].append(time.perf_counter() - t)
                t = time.perf_counter()
                slabs = stream_case(predictor, [case], tmp_path / "stream" / f"ct{r}.nii.gz", budget=budget,
                                    progress=False)["slabs"]
                times["streamed"].append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(old)
    mem = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mem" / "ct.nii.gz")))
    streamed = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "stream" / "ct0.nii.gz")))
    ratio = statistics.median(times["streamed"]) / statistics.median(times["in memory"])
    print(
        f"\nstreaming cost: volume 240x144x144, {THREADS} threads, budget {budget / 2**20:.0f} MiB "
        f"({slabs} slabs; in memory needs ~{need / 2**20:.0f} MiB): in memory {statistics.median(times['in memory']):.2f} s, "
        f"streamed {statistics.median(times['streamed']):.2f} s, ratio {ratio:.3f}; labels equal "
        f"{np.mean(mem == streamed):.6f}; load {load_before} -> {_uptime()}"
    )
    assert slabs > 1
    assert np.array_equal(mem, streamed)
    assert ratio <= 1.15, f"streaming costs {100 * (ratio - 1):.1f} % over in-memory prediction"


def test_volume_8x_the_budget_stays_under_it(model, tmp_path):
    from test_streaming import _MEASURE, _hwm, baseline_hwm

    budget_gb = 0.016
    shape = (3728, 96, 96)  # float32 image: 8.0x the budget
    case = _write_volume(tmp_path / "in" / "long_0000.nii.gz", shape, (1.5, 0.8, 0.8), seed=5)
    image_bytes = 4 * int(np.prod(shape))
    assert image_bytes >= 8 * budget_gb * 2**30 * 0.99
    load_before = _uptime()
    t = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-c", _MEASURE, "predict", "-m", str(model), "-i", str(case.parent), "-o", str(tmp_path / "out"),
         "--memory-budget-gb", str(budget_gb), "--no-tta", "--batch-size", "4", "--step-size", "1",
         "--threads", str(THREADS)],
        capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=3600,
    )
    wall = time.perf_counter() - t
    assert run.returncode == 0, run.stderr[-3000:]
    peak = _hwm(run)
    base = baseline_hwm(model, 4, case, tmp_path / "baseline", THREADS)
    print(
        f"\n8x the budget: volume {shape}, image {image_bytes / 2**20:.0f} MiB, budget {budget_gb * 1024:.0f} MiB, "
        f"{THREADS} threads, {wall:.0f} s: peak RSS {peak / 2**20:.0f} MiB, baseline {base / 2**20:.0f} MiB, "
        f"extra {(peak - base) / 2**20:.1f} MiB; load {load_before} -> {_uptime()}"
    )
    assert peak - base <= budget_gb * 2**30
