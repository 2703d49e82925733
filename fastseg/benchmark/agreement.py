"""How far fastseg's outputs agree with nnU-Net's, stage by stage of `fastseg benchmark RAW_DATASET`.

Each comparison reads what the two tools wrote and returns a small record with a verdict (`ok`),
a one-line `summary` for the table and `as_json()` for benchmark.json:

- plans (`compare_plans`): every key of nnU-Net's plans (or fingerprint) against fastseg's, by path
  (`configurations.3d_fullres.patch_size`). Equal values agree; a difference is *documented* when
  its path is one of `DOCUMENTED_DIFFERENCES` and the values lie within its tolerance, and
  *undocumented* otherwise. The verdict holds when there is no undocumented difference.
- preprocessed arrays (`compare_preprocessed`): fastseg's `<case>.npy` / `<case>_seg.npy` against
  nnU-Net's `<case>.b2nd` / `<case>_seg.b2nd` (blosc2), case by case: equal shapes, the data's
  max |difference| relative to the range of nnU-Net's values (within `PREPROCESS_TOLERANCE`, the
  bound tests/test_preprocess.py holds fastseg to), the fraction of exactly equal data voxels, and
  segmentations equal voxel for voxel.
- segmentations (`label_dice`): Dice per label between two folders of segmentations, pooled over
  the cases (2 |A and B| / (|A| + |B|) summed over cases), each tool's output against the other's.
- evaluation summaries (`compare_summaries`): every metric of nnU-Net's summary.json (per case,
  means, foreground mean) against fastseg's, within `SUMMARY_TOLERANCE` absolute; NaN equals NaN.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Paths (fnmatch patterns) where fastseg's plans may differ from nnU-Net's: (pattern, relative
#: tolerance, why). nnU-Net reduces the foreground intensity samples in float32 numpy; fastseg sums
#: them in float64, so the mean and standard deviation differ in the last float32 digits
#: (tests/test_fingerprint.py measures them at most 8.1e-8 apart, relative).
DOCUMENTED_DIFFERENCES: tuple[tuple[str, float, str], ...] = (
    ("foreground_intensity_properties_per_channel.*.mean", 1e-6, "float32 rounding of nnU-Net's mean"),
    ("foreground_intensity_properties_per_channel.*.std", 1e-6, "float32 rounding of nnU-Net's standard deviation"),
)
#: Largest |data difference| / range of nnU-Net's values that still agrees (tests/test_preprocess.py).
PREPROCESS_TOLERANCE = 5e-6
#: Largest |metric difference| between the two evaluation summaries that still agrees.
SUMMARY_TOLERANCE = 1e-6


@dataclass
class Difference:
    """One value that differs between the two plans: its path, both values, and why it may differ
    (None: undocumented)."""

    path: str
    fastseg: Any
    nnunet: Any
    documented: str | None = None


@dataclass
class PlansAgreement:
    """fastseg's plans (or fingerprint) against nnU-Net's.

    Attributes:
        what: "plans" or "fingerprint".
        compared: leaf values compared.
        differences: every value that differs (documented or not).
    """

    what: str
    compared: int
    differences: list[Difference] = field(default_factory=list)

    @property
    def undocumented(self) -> list[Difference]:
        return [d for d in self.differences if d.documented is None]

    @property
    def ok(self) -> bool:
        return not self.undocumented

    def summary(self) -> str:
        if not self.differences:
            return f"{self.what} identical"
        if self.ok:
            return f"{self.what} identical apart from {len(self.differences)} documented value(s)"
        return f"{self.what} differ in {len(self.undocumented)} value(s): " + ", ".join(d.path for d in self.undocumented[:4]) + (
            ", ..." if len(self.undocumented) > 4 else "")

    def as_json(self) -> dict:
        return {
            "ok": self.ok, "summary": self.summary(), "compared": self.compared,
            "differing_keys": [d.path for d in self.differences],
            "undocumented_keys": [d.path for d in self.undocumented],
            "differences": [asdict(d) for d in self.differences],
        }


def _leaves(value: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        if not value:
            out[path] = {}
        for k, v in value.items():
            _leaves(v, f"{path}.{k}" if path else str(k), out)
    elif isinstance(value, (list, tuple)):
        if not value:
            out[path] = []
        for i, v in enumerate(value):
            _leaves(v, f"{path}[{i}]", out)
    else:
        out[path] = value


def _documented(path: str, a: Any, b: Any) -> str | None:
    for pattern, rel, why in DOCUMENTED_DIFFERENCES:
        if fnmatch.fnmatchcase(path, pattern) and isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if math.isclose(a, b, rel_tol=rel, abs_tol=0.0):
                return f"{why}, relative difference {abs(a - b) / max(abs(b), 1e-300):.1e} <= {rel:g}"
    return None


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, bool) or isinstance(y, bool):
        return x is y  # True == 1 in Python, not in a plans file
    return x == y


def compare_plans(ours: Mapping[str, Any], theirs: Mapping[str, Any], what: str = "plans") -> PlansAgreement:
    """Every leaf value of two plans (or fingerprint) dictionaries, compared by path.

    Args:
        ours: fastseg's plans.json (or dataset_fingerprint.json) as loaded.
        theirs: nnU-Net's.
        what: the name used in the summary ("plans", "fingerprint").

    Returns:
        The PlansAgreement; a key on one side only is a difference with None on the other side.
    """
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    _leaves(ours, "", a)
    _leaves(theirs, "", b)
    differences = []
    for path in sorted(set(a) | set(b)):
        x, y = a.get(path), b.get(path)
        if path in a and path in b and _same(x, y):
            continue
        differences.append(Difference(path, x, y, _documented(path, x, y) if path in a and path in b else None))
    return PlansAgreement(what, len(set(a) | set(b)), differences)


@dataclass
class PreprocessAgreement:
    """fastseg's preprocessed cases against nnU-Net's.

    Attributes:
        cases: cases compared (present on both sides with equal shapes).
        missing: cases that only one tool wrote.
        shape_mismatches: cases whose data or segmentation shapes differ.
        max_relative_difference: the largest max |data difference| / range of nnU-Net's values.
        worst_case: the case where it occurs.
        equal_voxel_fraction: fraction of all data voxels that are exactly equal.
        voxels: data voxels compared.
        seg_differing_voxels: segmentation voxels that differ, over all cases.
        seg_differing_cases: cases whose segmentations differ.
        tolerance: the relative difference up to which the data agree.
    """

    cases: int
    missing: list[str]
    shape_mismatches: list[str]
    max_relative_difference: float
    worst_case: str | None
    equal_voxel_fraction: float
    voxels: int
    seg_differing_voxels: int
    seg_differing_cases: list[str]
    tolerance: float = PREPROCESS_TOLERANCE

    @property
    def ok(self) -> bool:
        return (self.cases > 0 and not self.missing and not self.shape_mismatches and not self.seg_differing_cases
                and self.max_relative_difference <= self.tolerance)

    def summary(self) -> str:
        text = (f"{self.cases} case(s): data max |diff| {self.max_relative_difference:.1e} of range, "
                f"{self.equal_voxel_fraction * 100:.2f} % voxels equal; segmentations "
                + ("equal" if not self.seg_differing_cases else f"differ in {self.seg_differing_voxels} voxel(s)"))
        if self.shape_mismatches:
            text += f"; shapes differ in {len(self.shape_mismatches)} case(s)"
        if self.missing:
            text += f"; only one tool wrote {', '.join(self.missing[:4])}"
        return text

    def as_json(self) -> dict:
        return {"ok": self.ok, "summary": self.summary(), **asdict(self)}


def _fastseg_cases(folder: Path) -> list[str]:
    from fastseg.preprocess.storage import case_identifiers

    return case_identifiers(folder)


def _nnunet_cases(folder: Path) -> list[str]:
    return sorted(p.name[: -len(".b2nd")] for p in folder.glob("*.b2nd") if not p.name.endswith("_seg.b2nd"))


def _read_b2nd(path: Path) -> np.ndarray:
    try:
        import blosc2
    except ImportError:
        raise ImportError(f"reading nnU-Net's {path.name} needs blosc2, which nnunetv2 installs: pip install blosc2") from None
    return np.asarray(blosc2.open(urlpath=str(path), mode="r")[...])


def compare_preprocessed(fastseg_folder: str | os.PathLike, nnunet_folder: str | os.PathLike) -> PreprocessAgreement:
    """fastseg's preprocessed configuration folder against nnU-Net's, case by case.

    Args:
        fastseg_folder: `WORK/<data_identifier>` of `fastseg preprocess`.
        nnunet_folder: `nnUNet_preprocessed/<dataset>/<data_identifier>` of `nnUNetv2_preprocess`.

    Raises:
        FileNotFoundError: a folder is missing.
    """
    from fastseg.preprocess.storage import load_case

    ours_dir, theirs_dir = Path(fastseg_folder), Path(nnunet_folder)
    for folder in (ours_dir, theirs_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"preprocessed folder {folder} not found")
    ours, theirs = _fastseg_cases(ours_dir), _nnunet_cases(theirs_dir)
    missing = sorted(set(ours) ^ set(theirs))
    shapes, seg_cases = [], []
    worst, worst_case, equal, total, seg_voxels = 0.0, None, 0, 0, 0
    for case in sorted(set(ours) & set(theirs)):
        data, seg, _ = load_case(ours_dir, case)
        ref_data = _read_b2nd(theirs_dir / f"{case}.b2nd")
        ref_seg = _read_b2nd(theirs_dir / f"{case}_seg.b2nd")
        if data.shape != ref_data.shape or seg.shape != ref_seg.shape:
            shapes.append(case)
            continue
        data = np.asarray(data, dtype=np.float32)
        ref_data = ref_data.astype(np.float32, copy=False)
        if data.size:
            span = float(ref_data.max()) - float(ref_data.min())
            diff = np.abs(data - ref_data)
            rel = float(diff.max()) / (span if span > 0 else 1.0)
            if worst_case is None or rel > worst:
                worst, worst_case = rel, case
            equal += int(np.count_nonzero(diff == 0))
            total += data.size
        differing = int(np.count_nonzero(np.asarray(seg).astype(np.int32) != ref_seg.astype(np.int32)))
        if differing:
            seg_cases.append(case)
            seg_voxels += differing
    compared = len(set(ours) & set(theirs)) - len(shapes)
    return PreprocessAgreement(
        compared, missing, shapes, worst, worst_case, equal / total if total else float("nan"), total, seg_voxels, seg_cases,
    )


def _segmentations(folder: Path, file_ending: str) -> dict[str, Path]:
    return {p.name: p for p in folder.iterdir() if p.name.endswith(file_ending) and not p.name.startswith(".")}


def label_dice(folder_a: str | os.PathLike, folder_b: str | os.PathLike, file_ending: str) -> dict[int, float]:
    """Dice of each label between two folders of segmentations (files matched by name), pooled
    over the cases; labels that neither folder holds are left out, background (0) too.

    Raises:
        ValueError: the folders share no file, or a pair's shapes differ.
    """
    from fastseg import io as fio

    a, b = _segmentations(Path(folder_a), file_ending), _segmentations(Path(folder_b), file_ending)
    names = sorted(set(a) & set(b))
    if not names:
        raise ValueError(f"{folder_a} and {folder_b} share no {file_ending} file")
    overlap: dict[int, int] = {}
    sizes: dict[int, int] = {}
    for name in names:
        seg_a, _ = fio.read_seg(a[name])
        seg_b, _ = fio.read_seg(b[name])
        if seg_a.shape != seg_b.shape:
            raise ValueError(f"{a[name]} has shape {seg_a.shape[1:]}, {b[name]} {seg_b.shape[1:]}")
        for label in np.union1d(np.unique(seg_a), np.unique(seg_b)):
            label = int(label)
            if label == 0:
                continue
            in_a, in_b = seg_a == label, seg_b == label
            overlap[label] = overlap.get(label, 0) + int(np.count_nonzero(in_a & in_b))
            sizes[label] = sizes.get(label, 0) + int(np.count_nonzero(in_a)) + int(np.count_nonzero(in_b))
    return {label: 2 * overlap[label] / sizes[label] for label in sorted(sizes)}


@dataclass
class SummaryAgreement:
    """fastseg's summary.json against nnU-Net's.

    Attributes:
        values: metric values compared.
        max_abs_difference: the largest |difference| (inf where one side is NaN and the other not).
        worst: where it occurs ("case_0001.nii.gz 1 Dice", "mean 2 IoU", "foreground mean Dice").
        mismatches: values further apart than the tolerance (their places, up to 20).
        missing: cases or keys that one summary lacks.
        tolerance: the absolute difference up to which values agree.
    """

    values: int
    max_abs_difference: float
    worst: str | None
    mismatches: list[str]
    missing: list[str]
    tolerance: float = SUMMARY_TOLERANCE

    @property
    def ok(self) -> bool:
        return self.values > 0 and not self.mismatches and not self.missing

    def summary(self) -> str:
        text = f"{self.values} metric values, max |diff| {self.max_abs_difference:.1e}" + (
            f" (<= {self.tolerance:g})" if self.ok else "")
        if self.mismatches:
            text += f"; {len(self.mismatches)} beyond {self.tolerance:g}"
        if self.missing:
            text += f"; one-sided: {', '.join(self.missing[:3])}"
        return text

    def as_json(self) -> dict:
        return {"ok": self.ok, "summary": self.summary(), **asdict(self)}


def compare_summaries(ours: Mapping[str, Any], theirs: Mapping[str, Any], tolerance: float = SUMMARY_TOLERANCE) -> SummaryAgreement:
    """Every metric of nnU-Net's summary.json against fastseg's (extra fastseg metrics, such as
    HD95, are not compared). Cases are matched by the prediction's file name."""
    pairs: list[tuple[str, Any, Any]] = []
    missing: list[str] = []

    def add(place: str, a: Mapping | None, b: Mapping) -> None:
        """Compares the {key: {metric: value}} mapping `b` (nnU-Net's) with `a` (fastseg's)."""
        if a is None:
            missing.append(place)
            return
        for key, metrics in b.items():
            for metric, value in metrics.items():
                if metric in a.get(key, {}):
                    pairs.append((f"{place} {key} {metric}", a[key][metric], value))
                else:
                    missing.append(f"{place} {key} {metric}")

    by_name = {os.path.basename(c["prediction_file"]): c for c in ours.get("metric_per_case", [])}
    theirs_names = set()
    for case in theirs.get("metric_per_case", []):
        name = os.path.basename(case["prediction_file"])
        theirs_names.add(name)
        add(name, by_name[name]["metrics"] if name in by_name else None, case["metrics"])
    missing.extend(sorted(set(by_name) - theirs_names))
    add("mean", ours.get("mean"), theirs.get("mean", {}))
    add("foreground", {"mean": ours.get("foreground_mean", {})}, {"mean": theirs.get("foreground_mean", {})})

    worst, worst_place, mismatches = 0.0, None, []
    for place, a, b in pairs:
        a, b = float(a), float(b)
        if math.isnan(a) and math.isnan(b):
            continue
        diff = abs(a - b) if not (math.isnan(a) or math.isnan(b)) else math.inf
        if diff > worst:
            worst, worst_place = diff, place
        if diff > tolerance:
            mismatches.append(place)
    return SummaryAgreement(len(pairs), worst, worst_place, mismatches[:20], missing, tolerance)

