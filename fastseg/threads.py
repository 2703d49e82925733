"""The OpenMP thread count of fastseg's CPU kernels (`fastseg._C`).

The count is set in the OpenMP runtime that `fastseg._C` links, whichever that is (libgomp, libomp),
so it works where `threadpoolctl` does not find that runtime. As in OpenMP itself, the count belongs
to the calling thread: it applies to the kernels called from the Python thread that set it.

    with fastseg.threads.num_threads(1):
        labels, n = fastseg.ops.connected_components(mask)
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator

from fastseg import _native

__all__ = ["get_num_threads", "num_threads", "set_num_threads"]


def get_num_threads() -> int:
    """The number of threads the next CPU kernel called from this thread may use."""
    return int(_native.cpu().max_threads())


def set_num_threads(n: int) -> None:
    """Sets the number of threads of the CPU kernels called from this thread.

    Args:
        n: the thread count, an integer >= 1.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"the thread count must be an integer, got {type(n).__name__} {n!r}")
    if n < 1:
        raise ValueError(f"the thread count must be at least 1, got {n}")
    _native.cpu().set_num_threads(int(n))


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """Runs the block with `n` CPU kernel threads (on this thread), then restores the previous count.

    Args:
        n: the thread count, an integer >= 1.
    """
    previous = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(previous)
