"""Mapping a function over work items in worker processes, with a progress bar.

Workers never fork this process: forking a process that holds SimpleITK's or torch's thread pools
can deadlock. On Linux they are forked from a fork server (a fresh interpreter that imports the
function's module once, and never reads an image); elsewhere they are spawned (as nnU-Net does).
Starting workers costs a few tenths of a second, so one worker or one item runs in this process
instead. As with any spawning code, a script that calls this at import time must guard its entry
point with `if __name__ == "__main__":`.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    num_processes: int,
    *,
    desc: str = "",
    unit: str = "case",
    progress: bool | None = None,
) -> list[R]:
    """`[fn(item) for item in items]`, in `num_processes` worker processes, results in input order.

    Args:
        fn: a module-level function (it is pickled to the workers).
        items: picklable work items.
        num_processes: worker processes; 1 (or a single item) runs in this process.
        desc, unit: progress bar labels.
        progress: show a progress bar; None (default) shows it only when stderr is a terminal.
    """
    from tqdm.auto import tqdm

    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    bar = dict(total=len(items), desc=desc, unit=unit, disable=None if progress is None else not progress)
    if num_processes == 1 or len(items) <= 1:
        return [fn(item) for item in tqdm(items, **bar)]
    if sys.platform.startswith("linux"):
        ctx = multiprocessing.get_context("forkserver")
        # Used when the server starts now; a running one (fastseg.preprocess.scheduler) is reused.
        ctx.set_forkserver_preload([fn.__module__])
    else:
        ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(num_processes, len(items)), mp_context=ctx) as pool:
        results: Iterable[R] = pool.map(fn, items)
        return list(tqdm(results, **bar))
