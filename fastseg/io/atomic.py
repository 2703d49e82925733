"""Atomic file writes: write to a hidden temporary sibling, then rename over the target.

A reader never sees a half-written file, and an interrupted write leaves the old file (or nothing)
behind. The temporary name keeps the target's full name as its tail (`.tmp-<random>-case.nii.gz`), so
writers that pick the format from the file ending (SimpleITK, Pillow) still see the right ending, and
dataset scans skip it as a hidden file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path next to `path`; renames it onto `path` when the block succeeds.

    Args:
        path: the final file. Its folder must exist.

    Yields:
        The temporary path to write to. When the block raises, the temporary file is removed and the
        target is left untouched.
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write {target}: folder {target.parent} does not exist; create it first")
    tmp = target.with_name(f".tmp-{secrets.token_hex(4)}-{target.name}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def json_default(o: Any) -> Any:
    """`json.dumps(..., default=json_default)`: numpy arrays, scalars and paths as plain JSON."""
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"cannot store a {type(o).__name__} in JSON")


def write_json_atomic(obj: Any, path: str | os.PathLike, *, sort_keys: bool = False, indent: int | None = 4) -> Path:
    """Writes `obj` as JSON (tuples become lists, numpy values plain numbers), atomically.

    Args:
        obj: the content.
        path: the file; its folder must exist.
        sort_keys, indent: as in `json.dumps`.

    Returns:
        `path` as a Path.
    """
    # json.dumps (not json.dump) runs the C encoder.
    text = json.dumps(obj, sort_keys=sort_keys, indent=indent, default=json_default) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
