"""Preprocessing of a whole dataset into a work folder, in parallel over cases.

Input: a work folder written by `fastseg plan` (plans.json, dataset.json, dataset_fingerprint.json,
source.json naming the raw dataset). Output: `<work>/<data_identifier>/<case>.npy|_seg.npy|.json`
per configuration (`fastseg.preprocess.storage`).

Each case is read once and preprocessed into every requested configuration (transpose, crop and
normalization are shared; only resampling and location sampling are per configuration). Cases run
in worker processes under a memory budget (`fastseg.runtime.workers`), largest first; the
estimate per case comes from the fingerprint's cropped shape and the configurations' spacings.
Finished cases (complete, intact files written with the same plans) are skipped, so an interrupted
run resumes where it stopped; a finished case whose files were damaged since is redone. One run at a
time: the work folder's lock (`fastseg.runtime.locking.folder_lock`) makes a second run on the same
folder stop at once with an error naming the first, instead of both redoing every case.

Why not nnU-Net's on-disk format by default: nnU-Net 2.8.1 writes blosc2-compressed `.b2nd` arrays
with a `.pkl` of properties, and picks its dataset class from the file endings of the folder (it
accepts `.b2nd` or `.npz`, plus `.pkl`/`.npy`, and rejects a folder with any other ending). fastseg
writes uncompressed `.npy` (memory-mapped by the loader: no decompression per patch) and JSON
properties. When nnU-Net is to train, `fastseg preprocess --format nnunet`
(`fastseg.preprocess.nnunet_format`) writes nnU-Net's own format from the same preprocessing.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastseg.plan import workdir
from fastseg.plan.fingerprint import case_order
from fastseg.plan.plans import data_configurations
from fastseg.preprocess.caseplan import CasePlan
from fastseg.io.images import image_voxels
from fastseg.preprocess.memory import preprocess_bytes
from fastseg.runtime.workers import Job, default_num_workers, run_jobs
from fastseg.preprocess.storage import check_case, remove_temporaries
from fastseg.runtime.locking import folder_lock

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreprocessOptions:
    """Options of `preprocess_dataset`.

    Attributes:
        configurations: configurations to preprocess; None: 2d, 3d_fullres and 3d_lowres (those in
            the plans), as nnUNetv2_preprocess does. Configurations sharing a data folder
            (3d_cascade_fullres and 3d_fullres) are done once.
        num_processes: worker processes; None: the core count.
        memory_budget_bytes: memory the cases in flight may use; None: 75 % of what is available.
        overwrite: redo cases that are already complete.
        progress: progress bar; None: only when stderr is a terminal.
        run_cases: what runs the cases, with `fastseg.runtime.workers.run_jobs`' signature; None:
            worker processes on this machine (`fastseg.distributed.preprocess.ClusterJobs` runs them
            on a Ray cluster).
    """

    configurations: tuple[str, ...] | None = None
    num_processes: int | None = None
    memory_budget_bytes: int | None = None
    overwrite: bool = False
    progress: bool | None = None
    run_cases: Callable[..., Iterator[tuple[str, Any]]] | None = None

    def __post_init__(self) -> None:
        if self.num_processes is not None and self.num_processes < 1:
            raise ValueError(f"num_processes must be >= 1, got {self.num_processes}")


@dataclass
class ConfigurationReport:
    """What one run did for one configuration."""

    configuration: str
    folder: Path
    processed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _estimates(work_dir: Path, order: Sequence[str], plans: Mapping[str, Any], case_plans: Sequence[CasePlan]) -> dict:
    """Per case: (voxels before, {configuration: voxels after}) from the fingerprint, if it matches."""
    fp_path = work_dir / workdir.FINGERPRINT
    if not fp_path.is_file():
        return {}
    fp = workdir.read_json(fp_path, ("shapes_after_crop", "spacings"))
    shapes, spacings = fp["shapes_after_crop"], fp["spacings"]
    out = {}
    with workdir.interpreting(fp_path, "'shapes_after_crop' and 'spacings'"):
        if len(shapes) != len(order) or len(spacings) != len(order):
            return {}
        forward = plans["transpose_forward"]
        for key, shape, spacing in zip(order, shapes, spacings):
            shape_t = [int(shape[a]) for a in forward]
            spacing_t = [float(spacing[a]) for a in forward]
            after = {}
            for cp in case_plans:
                target = list(cp.spacing) if len(cp.spacing) == 3 else [spacing_t[0], *cp.spacing]
                after[cp.configuration] = int(math.prod(n * s / t for n, s, t in zip(shape_t, spacing_t, target)))
            out[key] = (math.prod(shape_t), after)
    return out


def preprocess_dataset(
    work_dir: str | Path,
    raw_dataset_dir: str | Path | None = None,
    options: PreprocessOptions | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> list[ConfigurationReport]:
    """Preprocesses every training case of the raw dataset into the work folder.

    Args:
        work_dir: folder with plans.json, dataset.json (and dataset_fingerprint.json, source.json)
            written by `fastseg plan`.
        raw_dataset_dir: the raw dataset; None reads it from `<work_dir>/source.json`.
        options: configurations, workers, memory budget, overwrite (default: PreprocessOptions()).
        env: variables for `$VAR` in the case paths dataset.json may list; None expands nothing.

    Returns:
        One report per preprocessed configuration (processed and skipped cases, output folder).

    Raises:
        FileNotFoundError: the work folder / plans.json / dataset.json / the raw dataset is missing.
        fastseg.plan.workdir.WorkFolderError: a work-folder file is damaged (the message names it).
        fastseg.runtime.locking.FolderInUseError: another process writes into the work folder (one
            run at a time: a second one stops at once, naming the first).
        ValueError: an unknown configuration.
        fastseg.runtime.workers.CaseError: a case failed (finished cases stay on disk); a full disk
            gives a `fastseg.io.atomic.DiskFullError` naming the file.
    """
    options = options or PreprocessOptions()
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        raise FileNotFoundError(
            f"{work_dir / workdir.PLANS} not found (there is no folder {work_dir}); "
            f"run `fastseg plan RAW_DATASET_DIR -o {work_dir}` first"
        )
    with folder_lock(work_dir, "fastseg preprocess"):
        return _preprocess(work_dir, raw_dataset_dir, options, env)


def _preprocess(
    work_dir: Path, raw_dataset_dir: str | Path | None, options: PreprocessOptions, env: Mapping[str, str] | None
) -> list[ConfigurationReport]:
    """`preprocess_dataset` with the work folder's lock held."""
    from fastseg import io as fio

    plans_path, dataset_json_path = work_dir / workdir.PLANS, work_dir / workdir.DATASET_JSON
    plans = workdir.read_plans(plans_path)
    dataset_json = workdir.read_json(dataset_json_path, ("labels",))
    if not isinstance(dataset_json["labels"], dict):
        raise workdir.damaged(dataset_json_path, f"'labels' must be a JSON object, got {dataset_json['labels']!r}")
    if raw_dataset_dir is None:
        source_path = work_dir / workdir.SOURCE
        raw_dataset_dir = workdir.read_json(source_path, ("raw_dataset_dir",))["raw_dataset_dir"]
        if not isinstance(raw_dataset_dir, str) or not raw_dataset_dir:
            raise workdir.damaged(source_path, f"'raw_dataset_dir' must name the raw dataset folder, got {raw_dataset_dir!r}")
    raw = fio.load_raw_dataset(Path(raw_dataset_dir), env=env)

    with workdir.interpreting(plans_path, "its configurations"):
        names = data_configurations(plans, list(options.configurations) if options.configurations else None)
    case_plans = []
    for name in names:
        with workdir.interpreting(plans_path, f"configuration {name!r}"):
            case_plans.append(CasePlan.from_plans(plans, name, dataset_json))
    reports = [ConfigurationReport(cp.configuration, work_dir / cp.data_identifier) for cp in case_plans]
    for r in reports:
        r.folder.mkdir(parents=True, exist_ok=True)
        stale = remove_temporaries(r.folder)
        if stale:
            logger.info("%s: removed %d temporary files of an interrupted run", r.folder, stale)

    order = case_order(dataset_json, list(raw.cases))
    estimates = _estimates(work_dir, order, plans, case_plans)
    channels = len(case_plans[0].normalization_schemes) if case_plans else 1
    jobs = []
    for key in order:
        todo = []
        for cp, report in zip(case_plans, reports):
            if options.overwrite:
                todo.append((cp, report))
                continue
            complete, damage = check_case(report.folder, key, cp.digest())
            if complete:
                report.skipped.append(key)
            else:
                if damage is not None:
                    logger.warning("%s: case %s was finished but %s; preprocessing it again", report.folder, key, damage)
                todo.append((cp, report))
        if not todo:
            continue
        files = raw.cases[key]
        if key in estimates:
            before, by_name = estimates[key]
            after = [by_name[cp.configuration] for cp, _ in todo]
        else:
            before, after = image_voxels(files.images[0]), []
        jobs.append(
            Job(
                key=key,
                args=(
                    key,
                    [str(p) for p in files.images],
                    str(files.label) if files.label is not None else None,
                    [cp for cp, _ in todo],
                    [str(r.folder) for _, r in todo],
                ),
                memory_bytes=preprocess_bytes(channels, before, after),
            )
        )
    by_config = {r.configuration: r for r in reports}
    start = time.perf_counter()
    workers = options.num_processes or default_num_workers()
    for key, done in (options.run_cases or run_jobs)(
        "fastseg.preprocess.worker:preprocess_files",  # the kernels load in the workers only
        jobs, workers, memory_budget=options.memory_budget_bytes, desc="Preprocessing", progress=options.progress
    ):
        for name in done:
            by_config[name].processed.append(key)
    logger.info(
        "preprocessed %d cases into %s in %.1f s (%d already done)",
        len(jobs), ", ".join(str(r.folder.name) for r in reports), time.perf_counter() - start,
        sum(len(r.skipped) for r in reports),
    )
    return reports

