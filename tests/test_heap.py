"""`fastseg.runtime.heap`: freed large buffers are reused without page faults (`retain_freed_memory`), and
within `map_large_allocations` get their own mappings, returned on free."""

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


_MAPPED = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from fastseg.runtime.heap import map_large_allocations, retain_freed_memory

    assert retain_freed_memory()
    def faults():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = np.ones(100 * 2**20 // 8)  # 100 MiB, touched
        del a
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    with map_large_allocations():
        faults()
        mapped = faults()  # its own mapping again: the first was returned on free
        with map_large_allocations(2**31 - 1):
            faults()
            nested = faults()  # from the heap, which kept the first
    faults()
    after = faults()  # the heap again after the block
    print(mapped, nested, after)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator (Linux)")
def test_map_large_allocations_maps_inside_the_block_and_restores_the_heap_after():
    run = subprocess.run([sys.executable, "-c", _MAPPED], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    mapped, nested, after = (int(v) for v in run.stdout.split()[-3:])
    assert mapped >= 100 // 2  # at least one fault per 2 MiB
    assert nested <= mapped // 10 and after <= mapped // 10
