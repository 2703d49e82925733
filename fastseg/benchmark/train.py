"""`fastseg benchmark train`: `fastseg train` beside `nnUNetv2_train` on the same plans and data.

Both tools train the same fold (default "all": every case trains and validates, so any dataset
size works) of the same configuration for the same number of epochs, training
iterations and validation iterations per epoch, on the CPU, with the same loader worker count
(fastseg's `--workers`, nnU-Net's `nnUNet_n_proc_DA`) and the same torch thread count, each in its
own process. fastseg trains on its own preprocessing (WORK/<data_identifier>/), nnU-Net on its
own made from the same plans by `nnUNetv2_preprocess` (kept in WORK/.nnunet_reference/, as the
loader benchmark does); both use the same splits_final.json. The final validation is skipped on
both sides, and nothing is written into the user's results: each run trains into a scratch folder.

The figure compared is the steady training rate: the training iterations of epochs 1.. divided by
the wall time from the start of epoch 1 to the end of the last epoch, as both trainers log them
(`epoch_start_timestamps`, `epoch_end_timestamps` in the checkpoint's `logging`). That time includes
each epoch's validation iterations, logging, checkpoints and progress plot; epoch 0 (network and
loader start-up, first-touch allocation) is left out as warm-up. The wall time of the whole command
and the peak memory of its process tree (PSS) are reported beside it, and the loader wait fraction:
the share of the training loop spent in `next()` on the loader, averaged over epochs 1..
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fastseg.benchmark.loader import BenchmarkError, nnunet_reference
from fastseg.predict.precision import resolve_precision


@dataclass
class TrainRun:
    tool: str
    iterations_per_second: float
    epoch_seconds: list[float]
    wall_seconds: float
    peak_pss_bytes: int | None
    wait_fraction: float | None
    train_losses: list[float] = field(default_factory=list)


@dataclass
class TrainBenchmark:
    configuration: str
    fold: str
    epochs: int
    iterations: int
    val_iterations: int
    workers: int
    threads: int
    batch_size: int
    patch_size: list
    compiled: bool
    fastseg: TrainRun
    nnunet: TrainRun | None = None

    @property
    def ratio(self) -> float | None:
        """fastseg's steady iterations per second over nnU-Net's."""
        return self.fastseg.iterations_per_second / self.nnunet.iterations_per_second if self.nnunet else None

    def as_json(self) -> dict:
        out = asdict(self)
        out["ratio"] = self.ratio
        return out


def _steady_rate(logging: dict, iterations: int) -> tuple[float, list[float]]:
    starts, ends = logging["epoch_start_timestamps"], logging["epoch_end_timestamps"]
    epochs = min(len(starts), len(ends))
    seconds = [ends[e] - starts[e] for e in range(epochs)]
    if epochs < 2:
        raise BenchmarkError("the training benchmark needs at least 2 epochs (epoch 0 is the warm-up)")
    return iterations * (epochs - 1) / (ends[epochs - 1] - starts[1]), seconds


def _final_checkpoint(folder: Path) -> dict:
    import torch

    files = sorted(folder.rglob("checkpoint_final.pth"))
    if not files:
        raise BenchmarkError(f"no checkpoint_final.pth under {folder}")
    return torch.load(files[0], map_location="cpu", weights_only=False)


def _shadow_work_dir(work_dir: Path, data_identifier: str, target: Path) -> Path:
    """A work folder that sees the user's plans and preprocessed cases (links) and keeps its own
    results, so the benchmark's training writes nothing into the user's."""
    target.mkdir(parents=True)
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json", "source.json", "splits_final.json"):
        if (work_dir / name).is_file():
            shutil.copy(work_dir / name, target / name)
    (target / data_identifier).symlink_to((work_dir / data_identifier).resolve(), target_is_directory=True)
    return target


def _environment(env: dict | None, threads: int, workers: int) -> dict:
    env = dict(env if env is not None else os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), nnUNet_n_proc_DA=str(workers),
               nnUNet_compile="false", PYTHONUNBUFFERED="1")
    return env


def benchmark_train(
    work_dir: str | Path,
    configuration: str,
    *,
    fold: int | str = "all",
    epochs: int = 3,
    iterations: int = 20,
    val_iterations: int = 5,
    workers: int = 2,
    threads: int | None = None,
    against_nnunet: bool = True,
    compile: bool = True,
    env: dict | None = None,
    timeout: float = 3600,
) -> TrainBenchmark:
    """Trains `configuration` with fastseg (and nnU-Net) for `epochs` x `iterations` and compares the
    steady training rate (see the module's docstring). `threads`: torch threads of each trainer
    (default: the CPUs this process may use). `compile`: fastseg's default, torch.compile (nnU-Net
    never compiles on the CPU); False times fastseg's eager network."""
    from fastseg.benchmark.measure import run_measured
    from fastseg.plan.plans import resolve_configuration
    from fastseg.train.splits import load_or_make_splits
    from fastseg.preprocess.storage import case_identifiers

    work_dir = Path(work_dir)
    if not (work_dir / "plans.json").is_file():
        raise BenchmarkError(f"{work_dir / 'plans.json'} not found: plan and preprocess first (fastseg plan RAW -o {work_dir} --preprocess)")
    if epochs < 2:
        raise BenchmarkError(f"epochs must be >= 2 (epoch 0 is the warm-up), got {epochs}")
    plans = json.loads((work_dir / "plans.json").read_text())
    try:
        cfg = resolve_configuration(plans, configuration)
    except ValueError as err:
        raise BenchmarkError(f"{work_dir / 'plans.json'}: {err}") from None
    data_folder = work_dir / cfg["data_identifier"]
    cases = case_identifiers(data_folder) if data_folder.is_dir() else []
    if not cases:
        raise BenchmarkError(f"{configuration} is not preprocessed ({data_folder} holds no cases); "
                             f"run: fastseg preprocess {work_dir} -c {configuration}")
    threads = threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    env = _environment(env, threads, workers)
    result_args = dict(configuration=configuration, fold=str(fold), epochs=epochs, iterations=iterations,
                       val_iterations=val_iterations, workers=workers, threads=threads,
                       batch_size=int(cfg["batch_size"]), patch_size=list(cfg["patch_size"]), compiled=compile)
    with tempfile.TemporaryDirectory(prefix="fastseg-bench-train-") as tmp:
        shadow = _shadow_work_dir(work_dir, cfg["data_identifier"], Path(tmp) / "fastseg")
        splits_file = shadow / "splits_final.json"
        if fold != "all":
            load_or_make_splits(splits_file, cases)  # one split file for both tools
        command = [sys.executable, "-m", "fastseg.cli", "train", str(shadow), "-c", configuration, "-f", str(fold),
                   "--epochs", str(epochs), "--iterations-per-epoch", str(iterations), "--val-iterations",
                   str(val_iterations), "--workers", str(workers), "--save-every", str(epochs + 1),
                   "--no-final-validation"] + ([] if compile else ["--no-compile"])
        measured = run_measured(command, env=env, timeout=timeout)
        if measured.returncode != 0:
            raise BenchmarkError(f"fastseg train failed (exit {measured.returncode}): {measured.stderr[-2000:]}")
        checkpoint = _final_checkpoint(shadow / "results")
        rate, seconds = _steady_rate(checkpoint["logging"], iterations)
        waits = checkpoint.get("fastseg", {}).get("wait_fractions", [])[1:]
        ours = TrainRun("fastseg", rate, seconds, measured.wall_s, measured.peak_pss_bytes,
                        sum(waits) / len(waits) if waits else None, [float(x) for x in checkpoint["logging"]["train_losses"]])
        result = TrainBenchmark(**result_args, fastseg=ours)
        if against_nnunet:
            pre = nnunet_reference(work_dir, configuration, workers, env)
            if splits_file.is_file():
                shutil.copy(splits_file, pre / "splits_final.json")
            results, record_file = Path(tmp) / "nnUNet_results", Path(tmp) / "nnunet.json"
            command = [sys.executable, "-m", "fastseg.benchmark.nnunet_train", "--preprocessed", str(pre), "--results",
                       str(results), "-c", configuration, "-f", str(fold), "-p", plans.get("plans_name", "nnUNetPlans"),
                       "--epochs", str(epochs), "--iterations", str(iterations), "--val-iterations", str(val_iterations),
                       "--threads", str(threads), "--json", str(record_file)]
            measured = run_measured(command, env=env, timeout=timeout)
            if measured.returncode != 0 or not record_file.is_file():
                raise BenchmarkError(f"nnUNetv2_train failed (exit {measured.returncode}): {measured.stderr[-2000:]}")
            record = json.loads(record_file.read_text())
            checkpoint = _final_checkpoint(results)
            rate, seconds = _steady_rate(checkpoint["logging"], iterations)
            waits = record["wait_fractions"][1:]
            result.nnunet = TrainRun("nnunet", rate, seconds, measured.wall_s, measured.peak_pss_bytes,
                                     sum(waits) / len(waits) if waits else None,
                                     [float(x) for x in checkpoint["logging"]["train_losses"]])
    return result


def format_report(result: TrainBenchmark) -> str:
    def mib(n: int | None) -> str:
        return f"{n / 2**20:,.0f} MiB" if n else "-"

    def pct(x: float | None) -> str:
        return f"{100 * x:.1f} %" if x is not None else "-"

    lines = [f"training, {result.configuration} fold {result.fold}: {result.epochs} epochs x {result.iterations} iterations "
             f"(+{result.val_iterations} validation), batch {result.batch_size} x {result.patch_size}, "
             f"{result.workers} loader workers, {result.threads} torch threads each; epoch 0 is the warm-up; fastseg "
             f"{'compiled (torch.compile, channels-last)' if result.compiled else 'eager'}, "
             f"{resolve_precision('auto', 'cpu')} on the CPU (`--cpu-precision auto`), nnU-Net eager fp32 (it neither "
             "compiles nor autocasts on the CPU)"]
    for run in (result.fastseg, result.nnunet):
        if run is not None:
            name = "fastseg" if run.tool == "fastseg" else "nnU-Net"
            lines.append(f"  {name:8s} {run.iterations_per_second:7.3f} it/s   loader wait {pct(run.wait_fraction):>7s}   "
                         f"command {run.wall_seconds:6.1f} s   peak PSS {mib(run.peak_pss_bytes)}")
    if result.nnunet:
        lines.append(f"  fastseg / nnU-Net: {result.ratio:.2f}x the iterations per second")
    return "\n".join(lines)
