"""Atomic file writes: write to a hidden temporary sibling, then rename over the target.

A reader never sees a half-written file, and an interrupted write leaves the old file (or nothing)
behind. The temporary name keeps the target's full name as its tail
(`.tmp-<owner>-<random>-case.nii.gz`), so writers that pick the format from the file ending
(SimpleITK, Pillow) still see the right ending, and dataset scans skip it as a hidden file. `<owner>`
is the writing process's token (`fastseg.runtime.locking.owner_token`): `remove_abandoned_temporaries`
removes the temporaries of processes that were killed, never those of one still writing.

A write that fails for want of space -- ENOSPC, EDQUOT, or the short write numpy reports as
"N requested and M written" -- raises `DiskFullError` naming the file, and leaves no temporary file.
`StagedFiles` writes several files of one folder all or nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastseg.runtime.locking import OWNER_PATTERN, owner_alive, owner_token

_TEMPORARY = re.compile(rf"^\.tmp-(?:(?P<owner>{OWNER_PATTERN})-)?[0-9a-f]{{8}}-.")
_SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")


class DiskFullError(OSError):
    """A file could not be written for want of space (no space left, quota exceeded, short write).
    Its message names the file and says what to do; `reason` says which of these it was."""

    reason = "no space left"

    def __str__(self) -> str:
        return str(self.strerror)


def _disk_full_reason(err: BaseException) -> str | None:
    """Why `err` means the disk is full, or None when it does not."""
    if not isinstance(err, OSError):
        return None
    if isinstance(err, DiskFullError):
        return err.reason
    if err.errno == errno.ENOSPC:
        return "no space left on the device"
    if err.errno == getattr(errno, "EDQUOT", None):
        return "disk quota exceeded"
    if m := _SHORT_WRITE.search(str(err)):
        return f"only {m[2]} of {m[1]} bytes could be written"
    return None


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f"; {free / 1e3:.0f} KB free there" if free < 1e6 else f"; {free / 1e6:.1f} MB free there"


def disk_full_error(target: str | os.PathLike, err: BaseException) -> DiskFullError | None:
    """The `DiskFullError` for a failed write of `target` when `err` says the disk is full, else None."""
    reason = _disk_full_reason(err)
    if reason is None:
        return None
    target = Path(target)
    full = DiskFullError(
        errno.ENOSPC,
        f"cannot write {target}: the disk is full ({reason}{_free_space(target.parent)}); free space on that "
        "disk or write to another one, then rerun",
    )
    full.reason = reason
    return full


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path next to `path`; renames it onto `path` when the block succeeds.

    Args:
        path: the final file. Its folder must exist.

    Yields:
        The temporary path to write to. When the block raises, the temporary file is removed and the
        target is left untouched.

    Raises:
        DiskFullError: the block (or the rename) failed for want of space; names `path`.
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write {target}: folder {target.parent} does not exist; create it first")
    tmp = target.with_name(f".tmp-{owner_token()}-{secrets.token_hex(4)}-{target.name}")
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as err:
        full = disk_full_error(target, err)
        if full is not None:
            raise full from err
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def remove_abandoned_temporaries(folder: str | os.PathLike) -> int:
    """Deletes the temporary files (`.tmp-*`) in `folder` whose writer has ended -- killed, or
    interrupted before it could clean up -- and those of fastseg versions that did not record their
    writer; a live process's files in flight stay. Returns how many were deleted."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    count = 0
    for p in folder.iterdir():
        m = _TEMPORARY.match(p.name)
        if m is None or (m["owner"] is not None and owner_alive(m["owner"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            count += 1
    return count


class StagedFiles:
    """Several files of one folder written all or nothing.

    Each file is written to a temporary name first (`path(name)`, or `writing(name)`, which also
    names the file in a `DiskFullError`); `commit()` renames them all onto their names -- renames
    need no space, so once every file is written the rest cannot fail for a full disk -- and
    `discard()` (or leaving a `with` block by an exception) removes them, leaving the folder's files
    as they were.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._staged: dict[str, Path] = {}

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    def path(self, name: str) -> Path:
        """The temporary path to write the file `name` to."""
        if name not in self._staged:
            self._staged[name] = self.folder / f".tmp-{owner_token()}-{secrets.token_hex(4)}-{name}"
        return self._staged[name]

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[Path]:
        """`path(name)` for the block; a full disk in it raises `DiskFullError` naming `folder/name`."""
        try:
            yield self.path(name)
        except OSError as err:
            full = disk_full_error(self.folder / name, err)
            if full is not None:
                raise full from err
            raise

    def commit(self) -> list[Path]:
        """Moves every staged file onto its name; returns the final paths."""
        done = []
        for name, tmp in self._staged.items():
            os.replace(tmp, self.folder / name)
            done.append(self.folder / name)
        self._staged.clear()
        return done

    def discard(self) -> None:
        for tmp in self._staged.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._staged.clear()


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

    Raises:
        DiskFullError: no space to write it (nothing is left behind).
    """
    # json.dumps (not json.dump) runs the C encoder.
    text = json.dumps(obj, sort_keys=sort_keys, indent=indent, default=json_default) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
