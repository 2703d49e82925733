"""`fastseg.runtime.heap.retain_freed_memory`: freed large buffers are reused without page faults."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

_PROGRAM = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from fastseg.runtime.heap import retain_freed_memory

    if sys.argv[1] == "retain":
        assert retain_freed_memory()
    a = np.ones(100 * 2**20 // 8)  # 100 MiB, touched
    del a
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    b = np.ones(100 * 2**20 // 8)  # the same size again
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", _PROGRAM, mode], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return int(run.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator (Linux)")
def test_second_large_allocation_reuses_the_freed_pages():
    default = _faults("default")
    assert default >= 100 // 2  # mapped anew: at least one fault per 2 MiB (transparent huge pages)
    assert _faults("retain") <= default // 10  # reused from the heap
