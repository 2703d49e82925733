"""Choosing postprocessing on cross-validation predictions: nnU-Net's `determine_postprocessing`.

The rule, decision for decision as nnU-Net takes it:

1. Keep only the largest connected component of all foreground labels together (one union, also
   for region-based datasets, where nnU-Net passes the foreground *labels*). Kept when the
   foreground mean Dice rises (strictly) and no label's or region's mean Dice falls.
2. When there is more than one label (region), for each in dataset.json's order: keep only the
   largest component of that label (region), on top of what was kept so far. Kept when that
   label's (region's) mean Dice rises strictly.

Means are nnU-Net's (`fastseg.evaluate.folder.summarize`: NaN cases left out), so a comparison with
NaN is false and decides "no", as in nnU-Net.

How it is computed: each case is read once per pass and every candidate is scored in memory
(native connected components, one-pass confusion matrix); no temporary folders. For label-based
datasets one pass suffices: step 2 for label r turns only voxels of r into background, so it
changes the scores of r alone and its outcome does not depend on the steps before it for other
labels; each worker scores the baseline, step 1, and each per-label step on both the baseline and
step 1. Region-based datasets (regions overlap) take one pass per region, in order.

What it writes, in the prediction folder (as nnU-Net does):
- `summary.json` of the predictions, when there is none;
- `postprocessing.pkl`: nnU-Net's `(functions, kwargs)` pickle, whose functions are references to
  `nnunetv2.postprocessing.remove_connected_components.remove_all_but_largest_component_from_segmentation`
  (nnU-Net loads it; `fastseg predict --postprocessing` reads it without nnU-Net);
- `postprocessing.json`: nnU-Net's report (scores before and after, the steps' names and kwargs)
  and a `steps` list in fastseg's form (`fastseg.predict.postprocess`), so either file serves;
- `postprocessed/`: the predictions with the chosen steps applied, and their `summary.json`.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastseg.evaluate.folder import _matched_files, labels_to_score, read_pair, score_arrays, summarize, to_json
from fastseg.evaluate.metrics import LabelOrRegion

logger = logging.getLogger(__name__)

_NNUNET_MODULE = "nnunetv2.postprocessing.remove_connected_components"
_NNUNET_FUNCTION = "remove_all_but_largest_component_from_segmentation"


@dataclass
class PostprocessingChoice:
    """What `find_postprocessing` decided.

    Attributes:
        steps: the chosen steps in fastseg's form ({"labels_or_regions", "background_label"}), in order.
        nnunet_kwargs: the same steps as nnU-Net's kwargs dicts ({"labels_or_regions": ...}).
        before: summary of the predictions as they are (int / tuple keys).
        after: summary of the postprocessed predictions.
        log: one line per decision, as nnU-Net prints them.
    """

    steps: list[dict] = field(default_factory=list)
    nnunet_kwargs: list[dict] = field(default_factory=list)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    log: list[str] = field(default_factory=list)


def _apply(seg, steps: Sequence[dict]):
    from fastseg.predict.postprocess import apply_postprocessing

    return apply_postprocessing(seg, steps)


def _step(labels_or_regions: LabelOrRegion | list) -> dict:
    return {"labels_or_regions": labels_or_regions, "background_label": 0}


def _one_pass_job(job: tuple) -> dict:
    """Scores of one case: baseline, step 1, and each per-label step on the baseline and on step 1."""
    reference, prediction, labels, foreground, ignore, size = job
    ref, pred, _ = read_pair(reference, prediction)
    base = score_arrays(ref, pred, labels, ignore, size)
    first_seg = _apply(pred[0], [_step(list(foreground))])
    first = score_arrays(ref, first_seg[None], labels, ignore, size)
    single: dict = {"base": {}, "first": {}}
    if len(labels) > 1:
        for r in labels:
            for name, seg in (("base", pred[0]), ("first", first_seg)):
                single[name][r] = score_arrays(ref, _apply(seg, [_step(r)])[None], [r], ignore, size)[r]
    return {"reference_file": reference, "prediction_file": prediction, "base": base, "first": first, "single": single}


def _chain_job(job: tuple) -> dict:
    """Scores of one case after the steps `chain` (a list of step lists, each scored)."""
    reference, prediction, labels, ignore, size, chains = job
    ref, pred, _ = read_pair(reference, prediction)
    return {"reference_file": reference, "prediction_file": prediction,
            "scores": [score_arrays(ref, _apply(pred[0], chain)[None], labels, ignore, size) for chain in chains]}


def _write_job(job: tuple) -> dict:
    """Applies `steps` to one case, writes it to `output` and scores it."""
    from fastseg import io as fio

    reference, prediction, output, labels, ignore, size, steps = job
    ref, pred, props = read_pair(reference, prediction)
    seg = _apply(pred[0], steps)
    fio.write_seg(seg, Path(output), props)
    return {"reference_file": reference, "prediction_file": output,
            "metrics": score_arrays(ref, seg[None], labels, ignore, size)}


def _per_case(results: Sequence[dict], key: str) -> list[dict]:
    return [{"reference_file": r["reference_file"], "prediction_file": r["prediction_file"], "metrics": r[key]} for r in results]


def _dice(summary: Mapping[str, Any], r: LabelOrRegion | None = None) -> float:
    return summary["foreground_mean"]["Dice"] if r is None else summary["mean"][r]["Dice"]


def _r5(v: float) -> float:
    return round(v, 5) if not math.isnan(v) else v


def find_postprocessing(
    pred_dir: str | Path,
    ref_dir: str | Path,
    dataset_json: Mapping[str, Any],
    *,
    num_processes: int | None = None,
    progress: bool | None = None,
    keep_postprocessed: bool = True,
) -> PostprocessingChoice:
    """Decides nnU-Net's postprocessing for a folder of (cross-validation) predictions and writes
    its files (see the module's docstring).

    Args:
        pred_dir: the predictions (every case of the dataset, for a decision nnU-Net would take).
        ref_dir: their references (the same file names).
        dataset_json: the dataset's dataset.json (labels, regions, ignore label, file_ending).
        num_processes: worker processes (default: the cores).
        progress: progress bars; None: only when stderr is a terminal.
        keep_postprocessed: keep `pred_dir/postprocessed/` (default True); False removes it after scoring.

    Returns:
        The choice: steps, scores before and after, and the decisions' log.

    Raises:
        FileNotFoundError: a folder is missing.
        ValueError: no predictions, cases on one side only, shapes or spacings that differ, labels
            outside dataset.json's.
    """
    import shutil

    from fastseg.io.atomic import write_json_atomic
    from fastseg.io.labels import LabelSpec
    from fastseg.runtime.workers import default_num_workers, parallel_map

    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    labels, ignore = labels_to_score(dataset_json)
    spec = LabelSpec.from_json(dataset_json.get("labels", {}), dataset_json.get("regions_class_order"))
    foreground = [int(v) for v in spec.foreground_labels]
    names = _matched_files(pred_dir, ref_dir, dataset_json.get("file_ending", ".nii.gz"))
    values = [v for r in labels for v in (r if isinstance(r, tuple) else (r,))] + [0]
    size = max(values + ([ignore] if ignore is not None else [])) + 1
    workers = num_processes or default_num_workers()
    pairs = [(str(ref_dir / n), str(pred_dir / n)) for n in names]
    choice = PostprocessingChoice()

    def decide_first(before: dict, after: dict) -> bool:
        better = _dice(after) > _dice(before)
        if better and any(_dice(after, r) < _dice(before, r) for r in labels):
            better = False
        if better:
            choice.log.append(
                f"removing all but the largest foreground component improves the foreground mean Dice: "
                f"{_r5(_dice(before))} -> {_r5(_dice(after))}; kept"
            )
        else:
            choice.log.append("removing all but the largest foreground component does not improve the results")
        return better

    def decide_single(r: LabelOrRegion, before: float, after: float) -> bool:
        better = after > before
        verdict = "improves" if better else "does not improve"
        choice.log.append(f"removing all but the largest component of {r} {verdict} its Dice: {_r5(before)} -> {_r5(after)}"
                          + ("; kept" if better else ""))
        return better

    if not spec.has_regions:
        jobs = [(ref, pred, labels, foreground, ignore, size) for ref, pred in pairs]
        results = parallel_map(_one_pass_job, jobs, workers, desc="Postprocessing candidates", progress=progress)
        choice.before = summarize(_per_case(results, "base"), labels)
        first = summarize(_per_case(results, "first"), labels)
        state, current = ("first", first) if decide_first(choice.before, first) else ("base", choice.before)
        if state == "first":
            choice.steps.append(_step(list(foreground)))
        if len(labels) > 1:
            for r in labels:
                after = summarize([{"metrics": {r: res["single"][state][r]}} for res in results], [r])
                if decide_single(r, _dice(current, r), _dice(after, r)):
                    choice.steps.append(_step(r))
    else:
        def score(chains: list[list[dict]]) -> list[dict]:
            jobs = [(ref, pred, labels, ignore, size, chains) for ref, pred in pairs]
            results = parallel_map(_chain_job, jobs, workers, desc="Postprocessing candidates", progress=progress)
            return [summarize([{"metrics": res["scores"][i]} for res in results], labels) for i in range(len(chains))]

        choice.before, first = score([[], [_step(list(foreground))]])
        current = choice.before
        if decide_first(choice.before, first):
            choice.steps.append(_step(list(foreground)))
            current = first
        if len(labels) > 1:
            for r in labels:
                (after,) = score([[*choice.steps, _step(r)]])
                if decide_single(r, _dice(current, r), _dice(after, r)):
                    choice.steps.append(_step(r))
                    current = after

    choice.nnunet_kwargs = [{"labels_or_regions": s["labels_or_regions"]} for s in choice.steps]
    if not (pred_dir / "summary.json").is_file():
        per_case = [{"reference_file": ref, "prediction_file": pred, "metrics": m["metrics"]}
                    for (ref, pred), m in zip(pairs, choice.before["metric_per_case"])]
        write_json_atomic(to_json(summarize(per_case, labels)), pred_dir / "summary.json", sort_keys=True)

    out = pred_dir / "postprocessed"
    out.mkdir(exist_ok=True)
    jobs = [(ref, pred, str(out / n), labels, ignore, size, choice.steps) for (ref, pred), n in zip(pairs, names)]
    written = parallel_map(_write_job, jobs, workers, desc="Writing postprocessed", progress=progress)
    choice.after = summarize(written, labels)
    write_json_atomic(to_json(choice.after), out / "summary.json", sort_keys=True)
    save_postprocessing_pkl(choice.nnunet_kwargs, pred_dir / "postprocessing.pkl")
    write_json_atomic(_report(choice), pred_dir / "postprocessing.json")
    if not keep_postprocessed:
        shutil.rmtree(out)
    return choice


def _report(choice: PostprocessingChoice) -> dict:
    """nnU-Net's postprocessing.json, plus fastseg's `steps`."""
    from fastseg.predict.postprocess import steps_as_json

    def plain(v):
        return [plain(x) for x in v] if isinstance(v, (list, tuple)) else int(v)

    def scores(summary: Mapping[str, Any]) -> dict:
        return {"foreground_mean": dict(summary["foreground_mean"]), "mean": to_json(summary)["mean"]}

    return {
        "input_folder": scores(choice.before),
        "postprocessed": scores(choice.after),
        "postprocessing_fns": [_NNUNET_FUNCTION] * len(choice.steps),
        "postprocessing_kwargs": [{"labels_or_regions": plain(k["labels_or_regions"])} for k in choice.nnunet_kwargs],
        **steps_as_json(choice.steps),
    }


class _FunctionReference:
    """A function named by module and name, pickled as a reference without importing the module."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class _Pickler(pickle._Pickler):  # the Python pickler: its `save` can be extended per object
    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, _FunctionReference):
            self.save(obj.module)
            self.save(obj.name)
            self.write(pickle.STACK_GLOBAL)
            return
        super().save(obj, save_persistent_id)


def save_postprocessing_pkl(nnunet_kwargs: Sequence[dict], path: str | Path) -> None:
    """Writes nnU-Net's postprocessing.pkl, atomically: `(functions, kwargs)` with one reference to
    nnU-Net's remove-all-but-largest function per step (nnU-Net need not be installed to write it)."""
    import io

    from fastseg.io.atomic import atomic_path

    function = _FunctionReference(_NNUNET_MODULE, _NNUNET_FUNCTION)
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=4).dump(([function] * len(nnunet_kwargs), [dict(k) for k in nnunet_kwargs]))
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(buffer.getvalue())
