"""`fastseg.runtime.pages`: the resident pages of privately mapped files are handed back to the kernel,
and what the process reads or wrote through them stays what it was."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from fastseg.runtime.pages import file_mappings

_MAPS = """\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1049   /usr/bin/python3.11
7f1a00000000-7f1a00200000 r-xp 00010000 fe:01 2050   /opt/lib/libtorch_cpu.so
7f1a00200000-7f1a00300000 rw-p 00210000 fe:01 2050   /opt/lib/libtorch_cpu.so
7f1a00300000-7f1a00400000 rw-s 00000000 fe:01 3001   /dev/shm/buffer
7f1a00400000-7f1a00500000 rw-p 00000000 00:00 0
55d0c1000000-55d0c2000000 rw-p 00000000 00:00 0      [heap]
7ffd1000000-7ffd1002000 r-xp 00000000 00:00 0        [vdso]
7f1a00500000-7f1a00600000 r--p 00000000 fe:01 4001   /tmp/old file (deleted)
"""


def test_only_private_file_mappings_are_listed():
    assert file_mappings(_MAPS) == [
        (0x55D0C0A00000, 0x55D0C0A01000),
        (0x7F1A00000000, 0x7F1A00200000),
        (0x7F1A00200000, 0x7F1A00300000),
        (0x7F1A00500000, 0x7F1A00600000),
    ]


_PROGRAM = textwrap.dedent(
    """
    import mmap, sys
    import numpy as np
    from fastseg.runtime.pages import release_file_pages

    path = sys.argv[1]
    data = np.random.default_rng(0).integers(0, 256, 16 * 2**20, dtype=np.uint8)
    data.tofile(path)
    with open(path, "rb") as f:
        view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # a private mapping, like a library's
    array = np.frombuffer(view, dtype=np.uint8)
    start = np.frombuffer(view, dtype=np.uint8).ctypes.data

    def resident_kib():
        lines = open("/proc/self/smaps").read().splitlines()
        for i, line in enumerate(lines):
            if line.split("-")[0] == format(start, "x"):
                return next(int(l.split()[1]) for l in lines[i + 1:] if l.startswith("Rss:"))
        raise AssertionError("mapping not found")

    total = int(array.sum(dtype=np.int64))  # reads every page
    old = int(data[5 * mmap.PAGESIZE])
    view[5 * mmap.PAGESIZE] = (old + 1) % 256  # one page written: now the process's own
    before = resident_kib()
    advised = release_file_pages()
    after = resident_kib()
    same = int(array[: 5 * mmap.PAGESIZE].sum(dtype=np.int64) + array[5 * mmap.PAGESIZE + 1 :].sum(dtype=np.int64))
    print(before, after, advised, same == total - old, view[5 * mmap.PAGESIZE] == (old + 1) % 256)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_PAGEOUT is Linux's")
def test_resident_file_pages_are_dropped_and_read_back_unchanged(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", _PROGRAM, str(tmp_path / "data.bin")], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    before, after, advised, read_back, written_kept = run.stdout.split()
    assert int(before) >= 12 * 1024  # read: (nearly) all 16 MiB resident
    assert int(after) <= 1024  # dropped, but for the written page and a few the program touched again
    assert int(advised) >= 16 * 2**20
    assert read_back == "True"  # read again from the file: the same bytes
    assert written_kept == "True"  # the written page is not the file's again
