"""Running a command the way a user does and measuring it: wall time and peak memory.

Memory is the peak of the summed proportional set size (PSS, `/proc/<pid>/smaps_rollup`) over the
command's whole process tree (worker processes included), sampled every `interval` seconds. PSS
charges a page shared by n processes 1/n to each, so forked workers that share libraries are not
counted several times, as summed RSS would count them. Linux only (elsewhere: no memory figure).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Measured:
    """One run of a command.

    Attributes:
        command: the command line.
        returncode: its exit status.
        wall_s: wall time from start to exit, seconds.
        peak_pss_bytes: peak summed PSS of its process tree (None where /proc cannot tell).
        stdout, stderr: what it printed.
    """

    command: list[str]
    returncode: int
    wall_s: float
    peak_pss_bytes: int | None
    stdout: str
    stderr: str


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(c) for c in f.read().split())
    except OSError:
        pass
    return out


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    """`pid` and its live descendants."""
    found, todo, seen = [], [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        found.append(p)
        todo.extend(_children(p))
    return found


def tree_pss_bytes(pid: int) -> int:
    """Summed PSS of `pid` and all its descendants, now."""
    return sum(_pss_bytes(p) for p in _tree(pid))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, ValueError, IndexError):
        return 0.0


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by `pid` and its live descendants (all threads): the
    difference of two readings is the work done in between, whatever share of the CPUs other
    processes took meanwhile."""
    return sum(_cpu_seconds(p) for p in _tree(pid))


def run_measured(
    command: Sequence[str],
    *,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    cpus: set[int] | None = None,
    interval: float = 0.05,
    timeout: float | None = None,
) -> Measured:
    """Runs `command` to its end, sampling its process tree's memory.

    Args:
        command: program and arguments.
        cwd: working folder (default: this one).
        env: its environment (default: this one's).
        cpus: CPUs the command (and every process it starts) may run on; None: all.
        interval: seconds between memory samples (default 0.05).
        timeout: seconds before the command is killed (subprocess.TimeoutExpired is raised).
    """
    from fastseg.runtime.workers import child_import_environment

    measurable = Path("/proc/self/smaps_rollup").exists()
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    env = child_import_environment(env if env is not None else os.environ)
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(command), cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", preexec_fn=preexec,
    )
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_pss_bytes(proc.pid))
            done.wait(interval)

    sampler = threading.Thread(target=sample, name="memory-sampler", daemon=True)
    if measurable:
        sampler.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    finally:
        wall = time.perf_counter() - start
        done.set()
        if measurable:
            sampler.join()
    return Measured(list(command), proc.returncode, wall, peak[0] if measurable else None, stdout, stderr)
