"""`fastseg preprocess --ray`: the preprocessing runner's cases on the cluster's workers.

`fastseg.preprocess.runner` (and its nnU-Net-format twin) plan the cases -- which are done, what is
left, each one's memory estimate -- and hand them to a runner with `fastseg.runtime.workers.run_jobs`'
signature. `ClusterJobs` is such a runner: the same jobs, the same worker function
(`fastseg.preprocess.worker:preprocess_files`, each output written atomically), run by one worker
per `cpus_per_worker` cores of every node, largest estimate first. The work folder and the raw
dataset must be at the same path on every node.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fastseg.distributed.cluster import worker_slots
from fastseg.distributed.scheduler import CaseTask, ClusterReport, run_cases
from fastseg.runtime.workers import CaseError, Job


class CasesFailedError(CaseError):
    """Cases that failed on the cluster after their retries; `failed` maps each to its error."""

    def __init__(self, failed: dict[str, str]) -> None:
        first = next(iter(failed))
        super().__init__(first, failed[first])
        self.failed = dict(failed)

    def __str__(self) -> str:
        listing = "; ".join(f"case {k!r}: {v}" for k, v in self.failed.items())
        return f"{len(self.failed)} case(s) failed on the cluster (the others are done): {listing}"


class ClusterJobs:
    """A job runner on the cluster, in place of `fastseg.runtime.workers.run_jobs`.

    Args:
        ray: the `ray` module, connected.
        cpus_per_worker: cores per worker (default 1: one case per core, as `-j` does on one machine).
        retries: tries again for a failed case, on another worker (default 2).
    """

    def __init__(self, ray, *, cpus_per_worker: int = 1, retries: int = 2) -> None:
        self.ray = ray
        self.cpus_per_worker = cpus_per_worker
        self.retries = retries
        self.reports: list[ClusterReport] = []

    def __call__(
        self,
        fn: Callable[..., Any] | str,
        jobs: Sequence[Job],
        num_workers: int,
        *,
        memory_budget: int | None = None,
        desc: str = "cases",
        unit: str = "case",
        progress: bool | None = None,
    ) -> Iterator[tuple[str, Any]]:
        """Yields `(job.key, fn(*job.args))` per finished job; `num_workers` and `memory_budget`
        are the local pool's and not used (the cluster's nodes give the workers).

        Raises:
            CasesFailedError: after every other case finished, the cases that failed, with their errors.
        """
        if not jobs:
            return
        slots = worker_slots(self.ray, cpus_per_worker=self.cpus_per_worker, gpu=False)
        tasks = [CaseTask(job.key, tuple(job.args), int(job.memory_bytes)) for job in jobs]
        report = run_cases(self.ray, fn, tasks, slots, retries=self.retries, desc=desc, progress=progress)
        self.reports.append(report)
        for task in tasks:
            if task.key in report.results:
                yield task.key, report.results[task.key]
        if report.failed:
            raise CasesFailedError(report.failed)
