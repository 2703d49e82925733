"""`fastseg train` vs nnU-Net's trainer (`nnUNetv2_train`'s entry point), same plans and run length.

Both sides train fold 0 of a synthetic CT dataset on the CPU for EPOCHS epochs of ITERATIONS
training and VAL_ITERATIONS validation iterations, with the same loader worker count (fastseg's
DALI threads, nnU-Net's augmentation processes) and torch pinned to the same thread count, each in
its own process (`fastseg.benchmark.train`; its docstring says what is timed). Epoch 0 is the
warm-up of both; the rate is the training iterations of the later epochs over their wall time.
Each configuration runs at 1 torch thread and at all cores; fastseg runs as it does by default
(compiled: torch.compile, channels-last on the CPU) and once more eager, beside the same nnU-Net run
(nnU-Net does not compile on the CPU).

The dataset is made on first use in FASTSEG_BENCH_TRAIN_DIR (default: a folder under the system
temporary folder) and kept: 8 CT-like cases of 64x160x160 (`fastseg convert synthetic --cases 8
--ct --shape 64 160 160`), planned and preprocessed by fastseg; nnU-Net's side is preprocessed
from the same plans by `nnUNetv2_preprocess` once (WORK/.nnunet_reference).

Opt-in, it takes a long time on a small CPU (both trainers run real U-Nets), from the repository root:

    pip install ".[test]"
    pytest benchmarks/test_bench_train.py -m slow -s -p no:cacheprovider
    pytest benchmarks/test_bench_train.py -m slow -s -p no:cacheprovider -k 2d
    FASTSEG_BENCH_TRAIN_WORK=work/Dataset950 pytest benchmarks/test_bench_train.py -m slow -s   # existing work folder

Goal (issue "Trainer"): >= 1.3x nnU-Net's iterations per second, fastseg's loader wait <= 5 %.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EPOCHS = int(os.environ.get("FASTSEG_BENCH_TRAIN_EPOCHS", "3"))
ITERATIONS = {"2d": 10, "3d_fullres": 3}
VAL_ITERATIONS = 2
WORKERS = 2
ALL_CORES = len(os.sched_getaffinity(0))
ROOT = Path(os.environ.get("FASTSEG_BENCH_TRAIN_DIR", Path(tempfile.gettempdir()) / "fastseg-bench-train"))
RESULTS: list[dict] = []


def _fastseg(*args: str) -> None:
    run = subprocess.run([sys.executable, "-m", "fastseg.cli", *args], capture_output=True, text=True, encoding="utf-8",
                         errors="replace")
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.fixture(scope="module")
def work() -> Path:
    if os.environ.get("FASTSEG_BENCH_TRAIN_WORK"):  # a work folder of the same dataset, planned and preprocessed
        return Path(os.environ["FASTSEG_BENCH_TRAIN_WORK"])
    raw, work = ROOT / "raw" / "Dataset951_TrainBench", ROOT / "work"
    if not (work / ".done").is_file():
        if not raw.is_dir():
            _fastseg("convert", "synthetic", "-o", str(raw), "--cases", "8", "--ct", "--shape", "64", "160", "160")
        _fastseg("plan", str(raw), "-o", str(work), "--preprocess", "-j", "2")
        (work / ".done").write_text("")
    return work


@pytest.mark.parametrize("threads", sorted({1, ALL_CORES}))
@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_training_rate_against_nnunet(work, configuration, threads):
    from fastseg.benchmark.train import benchmark_train, format_report

    run = dict(epochs=EPOCHS, iterations=ITERATIONS[configuration], val_iterations=VAL_ITERATIONS, workers=WORKERS,
               threads=threads)
    result = benchmark_train(work, configuration, **run)  # fastseg as it runs by default: compiled
    print("\n" + format_report(result))
    eager = benchmark_train(work, configuration, **run, compile=False, against_nnunet=False)
    print(format_report(eager) + f"\n  fastseg eager / nnU-Net: "
          f"{eager.fastseg.iterations_per_second / result.nnunet.iterations_per_second:.2f}x the iterations per second")
    RESULTS.append(result.as_json() | {"eager_it_s": eager.fastseg.iterations_per_second})
    assert result.nnunet is not None and result.fastseg.iterations_per_second > 0


def teardown_module(module) -> None:
    if RESULTS:
        print("\n" + json.dumps([{k: r[k] for k in ("configuration", "threads", "ratio")} |
                                 {"fastseg_it_s": r["fastseg"]["iterations_per_second"],
                                  "nnunet_it_s": r["nnunet"]["iterations_per_second"], "eager_it_s": r["eager_it_s"],
                                  "fastseg_wait": r["fastseg"]["wait_fraction"]} for r in RESULTS], indent=1))
