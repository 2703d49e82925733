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
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastseg.io.dataset import scan_raw_dataset
from fastseg.io.dtypes import to_label_array
from fastseg.io.errors import ImageFileError
from fastseg.io.formats import format_of
from fastseg.io.geometry import compare_geometry
from fastseg.io.integrity import nifti_nonfinite_voxels
from fastseg.io.parallel import parallel_map
from fastseg.io.report import Problem, VerificationReport

logger = logging.getLogger(__name__)

_MAX_LISTED = 10


@dataclass(frozen=True)
class _CaseJob:
    identifier: str
    root: str
    images: tuple[str, ...]
    label: str | None
    expected_channels: int | None
    expected_labels: tuple[int, ...] | None


@dataclass
class _CaseResult:
    problems: list[Problem] = field(default_factory=list)
    labels_found: tuple[int, ...] = ()


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
    """(array, properties) of one file, or None with a problem recorded."""
    rel = _rel(root, path)
    try:
        return format_of(path).read(Path(path), role)  # type: ignore[arg-type]
    except ImageFileError as e:
        out.append(Problem(_strip_path(str(e), path), rel))
    except ValueError as e:  # unsupported ending
        out.append(Problem(str(e), rel))
    except Exception as e:  # noqa: BLE001 -- a verifier reports, it does not crash
        out.append(Problem(f"cannot be read ({type(e).__name__}: {e})", rel))
    return None


def _label_values(seg: np.ndarray) -> np.ndarray:
    """Sorted distinct values; a bincount when the range is small (linear time, no sort)."""
    if seg.size == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = int(seg.min()), int(seg.max())
    if hi - lo < 1 << 16:
        counts = np.bincount((seg.ravel() - lo).astype(np.intp, copy=False), minlength=hi - lo + 1)
        return np.flatnonzero(counts) + lo
    return np.unique(seg)


def _nonfinite_problem(path: str, array: np.ndarray, rel: str) -> Problem | None:
    """NaN/Inf voxels of a float image: counted in the raw file for NIfTI (whose readers zero them)."""
    if array.dtype.kind != "f":
        return None
    hidden = nifti_nonfinite_voxels(path)
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


def _check_images(job: _CaseJob, out: list[Problem]) -> list[tuple[str, tuple[int, ...], dict]]:
    """Reads every channel file; returns (file, shape (c, z, y, x), properties) of those that read."""
    images = []
    for path in job.images:
        got = _read(path, "image", job.root, out)
        if got is None:
            continue
        array, props = got
        rel = _rel(job.root, path)
        problem = _nonfinite_problem(path, array, rel)
        if problem:
            out.append(problem)
        images.append((rel, array.shape, props))
        del array  # keep one case's channel in memory at a time
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


def _check_label(job: _CaseJob, images: list, out: list[Problem]) -> tuple[int, ...]:
    """Reads the label; returns the label values it holds (empty when it cannot be read)."""
    got = _read(job.label, "seg", job.root, out)
    if got is None:
        return ()
    seg, seg_props = got
    rel = _rel(job.root, job.label)
    if seg.shape[0] != 1:
        out.append(Problem(f"a segmentation must have one channel, got {seg.shape[0]}", rel))
        return ()
    hidden = nifti_nonfinite_voxels(job.label) if seg.dtype.kind == "f" else 0
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
    """Every content check of one case (runs in a worker process)."""
    res = _CaseResult()
    images = _check_images(job, res.problems)
    if job.label is not None:
        res.labels_found = _check_label(job, images, res.problems)
    return res


def verify_dataset(
    root: str | os.PathLike,
    num_processes: int | None = None,
    *,
    env: Mapping[str, str] | None = None,
    check_test_cases: bool = True,
    progress: bool | None = None,
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

    Returns:
        The `VerificationReport`; `report.ok` is False when there is any error. Nothing is raised for
        a bad dataset.

    Raises:
        ValueError: `num_processes` below 1.
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
            str(case.label) if with_label and case.label is not None else None,
            dataset.num_channels if complete else None,
            expected_labels,
        )

    jobs = [job(c, True) for c in dataset.cases.values()]
    if check_test_cases:
        jobs += [job(c, False) for c in dataset.test_cases.values()]
    results = parallel_map(_check_case, jobs, num_processes, desc="verifying cases", progress=progress)
    found: set[int] = set()
    for r in results:
        report.problems.extend(r.problems)
        found.update(r.labels_found)
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
