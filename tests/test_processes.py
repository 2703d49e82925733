"""Several real processes on one folder: a second run on a work folder in use is refused at once
(naming the process that holds it), temporary files and staging folders of live processes are never
removed, and those of killed processes are removed by the next run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

FASTSEG = [sys.executable, "-m", "fastseg.cli"]
#: Where the child processes run: not the repository root, whose source `fastseg/` (no compiled
#: module) would shadow the installed package.
OUTSIDE = "/"


def dead_pid() -> int:
    """The pid of a process that has ended."""
    p = subprocess.Popen([sys.executable, "-c", "pass"], cwd=OUTSIDE)
    p.wait()
    return p.pid


def wait_for(condition, timeout: float = 120.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- the owner of a file or folder ----------------------------------------------------------------------------------


def test_owner_tokens():
    from fastseg.runtime.locking import owner_alive, owner_token

    me = owner_token()
    assert me.split(".")[0] == str(os.getpid()) and owner_alive(me)
    assert not owner_alive(str(dead_pid()))
    assert not owner_alive(f"{os.getpid()}.1")  # this pid, but another start time: a reused pid
    assert owner_alive(str(os.getpid()))


def test_remove_temporaries_spares_live_processes(tmp_path):
    from fastseg.io.atomic import atomic_path
    from fastseg.preprocess.storage import remove_temporaries
    from fastseg.runtime.locking import owner_token

    with atomic_path(tmp_path / "a.npy") as mine:
        mine.write_bytes(b"in flight")
        assert mine.name.startswith(f".tmp-{owner_token()}-")
        dead = tmp_path / f".tmp-{dead_pid()}-0123abcd-b.npy"
        dead.write_bytes(b"left by a killed run")
        old = tmp_path / ".tmp-0123abcd-c.npy"  # an older fastseg's name: no owner recorded
        old.write_bytes(b"x")
        assert remove_temporaries(tmp_path) == 2
        assert mine.exists() and not dead.exists() and not old.exists()
    assert (tmp_path / "a.npy").read_bytes() == b"in flight"


# --- two runs on one work folder ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> tuple[Path, Path]:
    from helpers import planned_dataset

    return planned_dataset(tmp_path_factory.mktemp("planned"), preprocess_3d_fullres=False)


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import fastseg.preprocess.worker as worker
    from fastseg.io.atomic import atomic_path
    from fastseg.preprocess.runner import PreprocessOptions, preprocess_dataset

    work, marker, release = map(Path, sys.argv[1:4])
    real = worker.preprocess_files

    def slow(identifier, images, label, plans, folders):
        if identifier == "case_0001":
            with atomic_path(Path(folders[0]) / "case_0001.npy") as tmp:  # a write in flight
                tmp.write_bytes(b"partial")
                marker.write_text(str(tmp))
                while not release.exists():
                    time.sleep(0.05)
        return real(identifier, images, label, plans, folders)

    worker.preprocess_files = slow
    reports = preprocess_dataset(work, options=PreprocessOptions(configurations=("3d_fullres",), num_processes=1, progress=False))
    print(" ".join(reports[0].processed))
    """
)


def test_second_run_on_a_work_folder_in_use_is_refused(planned, tmp_path):
    raw = planned[0]
    work = Path(shutil.copytree(planned[1], tmp_path / "work"))
    marker, release = tmp_path / "marker", tmp_path / "release"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(work), str(marker), str(release)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=OUTSIDE
    )
    try:
        wait_for(lambda: marker.exists() or holder.poll() is not None, what="the first run to reach its second case")
        assert holder.poll() is None, holder.communicate()
        in_flight = Path(marker.read_text())
        for argv in (
            ["preprocess", str(work), "-c", "3d_fullres", "-j", "1"],
            ["preprocess", str(work), "-j", "1", "--overwrite"],
            ["plan", str(raw), "-o", str(work), "-j", "1"],
        ):
            t = time.monotonic()
            second = subprocess.run([*FASTSEG, *argv], capture_output=True, text=True, timeout=120, cwd=OUTSIDE)
            assert second.returncode == 1, (argv, second.stdout, second.stderr)
            assert "Traceback" not in second.stderr
            assert f"pid {holder.pid}" in second.stderr and str(work) in second.stderr, second.stderr
            assert "fastseg preprocess" in second.stderr, second.stderr
            assert in_flight.exists(), f"{argv[0]} removed the first run's temporary file"
            assert time.monotonic() - t < 60
        release.write_text("")
        out, err = holder.communicate(timeout=120)
        assert holder.returncode == 0, err
        assert out.split() == ["case_0000", "case_0001", "case_0002"]
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    # The folder is free again, and nothing of the lock is left in it.
    again = subprocess.run([*FASTSEG, "preprocess", str(work), "-c", "3d_fullres", "-j", "1"], capture_output=True, text=True, cwd=OUTSIDE)
    assert again.returncode == 0 and "0 cases preprocessed, 3 already done" in again.stdout, again.stderr
    assert not [p for p in work.rglob(".*")]


def test_lock_is_released_when_its_holder_is_killed(tmp_path):
    from fastseg.runtime.locking import FolderInUseError, folder_lock

    script = "import sys, time; from fastseg.runtime.locking import folder_lock\n" \
        "with folder_lock(sys.argv[1], 'test holder'):\n    print('held', flush=True); time.sleep(600)\n"
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=OUTSIDE)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUseError, match=rf"pid {holder.pid} \(test holder\)") as info:
            with folder_lock(tmp_path, "second"):
                pass
        assert info.value.pid == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with folder_lock(tmp_path, "third"):
        pass
    assert list(tmp_path.iterdir()) == []


# --- a killed convert ---------------------------------------------------------------------------------------------


def staging_folders(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.name.startswith(".staging-"))


def test_rerun_removes_the_staging_folder_of_a_killed_convert(tmp_path):
    out = tmp_path / "Dataset010_Synth"
    argv = [*FASTSEG, "convert", "synthetic", "-o", str(out), "--cases", "400", "--shape", "8", "16", "16", "-j", "1"]
    convert = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=OUTSIDE)
    try:
        def writing() -> bool:
            return any(len(list((s / "imagesTr").glob("*"))) >= 2 for s in staging_folders(tmp_path) if (s / "imagesTr").is_dir())

        wait_for(lambda: writing() or convert.poll() is not None, what="convert to write its first cases")
        assert convert.poll() is None, convert.communicate()
        convert.send_signal(signal.SIGKILL)
        convert.wait()
    finally:
        if convert.poll() is None:
            convert.kill()
            convert.wait()
    left = staging_folders(tmp_path)
    assert len(left) == 1 and not out.exists()

    rerun = [*argv[:7], "--cases", "2", "-j", "1"]
    done = subprocess.run(rerun, capture_output=True, text=True, timeout=300, cwd=OUTSIDE)
    assert done.returncode == 0, done.stderr
    assert staging_folders(tmp_path) == [], "the killed run's staging folder is still there"
    assert (out / "dataset.json").is_file()

    # A staging folder of a live writer (this process) is never touched.
    from fastseg.runtime.locking import owner_token

    live = tmp_path / f".staging-{owner_token()}-0123abcd-{out.name}"
    live.mkdir()
    done = subprocess.run([*rerun, "--overwrite"], capture_output=True, text=True, timeout=300, cwd=OUTSIDE)
    assert done.returncode == 0, done.stderr
    assert staging_folders(tmp_path) == [live]


def test_interrupted_replacement_is_undone(tmp_path):
    """Killed between moving the old dataset aside and moving the new one in: the rerun puts the
    old dataset back before anything else."""
    from fastseg.io.raw_writer import staged_dataset

    target = tmp_path / "Dataset011"
    aside = tmp_path / f".replaced-{dead_pid()}-0123abcd-{target.name}"
    aside.mkdir()
    (aside / "dataset.json").write_text("{}")
    with pytest.raises(FileExistsError):
        with staged_dataset(target):
            pass
    assert (target / "dataset.json").read_text() == "{}" and not aside.exists()
