"""The work folder `fastseg plan` writes and `fastseg preprocess` (and training) reads.

    <work>/dataset.json               byte copy of the raw dataset's dataset.json
    <work>/dataset_fingerprint.json   nnU-Net's fingerprint schema
    <work>/plans.json                 nnU-Net's plans schema (nnU-Net names it <plans_name>.json)
    <work>/source.json                where the raw dataset is, which planner made the plans
    <work>/<data_identifier>/         preprocessed cases (`fastseg.preprocess.storage`)
    <work>/.fastseg.lock              while a command writes into the folder (`fastseg.runtime.locking`)

Every read of these files goes through `read_json` / `read_plans` (and `interpreting` for what is
taken out of them), so a damaged file -- cut off by a full disk or an interrupted copy, emptied, or
edited by hand -- gives one `WorkFolderError` that names the file, says what is wrong and how to
make it again, never a bare `KeyError` or `JSONDecodeError`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

DATASET_JSON = "dataset.json"
FINGERPRINT = "dataset_fingerprint.json"
PLANS = "plans.json"
SOURCE = "source.json"

#: Keys of plans.json that preprocessing cannot do without.
PLANS_KEYS = ("configurations", "transpose_forward")


class WorkFolderError(ValueError):
    """A work-folder file that cannot be used: not JSON, not an object, or lacking what fastseg needs.
    The message names the file, says what is wrong and how to write it again."""


def _remedy(path: Path) -> str:
    """How to write the work folder's files again; names the raw dataset when source.json does."""
    work = path.parent
    raw = "RAW_DATASET_DIR"
    with contextlib.suppress(OSError, ValueError, KeyError, AttributeError, TypeError):
        raw = str(json.loads((work / SOURCE).read_text())["raw_dataset_dir"]) or raw
    return f"rerun `fastseg plan {raw} -o {work}` to write it again"


def damaged(path: str | Path, what: str) -> WorkFolderError:
    """The error for a work-folder file whose content is wrong (`what`: what is wrong with it)."""
    path = Path(path)
    return WorkFolderError(f"{path} is damaged or was not written by `fastseg plan`: {what}; {_remedy(path)}")


def read_json(path: str | Path, required: Sequence[str] = ()) -> dict:
    """A work-folder JSON file, which must hold a JSON object with the `required` keys.

    Args:
        path: the file.
        required: top-level keys the caller needs (default: none).

    Raises:
        FileNotFoundError: the file is missing (the message says how to make it).
        WorkFolderError: it cannot be read, is not valid JSON, is not an object, or lacks a key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `fastseg plan RAW_DATASET_DIR -o {path.parent}` first")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise WorkFolderError(f"{path} cannot be read ({e}); {_remedy(path)}") from None
    try:
        content = json.loads(text)
    except json.JSONDecodeError as e:
        where = "it is empty" if not text.strip() else f"{e.msg} at line {e.lineno}, column {e.colno}"
        raise WorkFolderError(
            f"{path} is not valid JSON ({where}): it was cut off or damaged, perhaps by a full disk or an "
            f"interrupted copy; {_remedy(path)}"
        ) from None
    if not isinstance(content, dict):
        raise damaged(path, f"it must hold a JSON object, got a JSON {type(content).__name__}")
    missing = [k for k in required if k not in content]
    if missing:
        raise damaged(path, ", ".join(f"missing key {k!r}" for k in missing))
    return content


def read_plans(path: str | Path) -> dict:
    """plans.json, checked as far as preprocessing relies on its shape: `configurations` an object
    of objects, `transpose_forward` a list.

    Raises:
        FileNotFoundError, WorkFolderError: as in `read_json`.
    """
    plans = read_json(path, PLANS_KEYS)
    configurations = plans["configurations"]
    if not isinstance(configurations, dict):
        raise damaged(path, f"'configurations' must be a JSON object, got {type(configurations).__name__}")
    for name, cfg in configurations.items():
        if not isinstance(cfg, dict):
            raise damaged(path, f"configuration {name!r} must be a JSON object, got {type(cfg).__name__}")
    if not isinstance(plans["transpose_forward"], list):
        raise damaged(path, f"'transpose_forward' must be a list, got {plans['transpose_forward']!r}")
    return plans


@contextlib.contextmanager
def interpreting(path: str | Path, what: str) -> Iterator[None]:
    """Turns a KeyError, TypeError, AttributeError or IndexError raised while taking `what` out of the
    content of `path` (a missing key, a value of the wrong kind) into a `WorkFolderError` naming both."""
    try:
        yield
    except KeyError as e:
        raise damaged(path, f"{what}: missing key {e.args[0]!r}") from e
    except (TypeError, AttributeError, IndexError) as e:
        raise damaged(path, f"{what}: unexpected content ({type(e).__name__}: {e})") from e
