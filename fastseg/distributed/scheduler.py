"""The driver's loop over a Ray cluster: cases to long-lived workers, with retries and lost workers.

    driver (this process)                          workers (Ray actors, one per slot)
    cases, largest first ──► up to `depth` cases ─► setup once (load a model) ─► fn(state, *args)
    one progress bar    ◄──  (ok, result | error) ◄─ per case, errors returned as values

- A case that raises is retried on another worker (one that has not failed it yet, when there is
  one), at most `retries` times; then it is reported failed with its last error.
- A worker whose process dies (killed, out of memory, its node lost) fails every case it held; each
  is rescheduled (counted as an attempt, so a case that kills its worker each time ends failed) unless
  `done(task)` says it finished before the worker died; a new worker takes the lost one's slot (soft
  affinity to the same node: elsewhere when that node is gone), at most `len(slots) * (retries + 1)`
  times in a run.
- Only paths cross the wire (arguments and small results), never image arrays.
"""

from __future__ import annotations

import bisect
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastseg.distributed.cluster import Slot

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseTask:
    """One case's work.

    Attributes:
        key: the case identifier (reports name it).
        args: positional arguments of the case function after the worker's state (picklable, small).
        size: bytes of input; larger cases start first.
    """

    key: str
    args: tuple
    size: int = 0


@dataclass
class WorkerStats:
    """What one worker did: where it ran, its cases and the seconds it spent on them."""

    name: str
    host: str = "?"
    pid: int | None = None
    cases: int = 0
    failed: int = 0
    busy_seconds: float = 0.0
    first: float | None = None
    last: float | None = None
    lost: bool = False

    def cases_per_hour(self) -> float:
        span = (self.last - self.first) if self.first is not None and self.last is not None else 0.0
        return 3600.0 * self.cases / span if span > 0 else 0.0


@dataclass
class ClusterReport:
    """What `run_cases` did.

    Attributes:
        results: case key -> the case function's result.
        failed: case key -> the last error (after the retries).
        attempts: case key -> how many times it was started.
        workers: per worker (replacements included), in start order.
        lost_workers: workers whose process died.
        seconds: wall time of the run.
    """

    results: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    workers: list[WorkerStats] = field(default_factory=list)
    lost_workers: int = 0
    seconds: float = 0.0

    def cases_per_hour(self) -> float:
        return 3600.0 * len(self.results) / self.seconds if self.seconds > 0 else 0.0

    def summary_lines(self) -> list[str]:
        """The end-of-run summary: overall and per-worker throughput, retries and lost workers."""
        retried = sum(1 for n in self.attempts.values() if n > 1)
        lines = [
            f"cluster: {len(self.results)} case(s) done, {len(self.failed)} failed, in {self.seconds:.1f} s "
            f"({self.cases_per_hour():.0f} cases/hour) on {len(self.workers)} worker(s); {retried} case(s) retried, "
            f"{self.lost_workers} worker(s) lost"
        ]
        for w in self.workers:
            lines.append(
                f"  worker {w.name} on {w.host} (pid {w.pid if w.pid is not None else '?'}): {w.cases} case(s), "
                f"{w.failed} failed, {w.cases_per_hour():.0f} cases/hour, busy {w.busy_seconds:.1f} s"
                + (" -- lost" if w.lost else "")
            )
        return lines


class _CaseWorker:
    """The actor: sets its threads, builds its state once, then runs cases one at a time."""

    def __init__(self, setup: str | None, setup_args: tuple, threads: int, cwd: str | None = None) -> None:
        import os
        import socket

        if cwd is not None and os.path.isdir(cwd):  # relative paths mean what they mean to the driver
            os.chdir(cwd)

        import torch

        from fastseg.threads import set_num_threads

        torch.set_num_threads(threads)
        set_num_threads(threads)
        self.where = (socket.gethostname(), os.getpid())
        self.state = _resolve(setup)(*setup_args, threads=threads) if setup else None

    def run(self, fn: str | Callable, args: tuple) -> tuple[bool, Any, float, tuple[str, int]]:
        """(ok, result or error message, seconds, (host, pid)) of one case."""
        start = time.perf_counter()
        try:
            f = _resolve(fn)
            result = f(self.state, *args) if self.state is not None else f(*args)
            return True, result, time.perf_counter() - start, self.where
        except Exception as err:  # noqa: BLE001 -- returned to the driver, which retries or reports it
            message = str(err) if isinstance(err, (ValueError, OSError)) else f"{type(err).__name__}: {err}"
            return False, message, time.perf_counter() - start, self.where


def _resolve(fn: str | Callable) -> Callable:
    if callable(fn):
        return fn
    import importlib

    module, _, name = fn.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass
class _Worker:
    handle: Any
    slot: Slot
    stats: WorkerStats
    starting: Any = None  # the readiness reference until the actor has started
    in_flight: int = 0
    alive: bool = True


def run_cases(
    ray,
    fn: str | Callable,
    tasks: Sequence[CaseTask],
    slots: Sequence[Slot],
    *,
    setup: str | None = None,
    setup_args: tuple = (),
    retries: int = 2,
    depth: int = 2,
    done: Callable[[CaseTask], bool] | None = None,
    desc: str = "cases",
    progress: bool | None = None,
    start_timeout: float = 600.0,
) -> ClusterReport:
    """Runs `fn([state,] *task.args)` for every task on the cluster's workers.

    Args:
        ray: the `ray` module, connected (`fastseg.distributed.cluster.connect`).
        fn: the case function, "package.module:function" (imported in the workers) or a module-level
            function; with `setup`, its first argument is the worker's state.
        tasks: the cases; started largest first.
        slots: the workers to start (`fastseg.distributed.cluster.worker_slots`).
        setup: "package.module:function" building each worker's state once (a loaded model), or None;
            called as `setup(*setup_args, threads=N)` with N the worker's cores.
        setup_args: its positional arguments.
        retries: how many times a failed case is tried again (default 2), on another worker when
            there is one.
        depth: cases handed to a worker at a time (default 2: the next one waits in its queue, so the
            worker never idles for a round trip).
        done: for a case whose worker died, whether it was finished anyway (its output is complete);
            None: never, it runs again.
        desc: the progress bar's label.
        progress: a progress bar over all cases; None (default) only when stderr is a terminal.
        start_timeout: seconds to wait for a worker to start when no case is running (default 600);
            then the cases left fail.

    Returns:
        A ClusterReport (results, failures with their errors, per-worker throughput).
    """
    from tqdm import tqdm

    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    report = ClusterReport()
    start = time.perf_counter()
    if not tasks:
        return report
    if not slots:
        raise ValueError("no worker slots to run the cases on")
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor_class = ray.remote(_CaseWorker)

    def start_worker(slot: Slot) -> _Worker:
        options = {"num_cpus": slot.cpus, "num_gpus": slot.gpus, "max_restarts": 0, "max_task_retries": 0,
                   "scheduling_strategy": NodeAffinitySchedulingStrategy(slot.node_id, soft=True)}
        threads = max(1, int(slot.cpus))
        handle = actor_class.options(**options).remote(setup, setup_args, threads, os.getcwd())
        stats = WorkerStats(name=str(len(report.workers)), host=slot.host)
        report.workers.append(stats)
        worker = _Worker(handle, slot, stats, starting=handle.__ray_ready__.remote())
        starting[worker.starting] = worker
        return worker

    starting: dict[Any, _Worker] = {}

    workers = [start_worker(s) for s in slots]
    replacements_left = len(slots) * (retries + 1)
    pending = sorted(tasks, key=lambda t: -t.size)  # largest first
    tried_on: dict[str, set[int]] = {}
    last_error: dict[str, str] = {}
    in_flight: dict[Any, tuple[_Worker, CaseTask]] = {}

    def requeue(task: CaseTask) -> None:
        bisect.insort(pending, task, key=lambda t: -t.size)

    def pick(worker: _Worker) -> CaseTask | None:
        alive = [id(w) for w in workers if w.alive]
        for i, task in enumerate(pending):
            tried = tried_on.get(task.key, set())
            if id(worker) not in tried or all(a in tried for a in alive):
                return pending.pop(i)
        return None

    def lose(worker: _Worker, error: str) -> None:
        nonlocal replacements_left
        worker.alive = False
        worker.stats.lost = True
        report.lost_workers += 1
        logger.warning("worker %s on %s lost: %s", worker.stats.name, worker.stats.host, error)
        ray.kill(worker.handle, no_restart=True)
        if replacements_left > 0:
            replacements_left -= 1
            workers.append(start_worker(worker.slot))

    def give_up(task: CaseTask, error: str, bar) -> None:
        report.failed[task.key] = error
        logger.error("case %s failed after %d attempt(s): %s", task.key, report.attempts.get(task.key, 0), error)
        bar.update()

    def attempt_failed(task: CaseTask, error: str, bar) -> None:
        last_error[task.key] = error
        if report.attempts[task.key] <= retries:
            logger.warning("case %s failed (attempt %d of %d), trying again: %s", task.key, report.attempts[task.key],
                           retries + 1, error)
            requeue(task)
        else:
            give_up(task, error, bar)

    disable = not sys.stderr.isatty() if progress is None else not progress
    with tqdm(total=len(tasks), desc=desc, unit="case", disable=disable) as bar:
        while pending or in_flight:
            for worker in workers:
                while worker.alive and worker.starting is None and worker.in_flight < depth and pending:
                    task = pick(worker)
                    if task is None:
                        break
                    report.attempts[task.key] = report.attempts.get(task.key, 0) + 1
                    tried_on.setdefault(task.key, set()).add(id(worker))
                    in_flight[worker.handle.run.remote(fn, task.args)] = (worker, task)
                    worker.in_flight += 1
            if not in_flight and not starting:  # cases left, no worker alive to take them
                for task in pending:
                    give_up(task, last_error.get(task.key, "no worker left to run it"), bar)
                pending.clear()
                break
            ready, _ = ray.wait(list(in_flight) + list(starting), num_returns=1,
                                timeout=None if in_flight else start_timeout)
            if not ready:  # only workers that do not start (no room for them on the cluster)
                for task in pending:
                    give_up(task, last_error.get(task.key, f"no worker could start within {start_timeout:.0f} s "
                                                 "(the cluster has no room for one)"), bar)
                pending.clear()
                break
            for ref in ready:
                if ref in starting:
                    worker = starting.pop(ref)
                    try:
                        ray.get(ref)
                        worker.starting = None
                    except ray.exceptions.RayError as err:
                        error = _lost_message(worker, err)
                        for task in pending:
                            last_error.setdefault(task.key, error)
                        lose(worker, error)
                    continue
                worker, task = in_flight.pop(ref)
                worker.in_flight -= 1
                try:
                    ok, value, seconds, where = ray.get(ref)
                except ray.exceptions.RayError as err:
                    error = _lost_message(worker, err)
                    if worker.alive:
                        lose(worker, error)
                    if done is not None and done(task):
                        report.results[task.key] = None
                        bar.update()
                    else:
                        attempt_failed(task, error, bar)
                    continue
                stats = worker.stats
                stats.host, stats.pid = where
                now = time.perf_counter()
                stats.first = now - seconds if stats.first is None else stats.first
                stats.last = now
                stats.busy_seconds += seconds
                if ok:
                    stats.cases += 1
                    report.results[task.key] = value
                    bar.update()
                else:
                    stats.failed += 1
                    attempt_failed(task, value, bar)
    report.failed = {k: report.failed[k] for k in sorted(report.failed)}
    report.seconds = time.perf_counter() - start
    for worker in workers:
        if worker.alive:
            ray.kill(worker.handle, no_restart=True)
    return report


def _lost_message(worker: _Worker, err: BaseException) -> str:
    """Why a worker is gone, in one line."""
    text = str(err).strip().splitlines()
    detail = next((line for line in text if "died" in line or "Error" in line), text[0] if text else "")
    pid = f" (pid {worker.stats.pid})" if worker.stats.pid is not None else ""
    return f"its worker on {worker.stats.host}{pid} was lost: {type(err).__name__}: {detail[:300]}"
