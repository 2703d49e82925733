"""Worker processes for per-case work: the one pool every command uses.

`run_jobs` runs a function over cases in worker processes under a memory budget and yields the
results as the cases finish; `parallel_map` is its ordered, list-returning form.

How workers start
-----------------
Workers never fork this process: forking a process that holds SimpleITK's, OpenMP's or torch's
thread pools can deadlock. On Linux they are forked from a fork server, a fresh interpreter that
imports the worker modules once (`start_fork_server` starts it early, so its start overlaps with the
command's own start-up); elsewhere, and on Python < 3.11, they are spawned.

A fresh interpreter puts its working directory first on `sys.path`. Started from a source checkout
(the repository root), it would import the uncompiled `fastseg/` folder there instead of the
installed package -- and Python's fork server, unlike spawned processes, is not told this process's
`sys.path`. So the server starts with `PYTHONSAFEPATH` (nothing prepended) and this process's import
path in `PYTHONPATH`: the workers import exactly the modules this process imports, from wherever
the command runs. Each worker also checks that it loaded the same `fastseg` package as this process.

What a worker reports
---------------------
- A worker that fails to start (an import error, the native module missing) does not die: it keeps
  the error and raises it for its first case, so the message is the real one.
- A case that raises gives `CaseError` naming the case, with the original exception chained.
- A worker that dies gives `CaseError` with how it died: its exit status, or the signal that killed
  it (SIGKILL is what the kernel's out-of-memory killer sends; then fewer workers help).
- A worker whose parent process dies (killed, even with SIGKILL) exits within a second, so nothing
  of a killed command keeps running: when the last worker exits, the fork server and the resource
  tracker exit too.

Each worker limits its OpenMP threads to its share of the cores, so `-j` workers never oversubscribe
the CPU. With one worker, or one job, everything runs in this process.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import importlib
import logging
import multiprocessing
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

#: Fraction of the available memory the cases in flight may use when no budget is given.
BUDGET_FRACTION = 0.75

T = TypeVar("T")
R = TypeVar("R")


class CaseError(RuntimeError):
    """A case failed in a worker; `case` names it and the original exception is chained."""

    def __init__(self, case: str, message: str) -> None:
        super().__init__(f"case {case!r}: {message}")
        self.case = case


class WorkerStartError(RuntimeError):
    """A worker process could not set itself up (raised for the first case it is given)."""


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


# --- starting workers ---------------------------------------------------------------------------

_USE_FORK_SERVER = sys.platform.startswith("linux") and sys.version_info >= (3, 11)
_server_lock = threading.Lock()


def _import_path() -> list[str]:
    """This process's `sys.path`, with the working-directory entry ('') made absolute."""
    return [p or os.getcwd() for p in sys.path]


def child_import_environment(env: Mapping[str, str]) -> dict[str, str]:
    """`env` for a Python child process of this one (`python -m fastseg...`, torchrun): this
    process's import path in PYTHONPATH and PYTHONSAFEPATH set, so that the child imports the
    fastseg this process runs, not an uncompiled fastseg/ source folder in its working directory
    (which `python -m` and `-c` would put first on its path)."""
    return {**env, "PYTHONSAFEPATH": "1", "PYTHONPATH": os.pathsep.join(_import_path())}


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Sets environment variables for a child about to start; restores them afterwards."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _server_running() -> bool:
    from multiprocessing import forkserver

    server = forkserver._forkserver
    if server._forkserver_pid is None:
        return False
    try:
        pid, _ = os.waitpid(server._forkserver_pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return pid == 0


def _context(modules: Sequence[str]) -> multiprocessing.context.BaseContext:
    """The multiprocessing context for worker pools; starts the fork server when there is none."""
    if not _USE_FORK_SERVER:
        return multiprocessing.get_context("spawn")
    from multiprocessing import forkserver

    ctx = multiprocessing.get_context("forkserver")
    with _server_lock:
        if not _server_running():
            ctx.set_forkserver_preload([*modules, __name__])
            # See the module docstring: the server imports what this process imports.
            with _environment(PYTHONSAFEPATH="1", PYTHONPATH=os.pathsep.join(_import_path())):
                forkserver.ensure_running()
    return ctx


def start_fork_server(modules: Sequence[str]) -> bool:
    """Starts the fork server of this process's worker pools now, preloading `modules`.

    Its start (an interpreter that imports numpy, SimpleITK and the kernels: a few tenths of a
    second) then overlaps with what this process does before it needs workers -- its own imports,
    reading plans, listing cases -- instead of delaying the first case. Later pools reuse the
    running server (what they need beyond `modules` each worker imports itself).

    Args:
        modules: modules the workers need, e.g. ["fastseg.preprocess.worker", "fastseg.io"].

    Returns:
        True when a fork server runs now; False where workers are spawned instead.
    """
    if not _USE_FORK_SERVER:
        return False
    _context(modules)
    return True


# --- inside a worker ----------------------------------------------------------------------------

_start_error: BaseException | None = None


def _exit_when_gone(pid: int) -> None:
    """Waits (in a daemon thread) for process `pid` to end, then ends this worker at once."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (old kernel, not Linux): poll
        fd = None
    while True:
        if fd is not None:
            select.select([fd], [], [])
            os._exit(1)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:
            pass
        threading.Event().wait(1.0)


def _init_worker(threads: int, parent_pid: int, package_file: str) -> None:
    """Worker initializer: watch the parent, check the package, load the kernels, cap threads.

    Never raises: an error is kept and raised for the worker's first case (`_call`), so the parent
    reports it instead of a dead pool.
    """
    global _start_error
    threading.Thread(target=_exit_when_gone, args=(parent_pid,), daemon=True, name="parent-watch").start()
    try:
        import fastseg

        if os.path.realpath(fastseg.__file__) != os.path.realpath(package_file):
            raise ImportError(
                f"the worker imported fastseg from {os.path.dirname(fastseg.__file__)}, the main process from "
                f"{os.path.dirname(package_file)}"
            )
        from fastseg.threads import set_num_threads

        set_num_threads(threads)  # loads the native module too
    except BaseException as err:  # noqa: BLE001 -- reported for the first case instead
        _start_error = err


def _resolve(fn: Callable | str) -> Callable:
    if callable(fn):
        return fn
    module, _, name = fn.partition(":")
    return getattr(importlib.import_module(module), name)


def _call(fn: Callable | str, *args: Any) -> Any:
    """Runs in a worker: resolves "module:function" there, so the parent never imports it."""
    if _start_error is not None:
        raise WorkerStartError(
            f"a worker process could not start: {type(_start_error).__name__}: {_start_error}"
        ) from _start_error
    return _resolve(fn)(*args)


# --- the pool -----------------------------------------------------------------------------------


def _death_description(exitcodes: Sequence[int | None]) -> str:
    """How the workers of a broken pool ended, most telling first."""
    # The pool terminates the survivors with SIGTERM once one worker dies, and a survivor may exit
    # with a status of its own as the pool breaks: a signal other than SIGTERM says most.
    codes = [c for c in exitcodes if c not in (None, 0, -signal.SIGTERM)]
    codes = [c for c in codes if c < 0] or codes or [c for c in exitcodes if c not in (None, 0)]
    if not codes:
        return "a worker process ended unexpectedly"
    code = codes[0]
    if code > 0:
        return f"a worker process exited with status {code}"
    sig = signal.Signals(-code)
    text = f"a worker process was killed by {sig.name}"
    if sig == signal.SIGKILL:
        text += " (the kernel's out-of-memory killer sends SIGKILL when memory runs out)"
    return text


def run_jobs(
    fn: Callable[..., Any] | str,
    jobs: Sequence[Job],
    num_workers: int,
    *,
    memory_budget: int | None = None,
    desc: str = "cases",
    unit: str = "case",
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
        desc, unit: labels of the progress bar.
        progress: show a progress bar (tqdm); default only when stderr is a terminal.

    Raises:
        ValueError: num_workers < 1.
        CaseError: a case raised (the original exception is chained), its worker could not start,
            or its worker died (the message says how).
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if not jobs:
        return
    from tqdm import tqdm

    disable = not sys.stderr.isatty() if progress is None else not progress
    with tqdm(total=len(jobs), desc=desc, unit=unit, disable=disable) as bar:
        for key, result in _run(fn, jobs, num_workers, memory_budget):
            bar.update()
            yield key, result


def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    num_processes: int,
    *,
    desc: str = "",
    unit: str = "case",
    progress: bool | None = None,
) -> list[R]:
    """`[fn(item) for item in items]` in `num_processes` worker processes, results in input order.

    Args:
        fn: a module-level function (pickled to the workers).
        items: picklable work items.
        num_processes: worker processes; 1 (or a single item) runs in this process.
        desc, unit: progress bar labels.
        progress: show a progress bar; None (default) shows it only when stderr is a terminal.

    Raises:
        ValueError: num_processes < 1.
        Exception: the first exception `fn` raised (as it was raised); `CaseError` when a worker
            could not start or died.
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    jobs = [Job(str(i), (item,)) for i, item in enumerate(items)]
    results: dict[str, R] = {}
    try:
        for key, result in run_jobs(fn, jobs, num_processes, desc=desc, unit=unit, progress=progress):
            results[key] = result
    except CaseError as err:
        cause = err.__cause__
        if cause is not None and not isinstance(cause, (WorkerStartError, BrokenProcessPool)):
            raise cause from None
        raise
    return [results[j.key] for j in jobs]


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

    import fastseg

    budget = int(memory_budget if memory_budget is not None else available_memory() * BUDGET_FRACTION)
    pending = sorted(jobs, key=lambda j: -j.memory_bytes)
    workers = min(num_workers, len(jobs))
    threads = max(1, default_num_workers() // workers)
    module = fn.partition(":")[0] if isinstance(fn, str) else fn.__module__
    in_flight: dict[cf.Future, Job] = {}
    used = 0
    pool = cf.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=_context([module]),
        initializer=_init_worker,
        initargs=(threads, os.getpid(), fastseg.__file__),
    )
    processes = pool._processes  # the dict the pool fills; kept to read exit codes if it breaks
    with pool:
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
                for fut in sorted(done, key=lambda f: in_flight[f].key):
                    job = in_flight.pop(fut)
                    used -= job.memory_bytes
                    try:
                        result = fut.result()
                    except BrokenProcessPool as err:
                        for p in list((processes or {}).values()):
                            p.join(timeout=5)
                        how = _death_description([p.exitcode for p in (processes or {}).values()])
                        raise CaseError(
                            job.key,
                            f"{how} while this case was running or queued; if memory ran out, rerun with fewer "
                            f"workers (-j {max(1, workers // 2)}) or a smaller memory budget",
                        ) from err
                    except WorkerStartError as err:
                        raise CaseError(job.key, str(err)) from err
                    except Exception as err:
                        raise CaseError(job.key, f"{type(err).__name__}: {err}") from err
                    yield job.key, result
        except BaseException:
            # Queued cases are dropped; running ones finish (their writes are atomic either way).
            pool.shutdown(wait=False, cancel_futures=True)
            raise
