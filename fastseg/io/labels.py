"""dataset.json's `labels`: plain labels, regions and the ignore label, with nnU-Net's rules.

    "labels": {"background": 0, "liver": 1, "tumor": 2}                     plain labels
    "labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "et": 3}  regions: a value that is
                                                                             a list of more than one
                                                                             label makes the dataset
                                                                             region-based
    "labels": {"background": 0, "liver": 1, "ignore": 2}                     ignore label: unannotated
                                                                             voxels, excluded from the loss

The label values a segmentation may contain are the union of all declared values and region
members, plus the ignore label. nnU-Net requires background 0, those values consecutive (0, 1, 2,
...), the ignore label one above the largest, and `regions_class_order` (one entry per region) when
regions are used; `label_problems` reports each violated rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

LabelValue = int | tuple[int, ...]


def _as_int(value, name: str, problems: list[str]) -> int | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        problems.append(f"labels[{name!r}] = {value!r} is not an integer label value")
        return None
    if f != int(f):
        problems.append(f"labels[{name!r}] = {value!r} is not an integer label value")
        return None
    return int(f)


@dataclass(frozen=True)
class LabelSpec:
    """The parsed `labels` (and `regions_class_order`) of a dataset.json.

    Attributes:
        labels: name -> int, or tuple of ints for a region (lists in the JSON become tuples).
        regions_class_order: dataset.json's `regions_class_order`, or None.
        problems: what is wrong with the declaration (empty when nnU-Net would accept it).
    """

    labels: dict[str, LabelValue]
    regions_class_order: tuple[int, ...] | None = None
    problems: tuple[str, ...] = field(default=())

    @classmethod
    def from_json(cls, labels: Mapping, regions_class_order=None) -> LabelSpec:
        """Parses dataset.json's `labels` mapping; problems are collected, not raised."""
        problems: list[str] = []
        parsed: dict[str, LabelValue] = {}
        if not isinstance(labels, Mapping) or not labels:
            return cls({}, None, (f"'labels' must be a non-empty mapping name -> value, got {labels!r}",))
        for name, value in labels.items():
            if isinstance(value, (list, tuple)):
                members = [_as_int(v, name, problems) for v in value]
                if not members:
                    problems.append(f"labels[{name!r}] is an empty region; list its label values")
                parsed[name] = tuple(m for m in members if m is not None)
            else:
                v = _as_int(value, name, problems)
                if v is not None:
                    parsed[name] = v
        order = None
        if regions_class_order is not None:
            try:
                order = tuple(int(v) for v in regions_class_order)
            except (TypeError, ValueError):
                problems.append(f"regions_class_order must be a list of integers, got {regions_class_order!r}")
        spec = cls(parsed, order)
        problems.extend(spec._rule_problems())
        return cls(parsed, order, tuple(problems))

    @property
    def ignore_label(self) -> int | None:
        """The value of the `ignore` label, or None."""
        v = self.labels.get("ignore")
        return v if isinstance(v, int) else None

    @property
    def has_regions(self) -> bool:
        """True when some label value is a region of more than one label (nnU-Net's rule)."""
        return any(isinstance(v, tuple) and len(v) > 1 for v in self.labels.values())

    @property
    def all_labels(self) -> list[int]:
        """Sorted label values, region members included, the ignore label excluded (nnU-Net's all_labels)."""
        values: set[int] = set()
        for name, v in self.labels.items():
            if name == "ignore":
                continue
            values.update(v if isinstance(v, tuple) else (v,))
        return sorted(values)

    @property
    def foreground_labels(self) -> list[int]:
        """`all_labels` without background 0."""
        return [v for v in self.all_labels if v != 0]

    @property
    def regions(self) -> list[LabelValue] | None:
        """The regions in declaration order (background and ignore skipped), or None without regions."""
        if not self.has_regions:
            return None
        out: list[LabelValue] = []
        for name, v in self.labels.items():
            if name == "ignore" or v == 0 or (isinstance(v, tuple) and set(v) == {0}):
                continue
            out.append(v)
        return out

    @property
    def expected_values(self) -> list[int]:
        """Every value a segmentation may contain: `all_labels` plus the ignore label."""
        ignore = self.ignore_label
        return self.all_labels + ([ignore] if ignore is not None and ignore not in self.all_labels else [])

    def _rule_problems(self) -> list[str]:
        problems = []
        if "background" not in self.labels:
            problems.append("'labels' has no 'background' entry; declare \"background\": 0")
        elif self.labels["background"] != 0:
            problems.append(f"'background' must be label 0, got {self.labels['background']!r}")
        if "ignore" in self.labels and not isinstance(self.labels["ignore"], int):
            problems.append(f"the ignore label must be a single integer, not a region: {self.labels['ignore']!r}")
        values = self.all_labels
        if values and values != list(range(values[0], values[0] + len(values))):
            missing = sorted(set(range(values[0], values[-1] + 1)) - set(values))
            problems.append(f"label values must be consecutive (0, 1, 2, ...), got {values}; missing {missing}")
        ignore = self.ignore_label
        if ignore is not None and values and ignore != max(values) + 1:
            problems.append(
                f"the ignore label must be the largest value, max(labels) + 1 = {max(values) + 1}, got {ignore}"
            )
        if self.has_regions:
            n = len(self.regions or [])
            if self.regions_class_order is None:
                problems.append(
                    f"labels define {n} regions but dataset.json has no 'regions_class_order'; add one entry per "
                    "region (the label each region is written as, e.g. [1, 2, 3])"
                )
            elif len(self.regions_class_order) != n:
                problems.append(
                    f"regions_class_order has {len(self.regions_class_order)} entries but labels define {n} regions; "
                    "give one per region"
                )
        return problems
