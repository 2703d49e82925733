"""The worker pool (`fastseg.runtime.workers`): budgets, errors that say what happened, clean exits.

Several cases start a fresh interpreter (a subprocess) so that its fork server starts under the
conditions the case sets up: a working directory with a `fastseg/` source folder, a broken module on
the import path, a parent that is killed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

import fastseg
from fastseg.runtime.workers import (
    _USE_FORK_SERVER,
    CaseError,
    Job,
    parallel_map,
    run_jobs,
    start_fork_server,
)


#: This folder: worker functions for these tests live in its helpers.py.
TESTS = str(Path(__file__).parent)


def _as_main(code: str) -> str:
    """`code` as a script's main function, guarded as spawning code must be."""
    return "def main():\n" + textwrap.indent(textwrap.dedent(code), "    ") + "\n\nif __name__ == '__main__':\n    main()\n"


def _python(code: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs `code` as a script in a fresh interpreter with working directory `cwd`.

    The script lives outside `cwd`, so the interpreter puts the script's folder first on sys.path,
    not `cwd`: the main process imports the installed fastseg, as the `fastseg` console script does,
    while the interpreters it starts (`-c` commands) would put `cwd` first."""
    script = Path(tempfile.mkdtemp()) / "main.py"
    script.write_text(_as_main(code))
    return subprocess.run([sys.executable, str(script)], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _source_checkout(folder: Path) -> Path:
    """A folder laid out like the repository root: the package's Python sources in `fastseg/`,
    without the compiled modules."""
    shutil.copytree(
        Path(fastseg.__file__).parent, folder / "fastseg", ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    return folder


def test_memory_budget_limits_concurrency():
    def overlap(budget: int) -> bool:
        jobs = [Job("a", (1.5,), memory_bytes=600), Job("b", (1.5,), memory_bytes=600)]
        (s1, e1), (s2, e2) = dict(run_jobs("helpers:timed_nap", jobs, 2, memory_budget=budget, progress=False)).values()
        return s1 < e2 and s2 < e1

    assert not overlap(1000)  # both do not fit: one at a time
    assert overlap(2000)  # both fit: side by side
    # A job larger than the whole budget still runs (alone).
    assert list(run_jobs(abs, [Job("huge", (-3,), 10**12), Job("small", (-4,), 1)], 2, memory_budget=10, progress=False))


def test_failing_case_is_named_with_its_error():
    with pytest.raises(CaseError, match="case 'bad': ValueError"):
        list(run_jobs(int, [Job("good", ("1",)), Job("bad", ("x",))], 2, progress=False))
    with pytest.raises(CaseError, match="case 'bad': ValueError"):
        list(run_jobs(int, [Job("good", ("1",)), Job("bad", ("x",))], 1, progress=False))
    with pytest.raises(ValueError, match="num_workers must be >= 1"):
        list(run_jobs(abs, [Job("a", (1,))], 0))


def test_dead_worker_reports_how_it_died():
    with pytest.raises(CaseError, match="exited with status 3"):
        list(run_jobs(os._exit, [Job("dies", (3,)), Job("dies-too", (3,))], 2, progress=False))
    with pytest.raises(CaseError, match=r"killed by SIGKILL \(the kernel's out-of-memory killer"):
        list(run_jobs("helpers:kill_self", [Job("a", (1,)), Job("b", (2,))], 2, progress=False))


def test_death_description_names_the_signal_before_a_survivors_status():
    """A survivor that exits with a status of its own as the pool breaks does not hide the worker
    that was killed (the order of the pool's processes is arbitrary)."""
    import signal

    from fastseg.runtime.workers import _death_description

    for codes in ([255, -signal.SIGKILL], [-signal.SIGKILL, 255], [-signal.SIGTERM, 255, -signal.SIGKILL]):
        assert "killed by SIGKILL (the kernel's out-of-memory killer" in _death_description(codes), codes
    assert _death_description([-signal.SIGTERM, 3]) == "a worker process exited with status 3"
    assert _death_description([-signal.SIGTERM]) == "a worker process was killed by SIGTERM"
    assert _death_description([None, 0]) == "a worker process ended unexpectedly"


def test_parallel_map_keeps_order_and_raises_the_original_error():
    assert parallel_map(abs, [-3, 1, -2, 5], 2, progress=False) == [3, 1, 2, 5]
    with pytest.raises(ValueError, match="invalid literal"):
        parallel_map(int, ["1", "x", "2"], 2, progress=False)
    with pytest.raises(ValueError, match="num_processes must be >= 1"):
        parallel_map(abs, [1], 0)


def test_fork_server_started_early_serves_run_jobs():
    assert start_fork_server(["fastseg.runtime.workers"]) == _USE_FORK_SERVER
    assert dict(run_jobs("math:sqrt", [Job("a", (4.0,)), Job("b", (9.0,))], 2)) == {"a": 2.0, "b": 3.0}


def test_workers_import_the_installed_package_from_a_source_checkout(tmp_path):
    """A working directory holding a `fastseg/` folder (the repository root) must not change what the
    workers import: they load the same package as the main process."""
    cwd = _source_checkout(tmp_path)
    run = _python(
        f"""
        import sys
        sys.path.insert(0, {TESTS!r})
        import fastseg
        from fastseg.runtime.workers import Job, run_jobs
        files = dict(run_jobs("helpers:package_file", [Job("a", ()), Job("b", ())], 2, progress=False))
        print(sorted(set(files.values())) == [fastseg.__file__])
        """,
        cwd,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "True", run.stdout + run.stderr


def test_worker_that_cannot_start_reports_the_real_error(tmp_path):
    """A worker whose start-up fails (here: its native module "fails to load", patched in by a module
    the fork server preloads) says so, with the error, not a guess about memory."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "breaker.py").write_text(
        "import fastseg.threads\n"
        "def fail(n):\n"
        "    raise ImportError('the native module is broken here')\n"
        "fastseg.threads.set_num_threads = fail\n"
    )
    run = _python(
        f"""
        import sys
        sys.path.insert(0, {str(broken)!r})
        from fastseg.runtime.workers import CaseError, Job, run_jobs, start_fork_server
        start_fork_server(["breaker"])
        try:
            list(run_jobs(abs, [Job("a", (1,)), Job("b", (2,))], 2, progress=False))
        except CaseError as err:
            print(err)
        """,
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert "could not start" in run.stdout and "the native module is broken here" in run.stdout, run.stdout
    assert "memory" not in run.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_the_main_process_ends_its_workers_and_fork_server(tmp_path):
    """SIGKILL to the main process (no chance to clean up): the workers notice and exit, and with
    them the fork server and the resource tracker."""
    marks = tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "main.py"
    script.write_text(
        _as_main(
            f"""
            import sys
            sys.path.insert(0, {TESTS!r})
            from fastseg.runtime.workers import Job, run_jobs
            jobs = [Job(str(i), ({str(marks)!r}, 120.0)) for i in range(2)]
            list(run_jobs("helpers:mark_and_sleep", jobs, 2, progress=False))
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while len(list(marks.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = [tuple(map(int, f.read_text().split())) for f in marks.iterdir()]
        assert len(pids) == 2, "the workers did not start"
    finally:
        proc.kill()
        proc.wait()
    workers = [w for w, _ in pids]
    server = {s for _, s in pids}
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers + list(server)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)], "workers outlived the killed main process"
    assert not [p for p in server if _alive(p) and p != proc.pid], "the fork server outlived the killed main process"
