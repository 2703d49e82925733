"""Keeping freed memory in the process (glibc's allocator), for processes that allocate and free the
same large buffers over and over, as a network's forward passes on the CPU do.

By default glibc serves every allocation above a threshold (128 KiB, raised dynamically up to
32 MiB) with a fresh `mmap` and returns it to the system on `free`; the next forward pass maps it
again and the kernel zeroes every page on first touch. For a 3D U-Net's activations (tens to
hundreds of MiB per layer) those page faults cost as much as the convolutions (measured in
benchmarks/README.md: a forward pass 1.6-2x faster without them). `retain_freed_memory` raises the
mmap and trim thresholds so that freed buffers stay in the heap and are reused; the peak memory is
the same, but the process keeps it until it exits.

Process-wide: only the command line calls it (`fastseg predict`), never the library on its own.

The heap that keeps freed buffers also fragments: a run that interleaves the forward passes with
arrays of other sizes (the streamed prediction's preprocessing and export, `fastseg.predict.streaming`)
leaves holes the next forward pass's buffers do not fit, and the heap grows past what is ever live at
once. Within `map_large_allocations`, a large allocation that the heap's free memory cannot serve
gets its own mapping, returned to the system on `free`, instead of growing the heap: the heap stays
the size the forward passes need.
"""

from __future__ import annotations

import ctypes
import contextlib
import ctypes.util
import functools
import logging
from collections.abc import Iterator

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_LARGEST = 2**31 - 1  # mallopt takes an int


_DEFAULT_MMAP_THRESHOLD = 128 * 1024  # glibc's initial threshold
_state = {"mmap_threshold": None}  # what this module last set (None: glibc's dynamic default)


@functools.lru_cache(maxsize=1)
def _mallopt():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt


def retain_freed_memory() -> bool:
    """Makes glibc keep freed memory for reuse (mmap and trim thresholds at 2 GiB), in one heap for
    all threads (`M_ARENA_MAX` 1: what a stage's thread frees, reading or writing a case, is reused
    by the forward passes and the other stages instead of being kept apart in a heap of its own;
    call it before the process starts its threads); False where the C library is not glibc or
    refuses."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, _LARGEST)) and bool(mallopt(_M_TRIM_THRESHOLD, _LARGEST))
    ok = ok and bool(mallopt(_M_ARENA_MAX, 1))
    if ok:
        _state["mmap_threshold"] = _LARGEST
    logger.debug("glibc keeps freed memory for reuse: %s", ok)
    return ok


def mmap_threshold() -> int:
    """The allocation size from which glibc maps memory, as this module last set it (glibc's initial
    128 KiB when it set none)."""
    current = _state["mmap_threshold"]
    return int(current) if current is not None else _DEFAULT_MMAP_THRESHOLD


@contextlib.contextmanager
def map_large_allocations(threshold: int = _DEFAULT_MMAP_THRESHOLD) -> Iterator[None]:
    """Within the block, glibc serves allocations of `threshold` bytes or more (default 128 KiB) that
    its heap's free memory cannot hold from their own mappings, unmapped on `free`, instead of growing
    the heap; on exit the threshold this module set before (or glibc's default) applies again. Blocks
    nest; without glibc the block changes nothing.

    Args:
        threshold: bytes from which an allocation gets its own mapping; at least 4096.
    """
    if threshold < 4096:
        raise ValueError(f"threshold must be at least 4096 bytes, got {threshold}")
    mallopt = _mallopt()
    before = _state["mmap_threshold"]
    if mallopt is None or not mallopt(_M_MMAP_THRESHOLD, int(min(threshold, _LARGEST))):
        yield
        return
    _state["mmap_threshold"] = int(threshold)
    try:
        yield
    finally:
        mallopt(_M_MMAP_THRESHOLD, before if before is not None else _DEFAULT_MMAP_THRESHOLD)
        _state["mmap_threshold"] = before

