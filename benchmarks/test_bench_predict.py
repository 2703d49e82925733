"""`fastseg predict` vs nnU-Net's `nnUNetv2_predict_from_modelfolder` on the CPU, end to end.

Both tools run as separate processes through `fastseg.benchmark.predict.benchmark_predict` (what
`fastseg benchmark predict --against nnunet` runs): the same model folder, fold, step size 0.5 and
mirroring over the checkpoint's axes, torch pinned to the same thread count, nnU-Net with 2
preprocessing and 2 export processes. Wall time from process start to exit (reading and writing
included), peak summed PSS of each tool's process tree, time per stage, voxel agreement.

Two models, trained briefly here (tests/model_factory.py: plans by fastseg, which equal nnU-Net's;
a plain torch loop, so predictions are not trivial) on a synthetic CT-like dataset:

- "3d_fullres": the plans' 3d_fullres network, applied to one CT-like volume of 200x256x256 voxels
  at 1.5x0.8x0.8 mm, which the plans' spacing makes the tools resample both ways;
- "2d": the plans' 2d network, applied slice by slice to a 3D MR-like volume (181x217x181 at 1 mm,
  resampled in-plane).

The networks have the plans' topology (stages, kernels, strides, patch size) with `WIDTH_DIVISOR`
times fewer features per stage than the plans say, because the full-width networks take tens of
minutes per volume on a 2-core CPU in either tool (the network then dominates both sides; see
benchmarks/README.md for that case). `FASTSEG_BENCH_WIDTH_DIVISOR=1` runs the full width.

Opt-in (several minutes), from the repository root:

    pytest benchmarks/test_bench_predict.py -m slow -s -p no:cacheprovider

Goal (issue "Predictor"): >= 3x less wall time and <= 1/3 of nnU-Net's peak memory.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from model_factory import train_model_folder  # noqa: E402

pytestmark = pytest.mark.slow

WIDTH_DIVISOR = int(os.environ.get("FASTSEG_BENCH_WIDTH_DIVISOR", "4"))
ROUNDS = int(os.environ.get("FASTSEG_BENCH_ROUNDS", "1"))
PRECISION = os.environ.get("FASTSEG_BENCH_PRECISION", "auto")  # fastseg's --precision
THREADS = sorted({1, len(os.sched_getaffinity(0))})
RESULTS: dict[tuple[str, int], dict] = {}


@pytest.fixture(scope="module", autouse=True)
def opt_in(request):
    if "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("opt-in benchmark (several minutes): run with -m slow")


def _write_volume(folder: Path, name: str, shape, spacing, ct: bool, seed: int) -> None:
    """One synthetic case of `shape` voxels at `spacing` (z, y, x) mm, as `<name>_0000.nii.gz`."""
    from fastseg.datasets.synthetic import SyntheticConfig, generate_case
    from fastseg.io import write_image

    case = generate_case(SyntheticConfig(num_cases=1, seed=seed, shape=shape, shape_jitter=0.0, ct=ct), 0)
    props = {"spacing": list(spacing), "sitk_stuff": dict(case.properties["sitk_stuff"], spacing=list(spacing)[::-1])}
    folder.mkdir(parents=True, exist_ok=True)
    write_image(case.images[0].astype(np.float32 if not ct else np.int16), folder / f"{name}_0000.nii.gz", props)


@pytest.fixture(scope="module")
def setups(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    from fastseg.datasets.synthetic import SyntheticConfig, write_synthetic_dataset

    from fastseg.runtime.heap import retain_freed_memory

    retain_freed_memory()  # faster training of the models (this process only)
    root = tmp_path_factory.mktemp("bench_predict")
    raw = root / "Dataset961_PredBench"
    write_synthetic_dataset(raw, SyntheticConfig(num_cases=6, ct=True, shape=(80, 192, 192), name="PredBench"), num_processes=2)
    out = {}
    for cfg in ("3d_fullres", "2d"):
        model = root / "models" / f"nnUNetTrainer__nnUNetPlans__{cfg}"
        train_model_folder(raw, root / "work", model, cfg, iterations=20, width_divisor=WIDTH_DIVISOR)
        out[cfg] = model
    _write_volume(root / "ct", "ct_0000", (200, 256, 256), (1.5, 0.8, 0.8), ct=True, seed=3)
    _write_volume(root / "mr", "mr_0000", (181, 217, 181), (1.0, 1.0, 1.0), ct=False, seed=4)
    return {"3d_fullres": (out["3d_fullres"], root / "ct"), "2d": (out["2d"], root / "mr")}


@pytest.mark.parametrize("threads", THREADS, ids=[f"{t}-threads" for t in THREADS])
@pytest.mark.parametrize("config", ["3d_fullres", "2d"])
def test_predict_against_nnunet(setups, tmp_path, config, threads):
    from fastseg.benchmark.predict import benchmark_predict, format_report

    model, images = setups[config]
    cpus = set(sorted(os.sched_getaffinity(0))[:threads])
    result = benchmark_predict(
        model, images, against_nnunet=True, threads=threads, cpus=cpus, processes=2, rounds=ROUNDS, warmup=0, precision=PRECISION,
        work_dir=tmp_path,
    )
    RESULTS[(config, threads)] = result.as_json()
    plans = json.loads((model / "plans.json").read_text())["configurations"][config]
    print(f"\n{config} (patch {plans['patch_size']}, features / {WIDTH_DIVISOR}), {threads} thread(s) on CPUs {sorted(cpus)}")
    print(format_report(result))
    assert result.agreement.cases == 1 and not result.agreement.geometry_mismatches
    assert result.agreement.equal_fraction >= 0.997


def test_summary():
    if not RESULTS:
        pytest.skip("no benchmark ran")
    print("\nconfig | threads | fastseg | nnU-Net | wall ratio | fastseg peak PSS | nnU-Net peak PSS | memory | voxels equal")
    for (config, threads), r in sorted(RESULTS.items()):
        f, n = r["fastseg"], r["nnunet"]
        print(
            f"{config} | {threads} | {f['wall_s']:.1f} s | {n['wall_s']:.1f} s | {r['wall_ratio']:.2f}x | "
            f"{f['peak_pss_bytes'] / 2**20:.0f} MiB | {n['peak_pss_bytes'] / 2**20:.0f} MiB | "
            f"{r.get('memory_ratio', float('nan')):.2f} | {r['agreement']['equal_fraction'] * 100:.3f} %"
        )
