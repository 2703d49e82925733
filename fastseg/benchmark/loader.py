"""fastseg's training data pipeline beside nnU-Net's: samples per second and memory.

Both run as their own process (and worker processes), with the same worker count, on the same
dataset and plans, all default augmentations, deep-supervision targets included:

- fastseg: `fastseg.data.make_training_loader` on the work folder's preprocessed cases
  (`python -m fastseg.benchmark.loader --fastseg ...`);
- nnU-Net: its trainer's loader, transforms and augmenter, unchanged (`fastseg.benchmark.nnunet_loader`),
  on nnU-Net's own preprocessing of the same raw dataset with the same plans, made once by
  `nnUNetv2_preprocess` into `WORK/.nnunet_reference/` (nnU-Net reads its own format).

After a few warm-up batches, N batches are timed; memory is the peak summed PSS of each tool's
process tree (`fastseg.benchmark.measure`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

WARMUP_BATCHES = 3


class BenchmarkError(RuntimeError):
    """A tool failed; the message carries what it printed last."""


@dataclass
class LoaderRun:
    tool: str
    samples_per_second: float
    batch_size: int
    data_shape: list
    target_shapes: list
    peak_pss_bytes: int | None
    wait_fraction: float | None = None
    cpu_seconds_per_sample: float | None = None  # all processes and threads of the tool, timed batches


@dataclass
class LoaderBenchmark:
    configuration: str
    workers: int
    batches: int
    fastseg: LoaderRun
    nnunet: LoaderRun | None = None

    @property
    def ratio(self) -> float | None:
        return self.fastseg.samples_per_second / self.nnunet.samples_per_second if self.nnunet else None


def _fastseg_main(args: argparse.Namespace) -> int:
    import torch

    from fastseg.benchmark.measure import tree_cpu_seconds
    from fastseg.data.loader import make_training_loader
    from fastseg.preprocess.storage import case_identifiers
    from fastseg.plan.plans import resolve_configuration

    torch.set_num_threads(1)
    work = Path(args.fastseg)
    plans = json.loads((work / "plans.json").read_text())
    folder = work / resolve_configuration(plans, args.configuration)["data_identifier"]
    loader = make_training_loader(work, args.configuration, case_identifiers(folder), workers=args.workers, seed=0)
    try:
        for _ in range(WARMUP_BATCHES):
            data, targets = next(loader)
        cpu_start, start = tree_cpu_seconds(os.getpid()), time.perf_counter()
        for _ in range(args.batches):
            data, targets = next(loader)
        seconds = time.perf_counter() - start
        cpu_seconds = tree_cpu_seconds(os.getpid()) - cpu_start
        wait = loader.stats.wait_fraction
    finally:
        loader.close()
    Path(args.json).write_text(json.dumps({
        "batches": args.batches, "batch_size": loader.batch_size, "seconds": seconds, "cpu_seconds": cpu_seconds,
        "samples_per_second": args.batches * loader.batch_size / seconds, "data_shape": list(data.shape),
        "target_shapes": [list(t.shape) for t in targets], "wait_fraction": wait,
    }))
    return 0


def nnunet_reference(work_dir: Path, configuration: str, workers: int, env: dict) -> Path:
    """nnU-Net's preprocessed folder of the work folder's dataset and plans (made by
    `nnUNetv2_preprocess` the first time, kept in WORK/.nnunet_reference/)."""
    plans = json.loads((work_dir / "plans.json").read_text())
    source = json.loads((work_dir / "source.json").read_text())
    name, plans_name = plans["dataset_name"], plans.get("plans_name", "nnUNetPlans")
    m = re.match(r"^Dataset(\d{3})_", name)
    if not m:
        raise BenchmarkError(f"nnU-Net needs a DatasetXXX_Name dataset; the plans name {name!r}")
    from fastseg.plan.plans import resolve_configuration

    data_identifier = resolve_configuration(plans, configuration)["data_identifier"]
    root = work_dir / ".nnunet_reference"
    raw, pre = root / "nnUNet_raw" / name, root / "nnUNet_preprocessed" / name
    marker = pre / f".{data_identifier}.done"
    if marker.is_file():
        return pre
    raw.parent.mkdir(parents=True, exist_ok=True)
    if not raw.exists():
        raw.symlink_to(Path(source["raw_dataset_dir"]).resolve(), target_is_directory=True)
    pre.mkdir(parents=True, exist_ok=True)
    shutil.copy(work_dir / "plans.json", pre / f"{plans_name}.json")
    for f in ("dataset.json", "dataset_fingerprint.json"):
        shutil.copy(work_dir / f, pre / f)
    code = ("import sys; from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import preprocess_entry; "
            f"sys.argv = ['nnUNetv2_preprocess', '-d', '{int(m[1])}', '-plans_name', '{plans_name}', '-c', '{configuration}', "
            f"'-np', '{workers}']; preprocess_entry()")
    nn_env = {**env, "nnUNet_raw": str(root / "nnUNet_raw"), "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
              "nnUNet_results": str(root / "nnUNet_results")}
    run = subprocess.run([sys.executable, "-c", code], env=nn_env, capture_output=True, text=True, encoding="utf-8",
                         errors="replace")
    if run.returncode != 0:
        raise BenchmarkError(f"nnUNetv2_preprocess failed: {run.stderr[-2000:]}")
    marker.write_text("")
    return pre


def _run(tool: str, command: list[str], out: Path, env: dict, timeout: float) -> LoaderRun:
    from fastseg.benchmark.measure import run_measured

    measured = run_measured(command, env=env, timeout=timeout)
    if measured.returncode != 0 or not out.is_file():
        raise BenchmarkError(f"{tool} failed (exit {measured.returncode}): {measured.stderr[-2000:]}")
    result = json.loads(out.read_text())
    cpu = result.get("cpu_seconds")
    per_sample = cpu / (result["batches"] * result["batch_size"]) if cpu else None
    return LoaderRun(tool, result["samples_per_second"], result["batch_size"], result["data_shape"],
                     result["target_shapes"], measured.peak_pss_bytes, result.get("wait_fraction"), per_sample)


def benchmark_loader(work_dir: str | Path, configuration: str, *, workers: int = 2, batches: int = 20,
                     against_nnunet: bool = False, env: dict | None = None, timeout: float = 3600) -> LoaderBenchmark:
    """Times fastseg's loader (and nnU-Net's) on a work folder's preprocessed configuration."""
    work_dir = Path(work_dir)
    env = dict(env if env is not None else os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        ours_json = Path(tmp) / "fastseg.json"
        ours = _run("fastseg", [sys.executable, "-m", "fastseg.benchmark.loader", "--fastseg", str(work_dir), "-c", configuration,
                                "--workers", str(workers), "--batches", str(batches), "--json", str(ours_json)], ours_json, env, timeout)
        result = LoaderBenchmark(configuration, workers, batches, ours)
        if against_nnunet:
            pre = nnunet_reference(work_dir, configuration, workers, env)
            theirs_json = Path(tmp) / "nnunet.json"
            result.nnunet = _run("nnunet", [sys.executable, "-m", "fastseg.benchmark.nnunet_loader", "--preprocessed", str(pre),
                                            "-c", configuration, "--workers", str(workers), "--batches", str(batches),
                                            "--json", str(theirs_json)], theirs_json, env, timeout)
    return result


def format_report(result: LoaderBenchmark) -> str:
    def mib(n: int | None) -> str:
        return f"{n / 2**20:,.0f} MiB" if n else "-"

    lines = [f"training batches, {result.configuration}, {result.workers} workers each, {result.batches} batches after "
             f"{WARMUP_BATCHES} warm-up", f"  batch {result.fastseg.batch_size} x {result.fastseg.data_shape[1:]}, "
             f"targets {result.fastseg.target_shapes}"]
    def cpu(run: LoaderRun) -> str:
        return f"{run.cpu_seconds_per_sample * 1e3:,.1f} CPU ms/sample" if run.cpu_seconds_per_sample else "-"

    lines.append(f"  fastseg   {result.fastseg.samples_per_second:8.2f} samples/s   peak PSS "
                 f"{mib(result.fastseg.peak_pss_bytes)}   {cpu(result.fastseg)}")
    if result.nnunet:
        lines.append(f"  nnU-Net   {result.nnunet.samples_per_second:8.2f} samples/s   peak PSS "
                     f"{mib(result.nnunet.peak_pss_bytes)}   {cpu(result.nnunet)}")
        lines.append(f"  fastseg / nnU-Net: {result.ratio:.2f}x the samples per second")
        if result.fastseg.cpu_seconds_per_sample and result.nnunet.cpu_seconds_per_sample:
            lines.append(f"  nnU-Net / fastseg: {result.nnunet.cpu_seconds_per_sample / result.fastseg.cpu_seconds_per_sample:.2f}x "
                         "the CPU time per sample (all threads and processes; less sensitive to other load)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one tool's side of the loader benchmark")
    parser.add_argument("--fastseg", required=True, metavar="WORK_DIR")
    parser.add_argument("-c", "--configuration", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--json", required=True)
    return _fastseg_main(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
