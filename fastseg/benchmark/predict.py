"""`fastseg benchmark predict`: fastseg's predictor beside nnU-Net's on the same model and images.

Both tools run as separate processes, started the same way, on the same input folder, model folder,
folds, step size and test-time mirroring, with the same torch thread count (and, with `cpus`, on
the same CPUs):

- fastseg: `fastseg predict ... --threads T` (its pipeline: a read+preprocess
  thread, the network, an export+write thread);
- nnU-Net: `nnUNetv2_predict_from_modelfolder`'s own code path (`fastseg.benchmark.nnunet_predict`:
  the same predictor and worker pools, `-npp`/`-nps` processes, torch pinned to T threads, and a
  clock around its three stages).

Measured per tool: wall time from process start to exit (reading and writing included), the peak
summed PSS of its process tree (`fastseg.benchmark.measure`), and the time of each stage summed
over the cases (the stages overlap in both tools, so they add up to more than the wall time).
Then the outputs are compared case by case: equal voxels, and identical geometry (spacing, origin,
direction).
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fastseg.benchmark.measure import Measured, run_measured
from fastseg.predict.precision import resolve_precision

#: The stage names both tools are reported with.
STAGES = ("preprocess", "network", "export")
_FASTSEG_TIMES = re.compile(
    r"read\+preprocess (?P<preprocess>[\d.]+) s, network (?P<network>[\d.]+) s, export\+write (?P<export>[\d.]+) s"
)


class BenchmarkError(RuntimeError):
    """A tool failed or is missing; the message says which and shows the end of its output."""


@dataclass
class ToolRun:
    """One tool's timed runs (medians over the rounds).

    Attributes:
        tool: "fastseg" or "nnunet".
        wall_s: median wall time, seconds.
        walls: every round's wall time.
        peak_pss_bytes: the largest peak PSS of the rounds (None where unmeasurable).
        stages: median seconds per stage ("preprocess", "network", "export"), summed over cases.
        output_dir: where the last round wrote.
    """

    tool: str
    wall_s: float
    walls: list[float]
    peak_pss_bytes: int | None
    stages: dict[str, float]
    output_dir: Path


@dataclass
class Agreement:
    """fastseg's outputs against nnU-Net's.

    Attributes:
        cases: cases compared.
        voxels: voxels compared.
        equal_fraction: fraction of all voxels with the same label.
        worst_case: (case, its fraction of equal voxels) for the case that agrees least.
        geometry_mismatches: cases whose shape, spacing, origin or direction differ.
        missing: output files one tool wrote and the other did not.
    """

    cases: int
    voxels: int
    equal_fraction: float
    worst_case: tuple[str, float]
    geometry_mismatches: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


@dataclass
class PredictBenchmark:
    """The result of `benchmark_predict`."""

    settings: dict
    fastseg: ToolRun
    nnunet: ToolRun | None = None
    agreement: Agreement | None = None

    def as_json(self) -> dict:
        def tool(run: ToolRun | None) -> dict | None:
            if run is None:
                return None
            return {"wall_s": run.wall_s, "walls_s": run.walls, "peak_pss_bytes": run.peak_pss_bytes, "stages_s": run.stages}

        out = {"settings": self.settings, "fastseg": tool(self.fastseg), "nnunet": tool(self.nnunet)}
        if self.nnunet is not None:
            out["wall_ratio"] = self.nnunet.wall_s / self.fastseg.wall_s
            if self.nnunet.peak_pss_bytes and self.fastseg.peak_pss_bytes:
                out["memory_ratio"] = self.fastseg.peak_pss_bytes / self.nnunet.peak_pss_bytes
        if self.agreement is not None:
            a = self.agreement
            out["agreement"] = {
                "cases": a.cases, "voxels": a.voxels, "equal_fraction": a.equal_fraction,
                "worst_case": list(a.worst_case), "geometry_mismatches": a.geometry_mismatches, "missing": a.missing,
            }
        return out


def _tail(measured: Measured) -> str:
    return (measured.stdout[-1500:] + "\n" + measured.stderr[-2500:]).strip()


def _environment(threads: int) -> dict[str, str]:
    """This environment with every thread pool a tool may use pinned to `threads`, and without the
    working folder on the import path (Python >= 3.11; the tools also run in the output folder)."""
    env = dict(os.environ)
    env["PYTHONSAFEPATH"] = "1"
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    return env


def _fastseg_command(model, inputs, out, folds, tta, step_size, threads, checkpoint, precision="auto") -> list[str]:
    script = Path(sys.executable).with_name("fastseg")  # the console script, as a user runs it
    start = [str(script)] if script.is_file() else [sys.executable, "-m", "fastseg.cli"]
    cmd = [*start, "predict", "-m", str(model), "-i", str(inputs), "-o", str(out),
           "-f", *[str(f) for f in folds], "--step-size", str(step_size), "--threads", str(threads),
           "--checkpoint", checkpoint, "--precision", precision]
    return cmd + ([] if tta else ["--no-tta"])


def _nnunet_command(model, inputs, out, folds, tta, step_size, threads, processes, checkpoint, timings) -> list[str]:
    chk = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}[checkpoint]
    cmd = [sys.executable, "-m", "fastseg.benchmark.nnunet_predict", "--timings", str(timings), "--threads", str(threads),
           "-i", str(inputs), "-o", str(out), "-m", str(model), "-f", *[str(f) for f in folds],
           "-step_size", str(step_size), "-npp", str(processes), "-nps", str(processes), "-chk", chk]
    return cmd + ([] if tta else ["--disable_tta"])


def _nnunet_stages(timings: Path) -> dict[str, float]:
    totals = dict.fromkeys(STAGES, 0.0)
    if timings.is_file():
        for line in timings.read_text().splitlines():
            stage, _, seconds = line.partition(" ")
            if stage in totals:
                totals[stage] += float(seconds)
    return totals


def _run_tool(tool: str, make_command, out_root: Path, rounds: int, warmup: int, env, cpus, timeout) -> ToolRun:
    walls, peaks, stage_rounds = [], [], []
    out = out_root / tool
    for i in range(warmup + rounds):
        shutil.rmtree(out, ignore_errors=True)
        timings = out_root / f".{tool}-timings-{i}.txt"
        timings.unlink(missing_ok=True)
        measured = run_measured(make_command(out, timings), cwd=out_root, env=env, cpus=cpus, timeout=timeout)
        if measured.returncode != 0:
            raise BenchmarkError(f"{tool} failed (exit status {measured.returncode}):\n{_tail(measured)}")
        if tool == "fastseg":
            found = _FASTSEG_TIMES.search(measured.stdout)
            if found is None:
                raise BenchmarkError(f"fastseg predict printed no stage times:\n{_tail(measured)}")
            stages = {k: float(v) for k, v in found.groupdict().items()}
        else:
            stages = _nnunet_stages(timings)
        timings.unlink(missing_ok=True)
        if i >= warmup:
            walls.append(measured.wall_s)
            peaks.append(measured.peak_pss_bytes)
            stage_rounds.append(stages)
    peak = max((p for p in peaks if p is not None), default=None)
    stages = {k: statistics.median(r[k] for r in stage_rounds) for k in STAGES}
    return ToolRun(tool, statistics.median(walls), walls, peak, stages, out)


def compare_outputs(ours: Path, reference: Path, file_ending: str) -> Agreement:
    """Label and geometry agreement of two folders of segmentations (matched by file name)."""
    import numpy as np

    from fastseg import io as fio

    def files(folder: Path) -> dict[str, Path]:
        return {p.name: p for p in folder.iterdir() if p.name.endswith(file_ending) and not p.name.startswith(".")}

    a, b = files(ours), files(reference)
    missing = sorted(set(a) ^ set(b))
    equal = total = 0
    worst = ("", 1.0)
    mismatched = []
    for name in sorted(set(a) & set(b)):
        seg_a, props_a = fio.read_seg(a[name])
        seg_b, props_b = fio.read_seg(b[name])
        geo_a, geo_b = props_a.get("sitk_stuff", {}), props_b.get("sitk_stuff", {})
        same_geometry = seg_a.shape == seg_b.shape and all(
            np.allclose(geo_a.get(k, ()), geo_b.get(k, ()), rtol=0, atol=1e-6) for k in ("spacing", "origin", "direction")
        ) and np.allclose(props_a["spacing"], props_b["spacing"], rtol=0, atol=1e-6)
        if not same_geometry:
            mismatched.append(name)
            continue
        n_equal = int(np.count_nonzero(seg_a == seg_b))
        equal += n_equal
        total += seg_a.size
        fraction = n_equal / max(1, seg_a.size)
        if fraction <= worst[1]:
            worst = (name, fraction)
    compared = len(set(a) & set(b)) - len(mismatched)
    return Agreement(compared, total, equal / total if total else float("nan"), worst, mismatched, missing)


def benchmark_predict(
    model: str | Path,
    inputs: str | Path,
    *,
    folds: Sequence[str] = ("0",),
    tta: bool = True,
    step_size: float = 0.5,
    checkpoint: str = "final",
    against_nnunet: bool = False,
    threads: int | None = None,
    processes: int = 2,
    cpus: set[int] | None = None,
    rounds: int = 1,
    warmup: int = 0,
    work_dir: str | Path | None = None,
    timeout: float | None = None,
    precision: str = "auto",
) -> PredictBenchmark:
    """Runs fastseg (and nnU-Net) on the same model and images and measures both.

    Args:
        model: the model folder.
        inputs: a folder of images in nnU-Net's naming.
        folds: folds to ensemble (default: fold 0).
        tta: mirror test-time augmentation (default True).
        step_size: sliding-window step (default 0.5).
        checkpoint: "final" (default) or "best".
        against_nnunet: also run nnU-Net's predictor (needs nnunetv2).
        threads: torch (and OpenMP/BLAS) threads of both tools; default: the CPUs this process may use.
        processes: nnU-Net's preprocessing and export processes (`-npp`, `-nps`; default 2).
        cpus: CPUs both tools may run on (default: all).
        rounds: timed runs per tool (default 1); the medians are reported.
        warmup: untimed runs per tool before them (default 0).
        work_dir: where the outputs go (`<work_dir>/fastseg`, `<work_dir>/nnunet`); default: a
            temporary folder, removed afterwards.
        timeout: seconds a single run may take.
        precision: fastseg's `--precision` (default "auto": bf16 autocast on CPUs with AMX tiles);
            nnU-Net runs float32 on the CPU.

    Raises:
        BenchmarkError: a tool failed, or nnunetv2 is not installed.
        ValueError: bad arguments.
    """
    if checkpoint not in ("final", "best"):
        raise ValueError(f"checkpoint must be 'final' or 'best', got {checkpoint!r}")
    if rounds < 1 or warmup < 0 or processes < 1:
        raise ValueError(f"rounds >= 1, warmup >= 0 and processes >= 1 are needed, got {rounds}, {warmup}, {processes}")
    model, inputs = Path(model).resolve(), Path(inputs).resolve()
    if not model.is_dir():
        raise ValueError(f"model folder {model} not found")
    if not inputs.is_dir():
        raise ValueError(f"-i must be a folder of images in nnU-Net's naming (case_0000.nii.gz ...); {inputs} is not a folder")
    if against_nnunet:
        try:
            import nnunetv2  # noqa: F401
        except ImportError:
            raise BenchmarkError("--against nnunet needs nnU-Net: pip install nnunetv2") from None
    available = len(cpus) if cpus else len(os.sched_getaffinity(0))
    threads = threads or available
    env = _environment(threads)
    settings = {
        "model": str(model), "inputs": str(inputs), "folds": list(folds), "tta": tta, "step_size": step_size,
        "checkpoint": checkpoint, "threads": threads, "nnunet_processes": processes,
        "fastseg_precision": resolve_precision(precision, "cpu"),
        "cpus": sorted(cpus) if cpus else None, "rounds": rounds, "warmup": warmup,
        "cases": len({p.name.rsplit("_", 1)[0] for p in inputs.iterdir() if not p.name.startswith(".")}),
    }
    temporary = work_dir is None
    root = Path(tempfile.mkdtemp(prefix="fastseg-bench-")) if temporary else Path(work_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        ours = _run_tool(
            "fastseg", lambda out, _: _fastseg_command(model, inputs, out, folds, tta, step_size, threads, checkpoint, precision),
            root, rounds, warmup, env, cpus, timeout,
        )
        result = PredictBenchmark(settings, ours)
        if against_nnunet:
            result.nnunet = _run_tool(
                "nnunet",
                lambda out, timings: _nnunet_command(model, inputs, out, folds, tta, step_size, threads, processes, checkpoint, timings),
                root, rounds, warmup, env, cpus, timeout,
            )
            import json

            ending = json.loads((model / "dataset.json").read_text()).get("file_ending", ".nii.gz")
            result.agreement = compare_outputs(ours.output_dir, result.nnunet.output_dir, ending)
        return result
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MiB"


def format_report(result: PredictBenchmark) -> str:
    """The side-by-side table `fastseg benchmark predict` prints."""
    s = result.settings
    lines = [
        f"predict: {s['cases']} case(s), folds {' '.join(s['folds'])}, TTA {'on' if s['tta'] else 'off'}, step {s['step_size']}, "
        f"{s['threads']} torch thread(s) each"
        + (f", CPUs {s['cpus']}" if s["cpus"] else "")
        + f"; fastseg's network in {s.get('fastseg_precision', 'fp32')}, nnU-Net's in fp32"
        + f"; nnU-Net with {s['nnunet_processes']} preprocessing + {s['nnunet_processes']} export processes; "
        f"median of {s['rounds']} round(s)" + (f" after {s['warmup']} warm-up" if s["warmup"] else ""),
        "",
        f"{'':24}{'fastseg':>14}{'nnU-Net':>14}{'ratio':>10}",
    ]
    ours, ref = result.fastseg, result.nnunet

    def row(name: str, a: float | None, b: float | None, fmt, ratio: float | None) -> str:
        return f"{name:24}{fmt(a):>14}{fmt(b) if ref else '-':>14}{(f'{ratio:.2f}x' if ratio else '-'):>10}"

    secs = lambda v: "-" if v is None else f"{v:.2f} s"  # noqa: E731
    lines.append(row("wall time", ours.wall_s, ref.wall_s if ref else None, secs, ref.wall_s / ours.wall_s if ref else None))
    mem_ratio = None
    if ref and ref.peak_pss_bytes and ours.peak_pss_bytes:
        mem_ratio = ours.peak_pss_bytes / ref.peak_pss_bytes
    lines.append(row("peak memory (PSS)", ours.peak_pss_bytes, ref.peak_pss_bytes if ref else None, _mib, None)
                 + (f"  (fastseg uses {mem_ratio:.2f} of nnU-Net's)" if mem_ratio else ""))
    for stage, label in zip(STAGES, ("  read + preprocess", "  network", "  export + write")):
        a, b = ours.stages[stage], ref.stages[stage] if ref else None
        lines.append(row(label, a, b, secs, (b / a) if (b and a) else None))
    lines.append("  (stage times are summed over cases; the stages overlap in both tools)")
    if result.agreement is not None:
        ag = result.agreement
        lines.append("")
        lines.append(
            f"agreement: {ag.equal_fraction * 100:.3f} % of {ag.voxels:,} voxels equal over {ag.cases} case(s) "
            f"(least: {ag.worst_case[0]} {ag.worst_case[1] * 100:.3f} %); geometry "
            + ("identical" if not ag.geometry_mismatches else f"differs in {', '.join(ag.geometry_mismatches)}")
            + (f"; only one tool wrote {', '.join(ag.missing)}" if ag.missing else "")
        )
    return "\n".join(lines)
