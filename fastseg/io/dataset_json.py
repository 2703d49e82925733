"""dataset.json: reading and checking it, and making one as nnU-Net's `generate_dataset_json` does.

Required keys (nnU-Net's verify_dataset_integrity): `channel_names` (legacy: `modality`), `labels`,
`numTraining`, `file_ending`. Optional keys fastseg understands: `regions_class_order` (required
with region labels), `dataset` (cases listed explicitly, see `fastseg.io.dataset`), and anything else
(name, description, licence, ...) is kept as is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from fastseg.io.atomic import write_json_atomic
from fastseg.io.formats import reader_for
from fastseg.io.labels import LabelSpec
from fastseg.io.report import Problem

#: Keys nnU-Net's verify_dataset_integrity requires (`modality` is accepted for `channel_names`).
REQUIRED_KEYS = ("labels", "channel_names", "numTraining", "file_ending")


def json_problem(message: str, severity: str = "error") -> Problem:
    """A problem with dataset.json itself."""
    return Problem(message, "dataset.json", severity, kind="dataset_json")  # type: ignore[arg-type]


def read_dataset_json(root: Path) -> tuple[dict | None, list[Problem]]:
    """Loads and checks dataset.json.

    Returns:
        `(content, problems)`; content is None when the files cannot be located without it (no
        file, invalid JSON, no usable `file_ending` or `channel_names`).
    """
    path = root / "dataset.json"
    if not path.is_file():
        return None, [
            json_problem(
                "not found; every raw dataset needs a dataset.json with channel_names, labels, numTraining and "
                "file_ending (see nnU-Net's dataset format docs, or create datasets with `fastseg convert`)"
            )
        ]
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        return None, [json_problem(f"is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}")]
    except (OSError, UnicodeDecodeError) as e:
        return None, [json_problem(f"cannot be read: {e}")]
    if not isinstance(content, dict):
        return None, [json_problem(f"must hold a JSON object, got {type(content).__name__}")]

    problems: list[Problem] = []
    usable = True
    present = set(content) | ({"channel_names"} if "modality" in content else set())
    missing = [k for k in REQUIRED_KEYS if k not in present]
    if missing:
        problems.append(
            json_problem(
                f"missing required keys {missing} (required: {list(REQUIRED_KEYS)}; present: {sorted(content)})"
            )
        )
        usable = "file_ending" not in missing and "channel_names" not in missing

    names = content.get("channel_names", content.get("modality"))
    if names is not None and (not isinstance(names, dict) or not names):
        problems.append(json_problem(f"'channel_names' must map '0', '1', ... to channel names, got {names!r}"))
        usable = False
    elif isinstance(names, dict) and [str(k) for k in names] != [str(i) for i in range(len(names))]:
        problems.append(
            json_problem(
                f"'channel_names' keys should be '0', '1', ... in order, got {list(names)}; nnU-Net uses them in this order",
                "warning",
            )
        )

    n = content.get("numTraining")
    if "numTraining" in content and (isinstance(n, bool) or not isinstance(n, int)):
        problems.append(json_problem(f"'numTraining' must be an integer, got {n!r}"))

    ending = content.get("file_ending")
    if "file_ending" in content:
        if not isinstance(ending, str) or not ending.startswith("."):
            problems.append(json_problem(f"'file_ending' must be a string like '.nii.gz', got {ending!r}"))
            usable = False
        else:
            try:
                reader_for(ending)
            except ValueError as e:
                problems.append(json_problem(str(e)))
                usable = False

    if "labels" in content:
        spec = LabelSpec.from_json(content["labels"], content.get("regions_class_order"))
        problems.extend(json_problem(m) for m in spec.problems)
    return (content if usable else None), problems


def make_dataset_json(
    *,
    channel_names: Mapping[int | str, str],
    labels: Mapping[str, int | Sequence[int]],
    num_training: int,
    file_ending: str,
    regions_class_order: Sequence[int] | None = None,
    **extra,
) -> dict:
    """A dataset.json dict as nnU-Net's `generate_dataset_json` writes it.

    Args:
        channel_names: channel index -> name ({0: "CT"}); keys become strings. The names pick the
            normalization ("CT" -> CT normalization, anything else z-score; see nnU-Net's docs).
        labels: name -> value, a list/tuple of values for a region; must include "background": 0.
        num_training: number of training cases.
        file_ending: ".nii.gz", ".png", ...
        regions_class_order: required when `labels` has regions.
        **extra: further keys (name, description, reference, licence, ...), written as given.

    Raises:
        ValueError: labels that break nnU-Net's rules (the message lists them).
    """
    out_labels = {k: (list(int(i) for i in v) if isinstance(v, (list, tuple)) else int(v)) for k, v in labels.items()}
    spec = LabelSpec.from_json(out_labels, regions_class_order)
    if spec.problems:
        raise ValueError("invalid labels for dataset.json: " + "; ".join(spec.problems))
    content = {
        "channel_names": {str(k): str(v) for k, v in channel_names.items()},
        "labels": out_labels,
        "numTraining": int(num_training),
        "file_ending": file_ending,
    }
    if regions_class_order is not None:
        content["regions_class_order"] = [int(i) for i in regions_class_order]
    content.update(extra)
    return content


def write_dataset_json(root: str | os.PathLike, content: Mapping) -> Path:
    """Writes `root/dataset.json` atomically and returns its path."""
    path = Path(root) / "dataset.json"
    write_json_atomic(dict(content), path)
    return path
