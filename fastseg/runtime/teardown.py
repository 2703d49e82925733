"""Ending a command's process without tearing the interpreter down (`fastseg predict`).

A command that has written and closed its files calls `skip_teardown`; the `fastseg` console entry
(`fastseg.cli.console`) then runs what was registered with `atexit` (logging's flush, temporary
folders, worker pools), flushes stdout and stderr and ends the process with `os._exit`. Skipped is
what a normal exit does after that: Python's module teardown and the C++ static destructors of torch
and the CUDA libraries it loads, whose code the process pages in only to run them (measured for
`fastseg predict`: ~0.5 s and 120-170 MiB of library pages in the last 0.2 s, the run's peak
memory; benchmarks/README.md, "Prediction").
"""

from __future__ import annotations

import atexit
import os
import sys

_state = {"requested": False}


def skip_teardown() -> None:
    """Asks the console entry to end the process with `exit_now` once the command has returned."""
    _state["requested"] = True


def requested() -> bool:
    """True when the command that ran asked for `skip_teardown`."""
    return _state["requested"]


def exit_now(code: int) -> None:
    """Runs the `atexit` functions, flushes stdout and stderr and ends the process with `code`."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
