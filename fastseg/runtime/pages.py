"""Handing back the pages of shared libraries that a process read while it started and will not read
again.

Loading a library reads more of it than the program runs: the dynamic loader reads its relocation
and symbol tables, and static constructors run once. torch's CUDA build maps its CUDA libraries
(cuBLASLt, nvJitLink, NVRTC, libtorch_cuda) even where no GPU is used, and after `import torch` and
`import SimpleITK` about 290 MiB of such file pages are resident in the process (measured on this
project's benchmark machine; `benchmarks/README.md`, "Prediction"). They are clean file pages:
the kernel may drop them at any time and reads them again from the file when they are touched.
`release_file_pages` asks it to drop them now (`madvise(MADV_PAGEOUT)`, Linux 5.4+), so that a
CPU prediction holds only the pages it goes on to use; the ones it does use come back on first
touch. Nothing a program wrote is dropped: written (copied-on-write) pages are anonymous memory,
which `MADV_PAGEOUT` can only move to swap.

Process-wide: only the command line calls it (`fastseg predict` on the CPU), once everything it
needs is imported, never the library on its own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys

logger = logging.getLogger(__name__)

_MADV_PAGEOUT = 21


@functools.lru_cache(maxsize=1)
def _madvise():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    return madvise


def file_mappings(maps: str) -> list[tuple[int, int]]:
    """(start, end) of each private mapping of a file in `maps` (the text of /proc/<pid>/maps):
    shared mappings, anonymous memory and the kernel's pseudo-files ([heap], [stack], [vdso], ...)
    are left out."""
    ranges = []
    for line in maps.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6 or not fields[5].startswith("/") or fields[1][3:4] != "p":
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        ranges.append((start, end))
    return ranges


def release_file_pages() -> int | None:
    """Asks the kernel to drop this process's resident pages of privately mapped files (module
    docstring). Returns the bytes of address space advised, or None where it cannot ask (not Linux,
    or a kernel without `MADV_PAGEOUT`)."""
    if not sys.platform.startswith("linux"):
        return None
    madvise = _madvise()
    if madvise is None:
        return None
    try:
        with open("/proc/self/maps") as f:
            ranges = file_mappings(f.read())
    except OSError:
        return None
    advised = 0
    for start, end in ranges:
        if madvise(start, end - start, _MADV_PAGEOUT) == 0:
            advised += end - start
        elif ctypes.get_errno() == 22 and advised == 0:  # EINVAL on the first range: no MADV_PAGEOUT
            return None
    logger.debug("asked the kernel to drop the resident pages of %.0f MiB of mapped files", advised / 2**20)
    return advised
