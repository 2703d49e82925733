"""`fastseg evaluate --ray`: scoring cases on the cluster's workers.

`fastseg.evaluate.folder.evaluate_folders` matches the files, builds one job per case and maps
`score_case` over them with `fastseg.runtime.workers.parallel_map`'s signature; `ClusterMap` is
such a map on the cluster (the same function and jobs, largest prediction file first), and the
summary is computed and written by the driver as without Ray. Both folders must be at the same path
on every node.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastseg.distributed.cluster import worker_slots
from fastseg.distributed.preprocess import CasesFailedError
from fastseg.distributed.scheduler import CaseTask, ClusterReport, run_cases


class ClusterMap:
    """`[fn(job) for job in jobs]` on the cluster, for `evaluate_folders`' scoring jobs
    (reference, prediction, ...): each case is named by its prediction file.

    Args:
        ray: the `ray` module, connected.
        cpus_per_worker: cores per worker (default 1).
        retries: tries again for a failed case, on another worker (default 2).
    """

    def __init__(self, ray, *, cpus_per_worker: int = 1, retries: int = 2) -> None:
        self.ray = ray
        self.cpus_per_worker = cpus_per_worker
        self.retries = retries
        self.reports: list[ClusterReport] = []

    def __call__(self, fn: Callable[[Any], Any], items: Sequence[Any], num_processes: int, *, desc: str = "",
                 unit: str = "case", progress: bool | None = None) -> list[Any]:
        """The results in the order of `items`.

        Raises:
            CasesFailedError: cases that failed after their retries, each with its error.
        """
        if not items:
            return []
        tasks = []
        for item in items:
            prediction = str(item[1])
            size = os.path.getsize(prediction) if os.path.exists(prediction) else 0
            tasks.append(CaseTask(Path(prediction).name, (item,), size))
        if len({t.key for t in tasks}) != len(tasks):
            tasks = [CaseTask(str(i), t.args, t.size) for i, t in enumerate(tasks)]
        slots = worker_slots(self.ray, cpus_per_worker=self.cpus_per_worker, gpu=False)
        report = run_cases(self.ray, fn, tasks, slots, retries=self.retries, desc=desc or "cases", progress=progress)
        self.reports.append(report)
        if report.failed:
            raise CasesFailedError(report.failed)
        return [report.results[t.key] for t in tasks]
