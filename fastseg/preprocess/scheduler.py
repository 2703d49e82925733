"""Parallel work over cases with a memory budget.

Cases go to a pool of worker processes (forkserver on Linux, so the workers never inherit the
parent's OpenMP or torch threads; spawn elsewhere). A case is submitted only while the estimated
memory of all cases in flight stays within the budget, so a few large cases run with less
concurrency instead of exhausting RAM; a case larger than the whole budget runs alone. Each worker
limits its native (OpenMP) threads to its share of the cores, so `-j` workers never oversubscribe
the CPU. With one worker everything runs in this process.

Results come back as the cases finish; a failing case raises `CaseError` naming the case, and a
worker that dies (typically killed for memory) raises one that says so.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import logging
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

_BUDGET_FRACTION = 0.75


class CaseError(RuntimeError):
    """A case failed in a worker; `case` names it and the original exception is chained."""

    def __init__(self, case: str, message: str) -> None:
        super().__init__(f"case {case!r}: {message}")
        self.case = case


@dataclass(frozen=True)
class Job:
    """One case's work.

    Attributes:
        key: the case identifier (reported in errors and used to key results).
        args: positional arguments of the worker function (picklable).
        memory_bytes: estimated peak memory of the work (>= 0).
    """

    key: str
    args: tuple
    memory_bytes: int = 0


def available_memory() -> int:
    """Bytes of memory the system can still give (Linux MemAvailable), or a conservative guess."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def default_num_workers() -> int:
    """The core count this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


_thread_limit = None  # keeps the worker's threadpoolctl limit alive


def _init_worker(threads: int) -> None:
    """Worker initializer: load the native module, then cap its OpenMP threads."""
    global _thread_limit
    from fastseg import _native

    _native.cpu()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scipy/sklearn stacks
        return
    _thread_limit = threadpool_limits(limits=threads, user_api="openmp")


def _context(module: str) -> multiprocessing.context.BaseContext:
    if sys.platform.startswith("linux"):
        ctx = multiprocessing.get_context("forkserver")
        # The fork server imports the worker function's module once (only the first pool of a
        # process sets it), so the workers forked from it start without importing anything.
        ctx.set_forkserver_preload([module, "fastseg.io"])
        return ctx
    return multiprocessing.get_context("spawn")


def start_fork_server(modules: Sequence[str]) -> bool:
    """Starts the fork server of this process's worker pools now, preloading `modules`.

    Its start (an interpreter that imports numpy, SimpleITK and the kernels: a few tenths of a
    second) then overlaps with what this process does before it needs workers -- its own imports,
    reading plans, listing cases -- instead of delaying the first case. Call it first thing in a
    command that will run `run_jobs` (or `fastseg.io.parallel.parallel_map`) with several workers.
    Later pools reuse the running server (their own preload lists are then ignored, and what they
    need beyond `modules` is imported by each worker).

    Args:
        modules: modules the workers need, e.g. ["fastseg.preprocess.worker", "fastseg.io"].

    Returns:
        True when a fork server runs now; False off Linux (workers are spawned there).
    """
    if not sys.platform.startswith("linux"):
        return False
    from multiprocessing import forkserver

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(modules))
    forkserver.ensure_running()
    return True


def _resolve(fn: Callable | str) -> Callable:
    if callable(fn):
        return fn
    module, _, name = fn.partition(":")
    return getattr(importlib.import_module(module), name)


def _call(fn: Callable | str, *args: Any) -> Any:
    """Runs in a worker: resolves "module:function" there, so the parent never imports it."""
    return _resolve(fn)(*args)


def run_jobs(
    fn: Callable[..., Any] | str,
    jobs: Sequence[Job],
    num_workers: int,
    *,
    memory_budget: int | None = None,
    desc: str = "cases",
    progress: bool | None = None,
) -> Iterator[tuple[str, Any]]:
    """Runs `fn(*job.args)` for every job and yields `(job.key, result)` as they finish.

    Args:
        fn: a module-level (picklable) function, or "package.module:function" to import it in the
            workers only (keeps heavy imports out of this process).
        jobs: the cases; larger estimates are started first.
        num_workers: worker processes (>= 1); 1 runs in this process.
        memory_budget: bytes the cases in flight may use together; default 75 % of the available
            memory. A job larger than the budget still runs, alone.
        desc: label of the progress bar.
        progress: show a progress bar (tqdm); default only when stderr is a terminal.

    Raises:
        ValueError: num_workers < 1.
        CaseError: a case raised (the original exception is chained) or its worker died.
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if not jobs:
        return
    from tqdm import tqdm

    disable = not sys.stderr.isatty() if progress is None else not progress
    with tqdm(total=len(jobs), desc=desc, unit="case", disable=disable) as bar:
        for key, result in _run(fn, jobs, num_workers, memory_budget):
            bar.update()
            yield key, result


def _run(fn, jobs, num_workers, memory_budget):
    if num_workers == 1 or len(jobs) == 1:
        fn = _resolve(fn)
        for job in jobs:
            try:
                result = fn(*job.args)
            except Exception as err:
                raise CaseError(job.key, f"{type(err).__name__}: {err}") from err
            yield job.key, result
        return

    budget = int(memory_budget if memory_budget is not None else available_memory() * _BUDGET_FRACTION)
    pending = sorted(jobs, key=lambda j: -j.memory_bytes)
    workers = min(num_workers, len(jobs))
    threads = max(1, default_num_workers() // workers)
    in_flight: dict[cf.Future, Job] = {}
    used = 0
    module = fn.partition(":")[0] if isinstance(fn, str) else fn.__module__
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=_context(module), initializer=_init_worker, initargs=(threads,)) as pool:
        try:
            while pending or in_flight:
                # Fill the pool with the largest jobs that fit; one job always runs.
                i = 0
                while i < len(pending) and len(in_flight) < workers:
                    job = pending[i]
                    if in_flight and used + job.memory_bytes > budget:
                        i += 1
                        continue
                    if not in_flight and job.memory_bytes > budget:
                        logger.warning(
                            "case %s needs about %.1f GB, more than the %.1f GB budget: running it alone",
                            job.key, job.memory_bytes / 1e9, budget / 1e9,
                        )
                    in_flight[pool.submit(_call, fn, *job.args)] = job
                    used += job.memory_bytes
                    pending.pop(i)
                done, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    job = in_flight.pop(fut)
                    used -= job.memory_bytes
                    try:
                        result = fut.result()
                    except BrokenProcessPool as err:
                        raise CaseError(
                            job.key,
                            "a worker process died while processing it (most likely killed for lack of memory); "
                            f"rerun with fewer workers (-j {max(1, workers // 2)})",
                        ) from err
                    except Exception as err:
                        raise CaseError(job.key, f"{type(err).__name__}: {err}") from err
                    yield job.key, result
        except BaseException:
            # Queued cases are dropped; running ones finish (their writes are atomic either way).
            pool.shutdown(wait=False, cancel_futures=True)
            raise
