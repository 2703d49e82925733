"""Who owns a file or folder: one writer per work folder, and leftovers told apart from work in flight.

Two tools, both below every stage that writes:

- `folder_lock(folder, purpose)`: an exclusive lock on `<folder>/.fastseg.lock` (`flock`). It does
  not wait: a second command on the same folder stops at once with `FolderInUseError`, naming the
  process that holds the folder, what it is doing and the folder. The kernel ends the lock with the
  process that held it -- also one killed by SIGKILL or the out-of-memory killer -- so no stale
  lock can remain, and the lock file itself is removed when its holder lets go.
- `owner_token()` / `owner_alive(token)`: temporary files and staging folders carry their
  writer's token in their names (`.tmp-<token>-...`, `.staging-<token>-...`), so a later run
  removes what a killed writer left and never what a live one is still writing. The token is the
  pid and, where /proc tells it, the process's start time, so a pid the system has since given to
  another process does not keep a dead writer's leftovers alive, and a tag of the machine's name:
  on a filesystem that several machines share, a process on one cannot tell whether a writer on
  another is alive, so it leaves that writer's files alone (`OWNER_PATTERN` matches every form).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

#: The lock file `folder_lock` creates in the folder it locks (and removes again).
LOCK_NAME = ".fastseg.lock"


class FolderInUseError(RuntimeError):
    """Another process holds the folder's lock.

    Attributes:
        folder: the folder.
        pid: the holder's process id (None when it could not be read).
        purpose: what the holder said it is doing ("fastseg preprocess"), or None.
    """

    def __init__(self, folder: Path, pid: int | None, purpose: str | None) -> None:
        who = f"pid {pid}" if pid is not None else "process id unknown"
        if purpose:
            who += f" ({purpose})"
        super().__init__(
            f"{folder} is in use by another fastseg process ({who}); only one command at a time may write into "
            "a folder: wait for it to finish (or stop it), then rerun"
        )
        self.folder, self.pid, self.purpose = folder, pid, purpose


def _start_time(pid: int) -> tuple[str, str] | None:
    """(start time in clock ticks since boot, state letter) of a process, from /proc; None where
    /proc does not tell (not Linux, or the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # "pid (comm) state ppid ... starttime ...": comm may hold spaces and parentheses.
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) < 20:
        return None
    return fields[19], fields[0]


_token: tuple[int, str] | None = None  # (pid, token): a forked child has another pid and recomputes

#: A token in a file name: "<pid>", "<pid>.<start time>", either with "@<machine tag>" (8 hex digits).
OWNER_PATTERN = r"\d+(?:\.\d+)?(?:@[0-9a-f]{8})?"


def machine_tag() -> str:
    """8 hex digits naming this machine (a hash of its host name) in owner tokens."""
    import hashlib
    import socket

    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def owner_token() -> str:
    """This process's token: "<pid>.<start time>@<machine tag>", or "<pid>@<machine tag>" where the
    start time is unknown."""
    global _token
    pid = os.getpid()
    if _token is None or _token[0] != pid:
        info = _start_time(pid)
        _token = (pid, f"{pid}.{info[0]}@{machine_tag()}" if info else f"{pid}@{machine_tag()}")
    return _token[1]


def owner_alive(token: str) -> bool:
    """False when the process a token names has ended (a zombie counts as ended) or its pid now
    belongs to a process that started at another time; True otherwise, and for a token that cannot
    be read (what is not understood is never removed) and for one written on another machine (tokens
    without a machine tag count as this machine's)."""
    token, _, machine = token.partition("@")
    if machine and machine != machine_tag():
        return True
    pid_text, _, start = token.partition(".")
    try:
        pid = int(pid_text)
    except ValueError:
        return True
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    info = _start_time(pid)
    if info is not None:
        started, state = info
        if state in ("Z", "X") or (start and started != start):
            return False
    return True


def _holder(fd: int) -> tuple[int | None, str | None]:
    """(pid, purpose) the holder wrote into the lock file; it writes right after locking, so a
    moment is allowed for that."""
    for _ in range(25):
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if text:
            pid_text, _, purpose = text.partition(" ")
            try:
                return int(pid_text), purpose or None
            except ValueError:
                return None, None
        time.sleep(0.02)
    return None, None


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, purpose: str) -> Iterator[Path]:
    """Holds the exclusive lock of `folder` for the block; fails at once when another process holds it.

    Args:
        folder: an existing folder.
        purpose: what the holder does, shown to whoever finds the folder locked ("fastseg plan").

    Yields:
        The lock file's path.

    Raises:
        FolderInUseError: another process (or another lock in this process) holds the folder.
        OSError: the lock file cannot be created (a read-only folder, a missing one).
    """
    folder = Path(folder)
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = _holder(fd)
            finally:
                os.close(fd)
            raise FolderInUseError(folder, *holder) from None
        # The previous holder removes the file when it lets go: a lock on a file no longer at `path`
        # guards nothing. Lock the file that is there.
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        with contextlib.suppress(OSError):  # a full disk: the lock holds, only its label is lost
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {purpose}\n".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked: nobody can hold a lock on it at this moment
        os.close(fd)
