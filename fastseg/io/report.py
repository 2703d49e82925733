"""What verification found: problems (errors and warnings), each naming its file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One finding.

    Attributes:
        message: what was expected, what was found and what to do.
        file: the file (relative to the dataset root where possible) or None for dataset-wide findings.
        severity: "error" fails verification; "warning" is reported and passes.
        kind: what was checked: "dataset_json", "layout" (missing files or folders), "stray" (files
            that belong to no case), "count" (numTraining), "content" (what the files hold).
        case: the case identifier the problem belongs to, when there is one.
    """

    message: str
    file: str | None = None
    severity: Severity = "error"
    kind: str = "content"
    case: str | None = None

    def __str__(self) -> str:
        return f"{self.file}: {self.message}" if self.file else self.message


@dataclass
class VerificationReport:
    """Everything `verify_dataset` found in one raw dataset.

    Attributes:
        root: the dataset folder.
        num_training: training cases found.
        num_test: test cases found (imagesTs).
        problems: errors and warnings, in the order found (dataset.json first, then files, then cases
            sorted by identifier).
        analyses: with `verify_dataset(..., analyze=fn)`, `fn`'s result per training case that
            passed its content checks (identifier -> result); empty otherwise. Not part of
            `format` / `to_dict`.
    """

    root: Path
    num_training: int = 0
    num_test: int = 0
    problems: list[Problem] = field(default_factory=list)
    analyses: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not self.errors

    def format(self, max_per_kind: int | None = None) -> str:
        """A human-readable report: a summary line, then every error, then every warning.

        Args:
            max_per_kind: show at most this many errors and warnings each (None: all, the default).
        """
        lines = [
            f"{'OK' if self.ok else 'FAILED'}: {self.root} -- {self.num_training} training and {self.num_test} test "
            f"cases, {len(self.errors)} errors, {len(self.warnings)} warnings"
        ]
        for title, items in (("errors", self.errors), ("warnings", self.warnings)):
            if not items:
                continue
            lines.append(f"{title}:")
            shown = items if max_per_kind is None else items[:max_per_kind]
            lines.extend(f"  - {p}" for p in shown)
            if len(shown) < len(items):
                lines.append(f"  ... and {len(items) - len(shown)} more")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready form: {'root', 'ok', 'num_training', 'num_test', 'errors': [...], 'warnings': [...]}."""
        return {
            "root": str(self.root),
            "ok": self.ok,
            "num_training": self.num_training,
            "num_test": self.num_test,
            "errors": [{"file": p.file, "message": p.message} for p in self.errors],
            "warnings": [{"file": p.file, "message": p.message} for p in self.warnings],
        }
