"""`fastseg predict --ray` on a local cluster beside the single-process pipeline, on the same 2 cores.

Both sides run the installed `fastseg predict` command as its own process, pinned to the same CPUs
(`os.sched_setaffinity`), on the same model and cases, timed the same way: wall time from process
start to exit (model loading, reading and writing included), cases/hour = cases / wall.

- single process: `fastseg predict --threads N` (the three-stage pipeline, torch and the kernels at
  N threads);
- Ray: `fastseg predict --ray ADDRESS --ray-cpus-per-worker 1` joining a local cluster of N CPUs
  started beforehand (untimed, as a cluster runs before jobs are submitted): N workers of one thread,
  each loading the model once.

The scheduling overhead per case is measured apart: `fastseg.distributed.scheduler.run_cases` over
a function that does nothing, so each case is only the round trip driver -> worker -> driver.

Opt-in (a few minutes), from the repository root:

    pytest benchmarks/test_bench_ray.py -m slow -s -p no:cacheprovider

Goal (issue "beyond one machine"): Ray with 2 workers of 1 CPU >= 0.85x the single process's
throughput on the same 2 cores.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from model_factory import train_model_folder  # noqa: E402

pytestmark = pytest.mark.slow

CPUS = sorted(os.sched_getaffinity(0))[:2]
NUM_CASES = int(os.environ.get("FASTSEG_BENCH_RAY_CASES", "12"))
ROUNDS = int(os.environ.get("FASTSEG_BENCH_ROUNDS", "2"))
CASE_SHAPE = (40, 128, 128)


def _fastseg() -> str:
    script = Path(sysconfig.get_path("scripts")) / "fastseg"
    return str(script) if script.is_file() else shutil.which("fastseg")


def _timed(cmd: list[str]) -> tuple[float, str]:
    """Wall seconds of a command pinned to CPUS, and its stdout."""
    start = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace",
                         preexec_fn=lambda: os.sched_setaffinity(0, CPUS), timeout=3600)
    wall = time.perf_counter() - start
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return wall, run.stdout


def _noop(*args):
    return None


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from fastseg.datasets.synthetic import SyntheticConfig, write_synthetic_dataset

    root = tmp_path_factory.mktemp("bench_ray")
    raw = root / "Dataset954_RayBench"
    write_synthetic_dataset(raw, SyntheticConfig(num_cases=4, shape=(24, 96, 96), ct=True, name="RayBench"), num_processes=1)
    model = root / "models" / "nnUNetTrainer__nnUNetPlans__2d"
    train_model_folder(raw, root / "work", model, "2d", iterations=20, width_divisor=4)
    test = root / "test"
    write_synthetic_dataset(test, SyntheticConfig(num_cases=NUM_CASES, shape=CASE_SHAPE, ct=True, seed=5), num_processes=1)
    return model, test / "imagesTr", root


def test_ray_throughput_against_the_single_process_pipeline(data):
    import ray

    from fastseg.distributed.cluster import worker_slots
    from fastseg.distributed.scheduler import CaseTask, run_cases

    model, images, root = data
    load = [os.getloadavg()]
    singles, rays = [], []
    ray.init(num_cpus=len(CPUS), include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        address = ray.get_runtime_context().gcs_address
        for r in range(ROUNDS):  # interleaved, so that both sides see the same load
            for out in (root / "single", root / "ray"):
                shutil.rmtree(out, ignore_errors=True)
            wall, out_single = _timed([_fastseg(), "predict", "-m", str(model), "-i", str(images), "-o",
                                       str(root / "single"), "--threads", str(len(CPUS))])
            singles.append(wall)
            wall, out_ray = _timed([_fastseg(), "predict", "-m", str(model), "-i", str(images), "-o", str(root / "ray"),
                                    "--ray", address, "--ray-cpus-per-worker", "1"])
            rays.append(wall)
        single, on_ray = statistics.median(singles), statistics.median(rays)
        slots = worker_slots(ray, cpus_per_worker=1, gpu=False)
        tasks = [CaseTask(str(i), (i,), 0) for i in range(400)]
        report = run_cases(ray, _noop, tasks, slots, progress=False)
        overhead = report.seconds / len(tasks) * len(slots)
    finally:
        ray.shutdown()
    load.append(os.getloadavg())
    for name in sorted(p.name for p in (root / "single").glob("*.nii.gz")):
        assert (root / "single" / name).read_bytes() == (root / "ray" / name).read_bytes(), name
    ratio = single / on_ray
    rows = [
        f"CPUs {CPUS}, {NUM_CASES} cases of {CASE_SHAPE} (2d model, features / 4, TTA), load average before/after "
        f"{load[0][0]:.2f}/{load[1][0]:.2f}; medians of {ROUNDS} interleaved rounds: single "
        f"{', '.join(f'{w:.1f}' for w in singles)} s, ray {', '.join(f'{w:.1f}' for w in rays)} s",
        "| run | workers x threads | wall | cases/hour | ratio |",
        "|---|---|---|---|---|",
        f"| single process (`--threads {len(CPUS)}`) | 1 x {len(CPUS)} | {single:.1f} s | {3600 * NUM_CASES / single:.0f} | 1.00x |",
        f"| `--ray` (local cluster, started before) | {len(slots)} x 1 | {on_ray:.1f} s | {3600 * NUM_CASES / on_ray:.0f} | "
        f"**{ratio:.2f}x** |",
        f"scheduling overhead per case (no-op cases, {len(slots)} workers): {1000 * overhead:.1f} ms of a worker's time",
        "single process: " + next((line for line in out_single.splitlines() if "written" in line), ""),
        "ray: " + next((line for line in out_ray.splitlines() if "written" in line), ""),
        *[line for line in out_ray.splitlines() if line.startswith(("cluster:", "  worker"))],
    ]
    print("\n" + "\n".join(rows))
    assert ratio >= 0.85, f"--ray reached {ratio:.2f}x the single process's throughput (goal >= 0.85x)"
