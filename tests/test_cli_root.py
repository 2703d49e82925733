"""The `fastseg` command as a new user runs it: the installed console script, from the repository root.

The repository root holds the uncompiled `fastseg/` source folder; every process the command starts
must still import the installed package (`fastseg.runtime.workers`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import fastseg_script

REPO_ROOT = Path(__file__).resolve().parents[1]


def _fastseg(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [fastseg_script(), *map(str, args)], cwd=REPO_ROOT, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout
    )


def test_repository_root_has_the_source_folder():
    # What makes the root special: a `fastseg/` folder without the compiled kernels.
    assert (REPO_ROOT / "fastseg" / "__init__.py").is_file()
    assert not list((REPO_ROOT / "fastseg").glob("_C*.so"))


@pytest.mark.slow
def test_demo_with_worker_processes_from_the_repository_root(tmp_path):
    run = _fastseg("demo", "--quick", "-o", tmp_path / "demo", "-j", 2)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 worker processes" in run.stdout and "foreground mean Dice on the held-out cases" in run.stdout
    work = tmp_path / "demo" / "work" / "Dataset900_FastsegDemo"
    plans = json.loads((work / "plans.json").read_text())
    folder = work / plans["configurations"]["2d"]["data_identifier"]
    assert len(list(folder.glob("case_*.json"))) == 6


def test_plan_and_preprocess_from_the_repository_root(tmp_path):
    from fastseg.datasets.synthetic import SyntheticConfig, write_synthetic_dataset

    raw = tmp_path / "Dataset003_Root"
    write_synthetic_dataset(raw, SyntheticConfig(num_cases=3, shape=(12, 32, 32)), num_processes=1)
    work = tmp_path / "work"
    run = _fastseg("plan", raw, "-o", work, "-j", 2)
    assert run.returncode == 0, run.stdout + run.stderr
    run = _fastseg("preprocess", work, "-c", "3d_fullres", "-j", 2)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3d_fullres: 3 cases preprocessed" in run.stdout


def test_plan_with_preprocess_equals_plan_then_preprocess(tmp_path):
    """`fastseg plan --preprocess` (one command, nnU-Net's plan_and_preprocess) writes what
    `fastseg plan` followed by `fastseg preprocess` writes."""
    import numpy as np

    from fastseg.datasets.synthetic import SyntheticConfig, write_synthetic_dataset

    raw = tmp_path / "Dataset004_Both"
    write_synthetic_dataset(raw, SyntheticConfig(num_cases=3, shape=(12, 32, 32)), num_processes=1)
    one, two = tmp_path / "one", tmp_path / "two"
    run = _fastseg("plan", raw, "-o", one, "-j", 2, "--preprocess")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3d_fullres: 3 cases preprocessed" in run.stdout and "preprocess" in run.stdout.splitlines()[-1]
    for args in (("plan", raw, "-o", two, "-j", 2), ("preprocess", two, "-j", 2)):
        run = _fastseg(*args)
        assert run.returncode == 0, run.stdout + run.stderr
    files = sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file()) == files
    assert any(f.suffix == ".npy" for f in files)
    for f in files:
        if f.suffix == ".npy":
            np.testing.assert_array_equal(np.load(one / f), np.load(two / f))
        elif f.name != "source.json":
            assert (one / f).read_bytes() == (two / f).read_bytes(), f


def test_demo_default_output_folder_is_ignored_by_git():
    if not (REPO_ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    from fastseg.cli import build_parser

    default = build_parser().parse_args(["demo"]).output
    run = subprocess.run(["git", "check-ignore", "-q", f"{default}/raw/x.nii.gz"], cwd=REPO_ROOT)
    assert run.returncode == 0, f"`fastseg demo` writes {default}/ in the repository root, which git does not ignore"
