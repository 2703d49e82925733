"""`fastseg predict --ray`: prediction actors, each with the model loaded once.

Each worker (one per GPU, or per `cpus_per_worker` cores on CPU nodes) builds a `Predictor` from
the model folder when it starts and runs `Predictor.predict_cases` -- the single-machine pipeline,
unchanged -- on each case it is given: it reads the case's files and writes its output atomically
(a case is either done or absent), so only paths travel. Cases start largest first (by the size
of their files). With `skip_existing` (`--continue`) cases whose output exists are left alone; an
output that appeared during the run (written by a worker that died before it could say so) counts
as done instead of being predicted twice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastseg.distributed.cluster import worker_slots
from fastseg.distributed.scheduler import CaseTask, ClusterReport, run_cases
from fastseg.predict.inputs import InputCase
from fastseg.predict.predictor import PredictionReport, Predictor


def load_predictor(model_dir: str, folds: Sequence[int | str] | None, device: str, options: dict[str, Any],
                   threads: int) -> Predictor:
    """A worker's state: the model folder's predictor, on `threads` CPU threads (`options`:
    `Predictor.from_model_folder`'s keyword arguments)."""
    return Predictor.from_model_folder(model_dir, folds, device, threads=threads, **options)


def predict_case(predictor: Predictor, identifier: str, images: list[str], output: str,
                 save_probabilities: bool) -> dict[str, float]:
    """One case through the predictor's pipeline; its seconds per stage.

    Raises:
        ValueError: the case failed (its error; the driver retries it elsewhere).
    """
    case = InputCase(identifier, [Path(p) for p in images])
    report = predictor.predict_cases([case], [Path(output)], save_probabilities=save_probabilities, progress=False)
    if report.failed:
        raise ValueError(next(iter(report.failed.values())))
    return dict(report.seconds)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def predict_on_cluster(
    ray,
    model_dir: str | Path,
    folds: Sequence[int | str] | None,
    cases: Sequence[InputCase],
    outputs: Sequence[Path],
    *,
    device: str = "cpu",
    options: dict[str, Any] | None = None,
    save_probabilities: bool = False,
    skip_existing: bool = False,
    cpus_per_worker: int = 4,
    retries: int = 2,
    progress: bool | None = None,
) -> tuple[PredictionReport, ClusterReport]:
    """Predicts the cases on the cluster's workers.

    Args:
        ray: the `ray` module, connected (`fastseg.distributed.cluster.connect`).
        model_dir: the model folder, at the same path on every node.
        folds: folds to ensemble (None: all with the checkpoint).
        cases, outputs: the cases and their output files (on a filesystem every node shares).
        device: "cpu" (one worker per `cpus_per_worker` cores of each node) or "cuda" (one per GPU).
        options: `Predictor.from_model_folder`'s other keyword arguments (checkpoint, step_size, tta,
            batch_size, postprocessing, compile); threads are the worker's cores.
        save_probabilities: also write the .npz and .pkl beside each output.
        skip_existing: leave cases whose output exists alone (`--continue`).
        cpus_per_worker: CPU cores per worker (default 4; a node with fewer gets one worker).
        retries: tries again for a failed case, on another worker (default 2).
        progress: one progress bar over all cases; None: only when stderr is a terminal.

    Returns:
        (the PredictionReport as `Predictor.predict_cases` gives it, with stage seconds summed over
        workers and "total" the wall time; the cluster's report with per-worker throughput).
    """
    if len(cases) != len(outputs):
        raise ValueError(f"need one output per case, got {len(outputs)} outputs for {len(cases)} cases")
    report = PredictionReport()
    tasks, where = [], {}
    for case, out in zip(cases, outputs):
        if skip_existing and out.is_file():
            report.skipped.append(case.identifier)
            continue
        size = sum(os.path.getsize(p) for p in case.images if os.path.exists(p))
        tasks.append(CaseTask(case.identifier, (case.identifier, [str(p) for p in case.images], str(out),
                                                save_probabilities), size))
        where[case.identifier] = out
    before = {key: _stamp(out) for key, out in where.items()}

    def written_before_loss(task: CaseTask) -> bool:
        stamp = _stamp(where[task.key])
        return stamp is not None and stamp != before[task.key]

    for folder in dict.fromkeys(out.parent for out in outputs):
        folder.mkdir(parents=True, exist_ok=True)
    slots = worker_slots(ray, cpus_per_worker=cpus_per_worker, gpu=device.startswith("cuda"))
    cluster = run_cases(
        ray, "fastseg.distributed.predict:predict_case", tasks, slots,
        setup="fastseg.distributed.predict:load_predictor",
        setup_args=(str(model_dir), None if folds is None else list(folds), device, dict(options or {})),
        retries=retries, done=written_before_loss, desc="Predicting", progress=progress,
    )
    for task in tasks:
        if task.key in cluster.results:
            report.written.append(where[task.key])
            for stage, seconds in (cluster.results[task.key] or {}).items():
                if stage != "total":
                    report.seconds[stage] += seconds
    report.failed = dict(cluster.failed)
    report.seconds["total"] = cluster.seconds
    return report, cluster
