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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_LARGEST = 2**31 - 1  # mallopt takes an int


def retain_freed_memory() -> bool:
    """Makes glibc keep freed memory for reuse (mmap and trim thresholds at 2 GiB); False where the
    C library is not glibc or refuses."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, _LARGEST)) and bool(mallopt(_M_TRIM_THRESHOLD, _LARGEST))
    logger.debug("glibc keeps freed memory for reuse: %s", ok)
    return ok
