"""`verify_dataset`: check a raw dataset before anything is planned or trained on it.

One report lists every problem with its file, never a traceback:

- dataset.json: missing keys, labels that break nnU-Net's rules (background 0, consecutive values,
  ignore label last, regions_class_order for regions), unsupported file ending;
- layout: missing folders, cases without a channel file or a label, stray files, numTraining;
- content, per case and in parallel: unreadable or truncated files, NaN/Inf voxels, channels or
  image and label whose shapes or spacings differ (origin/direction differences are warnings, as in
  nnU-Net), a channel count that disagrees with channel_names, label values that were not declared
  (for regions: values outside the union of the region members), labels holding only background.

Nothing is written. Test cases (imagesTs) get the same checks except the label ones.

`analyze` hook: a caller that needs every training case's content anyway (`fastseg plan`'s
fingerprint) passes a function that runs in the verification workers on each training case that
passed its content checks -- the arrays verification has just read, as `read_images` / `read_seg`
return them -- so the files are read and decompressed once for both. Its results come back in
`VerificationReport.analyses`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastseg.io.dataset import scan_raw_dataset
from fastseg.io.dtypes import to_label_array
from fastseg.io.errors import ImageFileError
from fastseg.io.formats import format_of
from fastseg.io.geometry import compare_geometry
from fastseg.io.images import stack_channels
from fastseg.runtime.workers import parallel_map
from fastseg.io.report import Problem, VerificationReport

logger = logging.getLogger(__name__)

_MAX_LISTED = 10


@dataclass(frozen=True)
class VerifiedCase:
    """A training case that passed every content check, handed to `verify_dataset`'s `analyze` hook.

    Attributes:
        identifier: the case identifier.
        images: float32 (C, z, y, x), channels in file order (what `read_images` returns).
        properties: the first channel file's properties ('spacing' (z, y, x), reader geometry).
        seg: (1, z, y, x) integer labels (what `read_seg` returns).
        num_training_cases: training cases in the dataset (all of them, not only verified ones).
    """

    identifier: str
    images: np.ndarray
    properties: dict
    seg: np.ndarray
    num_training_cases: int


class CaseAnalysisError(RuntimeError):
    """`verify_dataset`'s `analyze` hook raised on a case; `case` names it, the message carries the
    original exception's type and text (the worker's traceback is logged at debug level)."""

    def __init__(self, case: str, message: str) -> None:
        super().__init__(f"case {case!r}: {message}")
        self.case = case
        self.message = message


@dataclass(frozen=True)
class _CaseJob:
    identifier: str
    root: str
    images: tuple[str, ...]
    label: str | None
    expected_channels: int | None
    expected_labels: tuple[int, ...] | None
    analyze: Callable[[VerifiedCase], Any] | None = None
    num_training_cases: int = 0


@dataclass
class _CaseResult:
    problems: list[Problem] = field(default_factory=list)
    labels_found: tuple[int, ...] = ()
    analyzed: bool = False
    analysis: Any = None
    analysis_error: str | None = None  # "Type: message" of an exception the hook raised
    analysis_traceback: str | None = None


def _rel(root: str, path: str) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def _strip_path(message: str, path: str) -> str:
    """Reader errors start with the full path; the report names the file separately."""
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _read(path: str, role: str, root: str, out: list[Problem]):
    """(array, properties, NaN/Inf voxels the reader turned into 0) of one file, or None with a
    problem recorded. The file is read (decompressed) once for all three."""
    rel = _rel(root, path)
    try:
        fmt = format_of(path)
        counting = getattr(fmt, "read_counting_nonfinite", None)  # formats whose reader hides NaN/Inf
        if counting is not None:
            return counting(Path(path), role)
        return (*fmt.read(Path(path), role), 0)  # type: ignore[arg-type]
    except ImageFileError as e:
        out.append(Problem(_strip_path(str(e), path), rel))
    except ValueError as e:  # unsupported ending
        out.append(Problem(str(e), rel))
    except Exception as e:  # noqa: BLE001 -- a verifier reports, it does not crash
        out.append(Problem(f"cannot be read ({type(e).__name__}: {e})", rel))
    return None


_COMPARE_RANGE = 32  # value ranges up to this are scanned value by value (no index array)


def _label_values(seg: np.ndarray) -> np.ndarray:
    """Sorted distinct values: one comparison per value of a narrow range (the usual few labels), a
    bincount when the range is small (linear time, no sort), else np.unique."""
    if seg.size == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = int(seg.min()), int(seg.max())
    if hi - lo < _COMPARE_RANGE:
        # The extremes are present; only the values between them need a scan.
        inner = [v for v in range(lo + 1, hi) if (seg == v).any()]
        return np.array(sorted({lo, hi, *inner}), dtype=np.int64)
    if hi - lo < 1 << 16:
        counts = np.bincount((seg.ravel() - lo).astype(np.intp, copy=False), minlength=hi - lo + 1)
        return np.flatnonzero(counts) + lo
    return np.unique(seg)


def _nonfinite_problem(array: np.ndarray, hidden: int, rel: str) -> Problem | None:
    """NaN/Inf voxels of a float image: `hidden` counts those the reader turned into 0 (NIfTI)."""
    if array.dtype.kind != "f":
        return None
    if hidden:
        return Problem(
            f"holds {hidden} NaN/Inf voxels, which NIfTI readers (SimpleITK, so nnU-Net too) silently turn into 0; "
            "replace them with a value that makes sense for the image",
            rel,
        )
    finite = np.isfinite(array)
    if finite.all():
        return None
    n_nan = int(np.isnan(array).sum())
    n_inf = int(array.size - finite.sum()) - n_nan
    return Problem(
        f"holds {n_nan} NaN and {n_inf} Inf voxels; replace them with a value that makes sense for the image (e.g. its minimum)",
        rel,
    )


def _check_images(
    job: _CaseJob, out: list[Problem], arrays: list[np.ndarray] | None = None
) -> list[tuple[str, tuple[int, ...], dict]]:
    """Reads every channel file; returns (file, shape (c, z, y, x), properties) of those that read.
    With `arrays`, the arrays read are appended to it (else one channel is held at a time)."""
    images = []
    for path in job.images:
        got = _read(path, "image", job.root, out)
        if got is None:
            continue
        array, props, hidden = got
        rel = _rel(job.root, path)
        problem = _nonfinite_problem(array, hidden, rel)
        if problem:
            out.append(problem)
        images.append((rel, array.shape, props))
        if arrays is not None:
            arrays.append(array)
        del array  # without `arrays`, keep one case's channel in memory at a time
    for rel, shape, props in images[1:]:
        ref_rel, ref_shape, ref_props = images[0]
        for issue in compare_geometry(ref_rel, ref_shape[1:], ref_props, rel, shape[1:], props):
            out.append(Problem(issue.message, rel, issue.severity))
    if job.expected_channels is not None and images and len(images) == len(job.images):
        n = sum(shape[0] for _, shape, _ in images)
        if n != job.expected_channels:
            out.append(
                Problem(
                    f"case {job.identifier!r} has {n} channel(s) in {len(images)} file(s) but dataset.json's "
                    f"channel_names declares {job.expected_channels}; add the missing _XXXX files or fix channel_names",
                    images[0][0],
                )
            )
    return images


def _check_label(job: _CaseJob, images: list, out: list[Problem], keep: list | None = None) -> tuple[int, ...]:
    """Reads the label; returns the label values it holds (empty when it cannot be read). With
    `keep`, the label array (as `read_seg` returns it) is appended to it."""
    got = _read(job.label, "seg", job.root, out)
    if got is None:
        return ()
    seg, seg_props, hidden = got
    rel = _rel(job.root, job.label)
    if seg.shape[0] != 1:
        out.append(Problem(f"a segmentation must have one channel, got {seg.shape[0]}", rel))
        return ()
    if hidden:
        out.append(
            Problem(
                f"holds {hidden} NaN/Inf voxels (NIfTI readers turn them into 0); labels must be whole numbers", rel
            )
        )
    try:
        seg = to_label_array(seg, rel)
    except ImageFileError as e:
        out.append(Problem(_strip_path(str(e), rel), rel))
        return ()
    if keep is not None:
        keep.append(seg)
    found = tuple(int(v) for v in _label_values(seg))
    if job.expected_labels is not None:
        unexpected = [v for v in found if v not in job.expected_labels]
        if unexpected:
            shown = ", ".join(map(str, unexpected[:_MAX_LISTED])) + (" ..." if len(unexpected) > _MAX_LISTED else "")
            out.append(
                Problem(
                    f"holds label values [{shown}] that dataset.json does not declare "
                    f"(declared: {list(job.expected_labels)}); fix the labels or declare them",
                    rel,
                )
            )
    if found == (0,):
        out.append(Problem("holds only background (0); intentional?", rel, "warning"))
    if images:
        ref_rel, ref_shape, ref_props = images[0]
        for issue in compare_geometry(ref_rel, ref_shape[1:], ref_props, rel, seg.shape[1:], seg_props):
            out.append(Problem(issue.message, rel, issue.severity))
    return found


def _check_case(job: _CaseJob) -> _CaseResult:
    """Every content check of one case, then the `analyze` hook if the case passed (runs in a worker
    process)."""
    res = _CaseResult()
    analyze = job.analyze if job.label is not None else None
    arrays: list[np.ndarray] | None = [] if analyze is not None else None
    labels: list[np.ndarray] | None = [] if analyze is not None else None
    images = _check_images(job, res.problems, arrays)
    if job.label is not None:
        res.labels_found = _check_label(job, images, res.problems, labels)
    if analyze is None or any(p.severity == "error" for p in res.problems) or not labels or not arrays or len(arrays) != len(job.images):
        return res
    # One float32 channel is used as read; otherwise the float32 stack replaces the channels as read.
    stacked = arrays[0] if len(arrays) == 1 and arrays[0].dtype == np.float32 else stack_channels(arrays)
    case = VerifiedCase(job.identifier, stacked, images[0][2], labels[0], job.num_training_cases)
    del arrays[:], stacked
    res.analyzed = True
    try:
        res.analysis = analyze(case)
    except Exception as e:  # noqa: BLE001 -- re-raised in the parent, naming the case
        import traceback

        res.analysis_error = f"{type(e).__name__}: {e}"
        res.analysis_traceback = traceback.format_exc()
    return res


def verify_dataset(
    root: str | os.PathLike,
    num_processes: int | None = None,
    *,
    env: Mapping[str, str] | None = None,
    check_test_cases: bool = True,
    progress: bool | None = None,
    analyze: Callable[[VerifiedCase], Any] | None = None,
) -> VerificationReport:
    """Checks a raw dataset in nnU-Net v2 layout and reports every problem.

    Args:
        root: the dataset folder (holding dataset.json).
        num_processes: worker processes reading cases in parallel; None (default) uses every CPU,
            1 runs in this process.
        env: variables for `$VAR` in paths listed under dataset.json's `dataset` key; None (default)
            expands nothing.
        check_test_cases: also read imagesTs (default True).
        progress: show a progress bar; None (default) shows it only on a terminal.
        analyze: None (default), or a picklable module-level function run in the worker on every
            training case that passed its content checks (`VerifiedCase`: the arrays as read);
            its results land in `report.analyses` (identifier -> result). The case's image is held
            as float32 while it runs (the checks alone hold one channel file at a time).

    Returns:
        The `VerificationReport`; `report.ok` is False when there is any error. Nothing is raised for
        a bad dataset.

    Raises:
        ValueError: `num_processes` below 1.
        CaseAnalysisError: `analyze` raised on a case (the first such case in identifier order).
    """
    if num_processes is None:
        num_processes = os.cpu_count() or 1
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    root = Path(root)
    report = VerificationReport(root)
    dataset, problems = scan_raw_dataset(root, env=env)
    report.problems.extend(problems)
    if dataset is None:
        return report
    report.num_training, report.num_test = len(dataset.cases), len(dataset.test_cases)
    spec = dataset.label_spec if "labels" in dataset.dataset_json else None
    expected_labels = tuple(spec.expected_values) if spec is not None and spec.labels else None
    incomplete = {p.case for p in problems if p.kind == "layout" and p.case is not None}

    def job(case, with_label: bool) -> _CaseJob:
        complete = case.identifier not in incomplete
        return _CaseJob(
            case.identifier,
            str(root),
            tuple(str(p) for p in case.images if p.is_file()),
            str(case.label) if with_label and case.label is not None and case.label.is_file() else None,
            dataset.num_channels if complete else None,
            expected_labels,
            analyze if with_label and complete else None,
            len(dataset.cases),
        )

    jobs = [job(c, True) for c in dataset.cases.values()]
    if check_test_cases:
        jobs += [job(c, False) for c in dataset.test_cases.values()]
    results = parallel_map(_check_case, jobs, num_processes, desc="verifying cases", progress=progress)
    found: set[int] = set()
    for j, r in zip(jobs, results):
        report.problems.extend(r.problems)
        found.update(r.labels_found)
        if r.analysis_error is not None:
            logger.debug("analysis of case %s failed in the worker:\n%s", j.identifier, r.analysis_traceback)
            raise CaseAnalysisError(j.identifier, r.analysis_error)
        if r.analyzed:
            report.analyses[j.identifier] = r.analysis
    if (
        spec is not None
        and dataset.cases
        and not any(p.kind == "content" and p.severity == "error" for p in report.problems)
    ):
        names = {v: k for k, v in spec.labels.items() if isinstance(v, int)}
        for v in spec.all_labels:
            if v not in found:
                report.problems.append(
                    Problem(
                        f"label {v} ({names.get(v, 'region member')!r}) occurs in no training case",
                        "dataset.json",
                        "warning",
                    )
                )
    return report
