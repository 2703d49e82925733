"""What `fastseg benchmark RAW_DATASET` found, per stage and tool, and the table it prints.

`StageResult` holds one stage: each tool's wall time, throughput and peak memory (`ToolResult`),
the agreement of their outputs, notes; its ratios are fastseg / nnU-Net (throughput: above 1,
fastseg is faster; memory: below 1, fastseg needs less). `format_report` lays the stages out as
two rows each (fastseg, nnU-Net) and a ratio row, then the notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ToolResult:
    """One tool's run of a stage.

    Attributes:
        wall_s: wall time, seconds (loader: the timed batches only; train: the whole training command).
        throughput: work per second, in `unit`.
        unit: "cases/s", "samples/s" or "iterations/s".
        peak_pss_bytes: peak summed PSS of its process tree (None where unmeasurable).
    """

    wall_s: float
    throughput: float
    unit: str
    peak_pss_bytes: int | None

    def as_json(self) -> dict:
        return {"wall_s": self.wall_s, "throughput": self.throughput, "unit": self.unit, "peak_pss_bytes": self.peak_pss_bytes}


@dataclass
class StageResult:
    """One stage of the benchmark.

    Attributes:
        name: the stage.
        fastseg, nnunet: each tool's run (None: not run).
        agreement: the comparison of their outputs: "ok" (True, False, or None where nothing is
            compared), "summary" (one line) and the comparison's own fields.
        notes: what else the table should say (what was compared, what was prepared untimed).
        skipped: why the stage did not run (None: it ran).
        error: why it failed (None: it did not).
        details: the stage's own benchmark record (loader, train, predict).
    """

    name: str
    fastseg: ToolResult | None = None
    nnunet: ToolResult | None = None
    agreement: dict | None = None
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    error: str | None = None
    details: dict | None = None

    @property
    def throughput_ratio(self) -> float | None:
        """fastseg's throughput / nnU-Net's (= nnU-Net's time / fastseg's for the same work)."""
        if self.fastseg and self.nnunet and self.nnunet.throughput > 0:
            return self.fastseg.throughput / self.nnunet.throughput
        return None

    @property
    def memory_ratio(self) -> float | None:
        """fastseg's peak PSS / nnU-Net's."""
        if self.fastseg and self.nnunet and self.fastseg.peak_pss_bytes and self.nnunet.peak_pss_bytes:
            return self.fastseg.peak_pss_bytes / self.nnunet.peak_pss_bytes
        return None

    def as_json(self) -> dict:
        return {
            "fastseg": self.fastseg.as_json() if self.fastseg else None,
            "nnunet": self.nnunet.as_json() if self.nnunet else None,
            "throughput_ratio": self.throughput_ratio, "memory_ratio": self.memory_ratio,
            "agreement": self.agreement, "notes": self.notes, "skipped": self.skipped, "error": self.error,
            "details": self.details,
        }


@dataclass
class BenchmarkReport:
    """The result of `run_benchmark`: its settings, each stage, and the files written."""

    settings: dict
    stages: list[StageResult]
    json_path: Path | None = None
    chart_path: Path | None = None

    @property
    def failed(self) -> StageResult | None:
        return next((s for s in self.stages if s.error), None)

    def as_json(self) -> dict:
        return {"settings": self.settings, "stages": {s.name: s.as_json() for s in self.stages}}


def _mib(n: int | None) -> str:
    return "-" if not n else f"{n / 2**20:,.0f} MiB"


def _seconds(s: float) -> str:
    return f"{s:.2f} s" if s < 100 else f"{s:.0f} s"


def format_report(report: BenchmarkReport) -> str:
    """The table `fastseg benchmark RAW_DATASET` prints: two rows per stage (fastseg, nnU-Net) and a
    ratio row, then the notes of each stage."""
    s = report.settings
    versions = ", ".join(f"{k} {v}" for k, v in s["versions"].items())
    m = s["machine"]
    lines = [
        f"fastseg benchmark: {s['nnunet_dataset']} ({s['training_cases']} training cases), configuration "
        f"{s['configuration'] or '-'}, {s['workers']} worker(s) each",
        f"{versions}; Python {m['python']}; {m['usable_cpus']} usable CPU(s): {m['cpu']}",
        "",
        f"{'stage':<12}{'':<9}{'wall time':>11}{'throughput':>22}{'peak PSS':>12}   agreement",
    ]
    for stage in report.stages:
        if stage.skipped:
            lines.append(f"{stage.name:<12}skipped: {stage.skipped}")
            continue
        if stage.error and stage.fastseg is None:
            lines.append(f"{stage.name:<12}failed (see below)")
            continue
        agreement = stage.agreement or {}
        verdict = {True: "", False: "DIFFERS: ", None: ""}[agreement.get("ok")] if agreement else ""
        for i, (tool, run) in enumerate((("fastseg", stage.fastseg), ("nnU-Net", stage.nnunet))):
            if run is None:
                continue
            text = (f"{stage.name if i == 0 else '':<12}{tool:<9}{_seconds(run.wall_s):>11}"
                    f"{f'{run.throughput:.3g} {run.unit}':>22}{_mib(run.peak_pss_bytes):>12}")
            if i == 0 and agreement:
                text += f"   {verdict}{agreement.get('summary', '')}"
            lines.append(text)
        if stage.throughput_ratio is not None:
            memory = f"{stage.memory_ratio:.2f}x" if stage.memory_ratio is not None else "-"
            lines.append(f"{'':<12}{'ratio':<9}{'':>11}{f'{stage.throughput_ratio:.2f}x':>22}{memory:>12}")
    if any(stage.throughput_ratio is not None for stage in report.stages):
        lines += ["", "ratio: fastseg / nnU-Net; throughput above 1: fastseg faster; peak PSS below 1: fastseg smaller "
                  "(PSS summed over each tool's processes)"]
    notes = [(st.name, n) for st in report.stages for n in st.notes] + [
        (st.name, f"FAILED: {st.error}") for st in report.stages if st.error]
    if notes:
        lines.append("")
        lines += [f"{name}: {note}" for name, note in notes]
    if report.json_path:
        lines.append("")
        lines.append(f"wrote {report.json_path}" + (f" and {report.chart_path}" if report.chart_path else ""))
    return "\n".join(lines)
