"""The dataset workflow: verify -> fingerprint -> plan (`plan_dataset`, what `fastseg plan` runs),
then -> preprocess (`prepare_dataset`, what `fastseg demo` runs).

This module sits above `fastseg.plan` and `fastseg.preprocess`, which do not import each other's
workflow: `fastseg.preprocess` reads plans, `fastseg.plan` knows nothing of preprocessing.

Verification and the per-case fingerprint share one pass over the files (the verification workers
fingerprint each case that passes its checks); no file is written unless the whole dataset passes.
Without verification, the fingerprint reads the files itself.

Writes `<work>/dataset.json` (a byte copy of the raw one), `<work>/dataset_fingerprint.json`,
`<work>/plans.json` (nnU-Net's file names and formats; `nnUNetv2_preprocess` and the nnU-Net
trainers read them), and `<work>/source.json`, which records the raw dataset folder for
`fastseg preprocess`.

All or nothing: the work folder is created only once there is something to write (a refused plan
leaves none), the four files are written under temporary names and renamed into place together
(`fastseg.io.atomic.StagedFiles`), and on any failure -- a full disk included -- what this run
created is removed again; files that were there before are never touched. Under the work folder's
lock (`fastseg.runtime.locking.folder_lock`), taken at the start when the folder exists: a plan
never rewrites a folder that another command is writing into.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastseg
from fastseg.io.atomic import StagedFiles, remove_abandoned_temporaries, write_json_atomic
from fastseg.plan import workdir
from fastseg.plan.fingerprint import (
    case_order,
    extract_fingerprint,
    fingerprint_from_cases,
    fingerprint_verified_case,
    save_fingerprint,
    workers_within_memory,
)
from fastseg.plan.planner import PlannerOptions, plan_experiment
from fastseg.runtime.locking import folder_lock

logger = logging.getLogger(__name__)


@dataclass
class PlanResult:
    """What `plan_dataset` produced.

    Attributes:
        plans: the plans dict (as written to plans.json).
        fingerprint: the dataset fingerprint.
        work_dir: the work folder.
        seconds: wall time per stage ("verify", "fingerprint", "plan"). With verification, the
            cases are fingerprinted while they are verified (one read of each file): "verify" holds
            that pass and "fingerprint" only the merge of the per-case results.
    """

    plans: dict
    fingerprint: dict
    work_dir: Path
    seconds: dict[str, float] = field(default_factory=dict)


def verify(
    raw_dataset_dir: Path,
    num_processes: int,
    progress: bool | None = None,
    env: Mapping[str, str] | None = None,
    analyze: Any = None,
) -> Any:
    """Runs `fastseg.io.verify_dataset` (with its `analyze` hook, if given) and raises when it
    reports problems.

    Raises:
        ValueError: the dataset has errors (the report's text is the message).
        CaseError: `analyze` failed on a case.
    """
    from fastseg import io as fio
    from fastseg.io.verify import CaseAnalysisError
    from fastseg.runtime.workers import CaseError

    try:
        report = fio.verify_dataset(raw_dataset_dir, num_processes, env=env, progress=progress, analyze=analyze)
    except CaseAnalysisError as err:
        raise CaseError(err.case, err.message) from err
    if not report.ok:
        raise ValueError(
            f"dataset verification failed; fix these problems and rerun (`fastseg verify {raw_dataset_dir}` "
            f"lists them all):\n{report.format(max_per_kind=20)}"
        )
    for warning in report.warnings:
        logger.warning("%s", warning)
    return report


def _created_folders(folder: Path) -> list[Path]:
    """Creates `folder` and its missing parents; returns those it created, outermost first."""
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


@contextlib.contextmanager
def _writing_work_folder(work: Path, locked: bool) -> Iterator[StagedFiles]:
    """Files to write into `work`, all or nothing: creates the folder (and its parents) when it is
    missing, takes its lock unless `locked`, and on failure removes the staged files and every
    folder it created."""
    created = _created_folders(work)
    try:
        with folder_lock(work, "fastseg plan") if not locked else contextlib.nullcontext():
            removed = remove_abandoned_temporaries(work)
            if removed:
                logger.info("%s: removed %d temporary files of an interrupted run", work, removed)
            with StagedFiles(work) as staged:
                yield staged
    except BaseException:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # empty again: the lock file and the staged files are gone
        raise


def plan_dataset(
    raw_dataset_dir: str | Path,
    work_dir: str | Path,
    options: PlannerOptions | None = None,
    *,
    num_processes: int | None = None,
    run_verification: bool = True,
    progress: bool | None = None,
    env: Mapping[str, str] | None = None,
) -> PlanResult:
    """Fingerprints and plans a raw nnU-Net-layout dataset into `work_dir`.

    Args:
        raw_dataset_dir: the raw dataset (dataset.json, imagesTr, labelsTr).
        work_dir: output folder (created, with its parents, once the plans are made).
        options: planner options (default: the classic planner); `dataset_name` defaults to the raw folder's name, as in nnU-Net.
        num_processes: worker processes for verification and fingerprinting (default: the cores).
        run_verification: verify the dataset first (default True).
        progress: progress bars; None: only when stderr is a terminal.
        env: variables for `$VAR` in the case paths dataset.json may list (the CLI passes the
            environment); None expands nothing.

    Returns:
        The PlanResult.

    Raises:
        FileNotFoundError: no dataset.json in `raw_dataset_dir`.
        FileExistsError: `work_dir` exists and is not a folder.
        ValueError: the dataset fails verification (`fastseg.io.DatasetError` without it).
        fastseg.runtime.locking.FolderInUseError: another process writes into `work_dir`.
        fastseg.io.atomic.DiskFullError: no space for the files (nothing of them is left behind).
    """
    from fastseg import io as fio
    from fastseg.runtime.workers import default_num_workers

    options = options or PlannerOptions()
    raw = Path(raw_dataset_dir).resolve()
    work = Path(work_dir)
    if work.exists() and not work.is_dir():
        raise FileExistsError(f"{work} exists and is not a folder; choose another WORK_DIR")
    if not (raw / "dataset.json").is_file():
        raise FileNotFoundError(f"{raw / 'dataset.json'} not found; RAW_DATASET_DIR must be an nnU-Net v2 raw dataset folder")
    workers = num_processes or default_num_workers()
    seconds: dict[str, float] = {}

    with contextlib.ExitStack() as held:
        # An existing work folder is locked now, before minutes of verification, not when writing.
        locked = work.is_dir()
        if locked:
            held.enter_context(folder_lock(work, "fastseg plan"))

        fingerprint = None
        if run_verification:
            # One pass over the files: the verification workers also fingerprint each case they read.
            t = time.perf_counter()
            scanned, _ = fio.scan_raw_dataset(raw, env=env)
            pass_workers = workers_within_memory(scanned, workers) if scanned is not None else workers
            report = verify(raw, pass_workers, progress, env, analyze=fingerprint_verified_case)
            seconds["verify"] = time.perf_counter() - t

        t = time.perf_counter()
        dataset = fio.load_raw_dataset(raw, env=env)
        if run_verification:
            fingerprint = fingerprint_from_cases(dataset, report.analyses)
        if fingerprint is None:
            fingerprint = extract_fingerprint(dataset, workers, progress=progress)
        seconds["fingerprint"] = time.perf_counter() - t

        t = time.perf_counter()
        if options.dataset_name is None:
            options = dataclasses.replace(options, dataset_name=raw.name)
        plans = plan_experiment(fingerprint, dataset.dataset_json, options)
        source = {
            "raw_dataset_dir": str(raw),
            "planner": options.planner,
            "gpu_memory_gb": options.gpu_memory_gb,
            "case_identifiers": case_order(dataset.dataset_json, list(dataset.cases)),
            "fastseg_version": fastseg.__version__,
        }
        with _writing_work_folder(work, locked) as staged:
            with staged.writing(workdir.FINGERPRINT) as path:
                save_fingerprint(fingerprint, path)
            with staged.writing(workdir.DATASET_JSON) as path:
                shutil.copyfile(raw / "dataset.json", path)
            with staged.writing(workdir.PLANS) as path:
                write_json_atomic(plans, path, sort_keys=False)
            with staged.writing(workdir.SOURCE) as path:
                write_json_atomic(source, path)
        seconds["plan"] = time.perf_counter() - t
    logger.info("wrote %s, %s and %s", work / workdir.FINGERPRINT, work / workdir.PLANS, work / workdir.DATASET_JSON)
    return PlanResult(plans, fingerprint, work, seconds)


def prepare_dataset(
    raw_dataset_dir: str | Path,
    work_dir: str | Path,
    options: PlannerOptions | None = None,
    *,
    configurations: tuple[str, ...] | None = None,
    num_processes: int | None = None,
    progress: bool | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[PlanResult, list]:
    """`plan_dataset`, then `fastseg.preprocess.preprocess_dataset` of the planned configurations.

    Args:
        raw_dataset_dir, work_dir, options, num_processes, progress, env: as in `plan_dataset`.
        configurations: configurations to preprocess (default: those `fastseg preprocess` does).

    Returns:
        (the PlanResult, whose `seconds` gains a "preprocess" entry; the per-configuration
        `fastseg.preprocess.runner.PreprocessReport`s).
    """
    from fastseg.preprocess.runner import PreprocessOptions, preprocess_dataset

    result = plan_dataset(raw_dataset_dir, work_dir, options, num_processes=num_processes, progress=progress, env=env)
    t = time.perf_counter()
    reports = preprocess_dataset(
        result.work_dir,
        raw_dataset_dir,
        PreprocessOptions(configurations=configurations, num_processes=num_processes, progress=progress),
        env=env,
    )
    result.seconds["preprocess"] = time.perf_counter() - t
    return result, reports
