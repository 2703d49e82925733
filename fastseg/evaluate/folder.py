"""Scoring a folder of predictions against a folder of references: nnU-Net's `summary.json`.

Cases are matched by file name (the dataset's file ending). A case on only one side, or an empty
folder, is an error that names the files, never a case silently dropped; so is a pair whose shapes
or spacings differ. Labels (or regions, for region-based datasets) and the ignore label come from
dataset.json, as nnU-Net's `compute_metrics_on_folder2` takes them. Cases are scored in worker
processes (`fastseg.runtime.workers`), each read once and counted in one pass
(`fastseg.evaluate.metrics`).

`summary.json` has nnU-Net's layout: `metric_per_case` (reference_file, prediction_file, metrics
per label or region), `mean` (per label or region: the mean over cases, NaN cases left out) and
`foreground_mean` (the mean over labels or regions of `mean`, label 0 left out); keys are
`str(label)` or `str(region tuple)`, sorted, as nnU-Net writes them, so its `load_summary_json`
reads the file. Written atomically: on any error nothing is written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastseg.evaluate.metrics import METRICS, LabelOrRegion, confusion_matrix, metrics_from_confusion

_SPACING_TOLERANCE = 1e-4  # relative; spacings that differ by more are different grids


def load_dataset_json(path: str | Path) -> dict:
    """A dataset.json file's content, checked to have a `labels` object.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, or no `labels` object.
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset.json {path} not found; give the dataset's dataset.json")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(content, dict) or not isinstance(content.get("labels"), dict):
        raise ValueError(f"{path} has no 'labels' object; is it a dataset.json?")
    return content


def labels_to_score(dataset_json: Mapping[str, Any]) -> tuple[list[LabelOrRegion], int | None]:
    """(foreground labels, or regions for region-based datasets; the ignore label) of a dataset.json."""
    from fastseg.io.labels import LabelSpec

    spec = LabelSpec.from_json(dataset_json.get("labels", {}), dataset_json.get("regions_class_order"))
    if spec.problems:
        raise ValueError(f"dataset.json: {'; '.join(spec.problems)}")
    return (list(spec.regions) if spec.has_regions else list(spec.foreground_labels)), spec.ignore_label


def read_pair(reference: str | Path, prediction: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(reference, prediction, the prediction's properties) of one case, each (1, z, y, x).

    Raises:
        ValueError: the shapes or spacings differ (naming both files).
    """
    from fastseg import io as fio

    ref, ref_props = fio.read_seg(Path(reference))
    pred, pred_props = fio.read_seg(Path(prediction))
    if ref.shape != pred.shape:
        raise ValueError(f"{prediction} has shape {pred.shape[1:]} but its reference {reference} has {ref.shape[1:]}")
    a, b = np.asarray(ref_props["spacing"], float), np.asarray(pred_props["spacing"], float)
    if a.shape != b.shape or not np.allclose(a, b, rtol=_SPACING_TOLERANCE, atol=0):
        raise ValueError(f"{prediction} has spacing {b.tolist()} but its reference {reference} has {a.tolist()}")
    return ref, pred, pred_props


def score_arrays(
    ref: np.ndarray,
    pred: np.ndarray,
    labels_or_regions: Sequence[LabelOrRegion],
    ignore_label: int | None,
    size: int,
    *,
    spacing: Sequence[float] | None = None,
    tolerance: float | None = None,
    names: tuple[str, str] = ("prediction", "reference"),
) -> dict:
    """nnU-Net's metrics of each label or region of one case (and the surface metrics at
    `tolerance` mm on `spacing`, when a tolerance is given)."""
    try:
        counts = confusion_matrix(ref, pred, size)
    except ValueError as err:
        raise ValueError(f"{names[0]} / {names[1]}: {err}; are these this dataset's segmentations?") from None
    scored = [tuple(r) if isinstance(r, list) else r for r in labels_or_regions]
    metrics = metrics_from_confusion(counts, scored, ignore_label)
    if tolerance is not None:
        from fastseg.evaluate.surface import label_surface_metrics

        surface = label_surface_metrics(ref[0], pred[0], [float(v) for v in spacing], tolerance, scored, ignore_label, size)
        for r in scored:
            metrics[r].update(surface[r])
    return metrics


def score_case(job: tuple) -> dict:
    """One case's entry of `metric_per_case` (a worker's job: reference, prediction, labels or
    regions, ignore label, confusion matrix size, NSD tolerance in mm or None for no surface metrics)."""
    reference, prediction, labels_or_regions, ignore_label, size, tolerance = job
    ref, pred, props = read_pair(reference, prediction)
    metrics = score_arrays(
        ref, pred, labels_or_regions, ignore_label, size, spacing=props["spacing"], tolerance=tolerance,
        names=(prediction, reference),
    )
    return {"reference_file": reference, "prediction_file": prediction, "metrics": metrics}


def _key(label_or_region: LabelOrRegion) -> str:
    return str(label_or_region)


def _matched_files(pred_dir: Path, ref_dir: Path, file_ending: str, cases: Sequence[str] | None = None) -> list[str]:
    def names(folder: Path) -> set[str]:
        if not folder.is_dir():
            raise FileNotFoundError(f"folder {folder} not found")
        return {p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(file_ending) and not p.name.startswith(".")}

    pred, ref = names(pred_dir), names(ref_dir)
    if cases is not None:  # only these cases, on both sides
        wanted = {f"{c}{file_ending}" for c in cases}
        pred, ref = pred & wanted, ref & wanted
    if not pred:
        raise ValueError(f"{pred_dir} holds no {file_ending} predictions")
    problems = []
    if pred - ref:
        problems.append(f"predictions without a reference in {ref_dir}: {', '.join(sorted(pred - ref))}")
    if ref - pred:
        problems.append(f"references without a prediction in {pred_dir}: {', '.join(sorted(ref - pred))}")
    if problems:
        raise ValueError("; ".join(problems))
    return sorted(pred)


def summarize(per_case: Sequence[dict], labels_or_regions: Sequence[LabelOrRegion]) -> dict:
    """`mean` and `foreground_mean` over the cases, nnU-Net's way (nanmean over cases, mean over labels)."""
    names = list(per_case[0]["metrics"][labels_or_regions[0]]) if per_case else list(METRICS)
    means = {}
    for r in labels_or_regions:
        means[r] = {}
        for m in names:
            values = np.array([case["metrics"][r][m] for case in per_case], dtype=float)
            means[r][m] = float(np.nanmean(values)) if not np.all(np.isnan(values)) else float("nan")
    foreground = {m: float(np.mean([means[r][m] for r in labels_or_regions if r != 0])) for m in names}
    return {"metric_per_case": list(per_case), "mean": means, "foreground_mean": foreground}


def to_json(summary: Mapping[str, Any]) -> dict:
    """The summary with nnU-Net's string keys (`str(label)`, `str(region)`)."""
    return {
        "metric_per_case": [
            {**case, "metrics": {_key(k): v for k, v in case["metrics"].items()}} for case in summary["metric_per_case"]
        ],
        "mean": {_key(k): v for k, v in summary["mean"].items()},
        "foreground_mean": dict(summary["foreground_mean"]),
    }


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    dataset_json: Mapping[str, Any],
    *,
    output: str | Path | None = None,
    num_processes: int | None = None,
    progress: bool | None = None,
    nsd_tolerance_mm: float | None = None,
    cases: Sequence[str] | None = None,
    map_cases: Callable[..., list] | None = None,
) -> dict:
    """Scores every prediction against its reference.

    Args:
        pred_dir: folder of predicted segmentations.
        ref_dir: folder of reference segmentations (the same file names).
        dataset_json: the dataset's dataset.json (labels, regions, ignore label, file_ending).
        output: where to write summary.json (atomically); None writes nothing.
        num_processes: worker processes (default: the cores).
        progress: a progress bar; None: only when stderr is a terminal.
        nsd_tolerance_mm: also compute HD95, ASSD and NSD at this tolerance (`fastseg.evaluate.surface`),
            as extra keys beside nnU-Net's; None (default): overlap metrics only.
        cases: score only these case identifiers (both folders must hold them); None (default):
            every file of both folders.
        map_cases: what scores the cases, with `fastseg.runtime.workers.parallel_map`'s signature;
            None (default): worker processes on this machine
            (`fastseg.distributed.evaluate.ClusterMap` scores them on a Ray cluster).

    Returns:
        The summary, with int / tuple keys (`to_json` gives nnU-Net's string keys).

    Raises:
        FileNotFoundError: a folder is missing.
        ValueError: no predictions, cases on one side only, shapes or spacings that differ, labels
            outside dataset.json's, a bad dataset.json.
    """
    from fastseg.io.atomic import write_json_atomic
    from fastseg.runtime.workers import default_num_workers, parallel_map

    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    labels_or_regions, ignore = labels_to_score(dataset_json)
    ending = dataset_json.get("file_ending", ".nii.gz")
    names = _matched_files(pred_dir, ref_dir, ending, cases)
    values = [v for r in labels_or_regions for v in (r if isinstance(r, tuple) else (r,))] + [0]
    size = max(values + ([ignore] if ignore is not None else [])) + 1
    if nsd_tolerance_mm is not None and not nsd_tolerance_mm >= 0:
        raise ValueError(f"the NSD tolerance must be >= 0 mm, got {nsd_tolerance_mm}")
    jobs = [(str(ref_dir / n), str(pred_dir / n), labels_or_regions, ignore, size, nsd_tolerance_mm) for n in names]
    per_case = (map_cases or parallel_map)(score_case, jobs, num_processes or default_num_workers(), desc="Evaluating", progress=progress)
    summary = summarize(per_case, labels_or_regions)
    if output is not None:
        write_json_atomic(to_json(summary), Path(output), sort_keys=True)
    return summary


def format_table(summary: Mapping[str, Any], names: Mapping[LabelOrRegion, str] | None = None) -> str:
    """The per-label (region) means as a table for the terminal."""
    names = names or {}
    surface = any("HD95" in m for m in summary["mean"].values())
    extra = ["HD95", "ASSD", "NSD"] if surface else []
    rows = [f"{'label':<24}{'Dice':>8}{'IoU':>8}" + "".join(f"{e:>9}" for e in extra) + f"{'n_ref':>12}{'n_pred':>12}"]

    def fmt(v: float, width: int = 8) -> str:
        text = "nan" if isinstance(v, float) and math.isnan(v) else f"{v:.4f}" if abs(v) < 1e4 else f"{v:.3g}"
        return f"{text:>{width}}"

    for r, m in summary["mean"].items():
        label = f"{names.get(r, '')} ({_key(r)})".strip()
        rows.append(f"{label:<24}{fmt(m['Dice'])}{fmt(m['IoU'])}" + "".join(fmt(m[e], 9) for e in extra)
                    + f"{m['n_ref']:>12.0f}{m['n_pred']:>12.0f}")
    fg = summary["foreground_mean"]
    rows.append(f"{'foreground mean':<24}{fmt(fg['Dice'])}{fmt(fg['IoU'])}" + "".join(fmt(fg[e], 9) for e in extra))
    rows.append(f"{len(summary['metric_per_case'])} case(s)")
    return "\n".join(rows)
