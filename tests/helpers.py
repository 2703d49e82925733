"""Helpers shared by the test modules (tests/ is on sys.path through pytest's `pythonpath`)."""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch


def _cuda_available() -> bool:
    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not _cuda_available(), reason="no CUDA device")


def cuda_kernels_built() -> bool:
    from fastseg import _native

    return _native.cuda_module() is not None


requires_cuda_kernels = pytest.mark.skipif(
    not _cuda_available() or not cuda_kernels_built(),
    reason="no CUDA device" if not _cuda_available() else "fastseg._C_cuda not compiled (no nvcc at build time)",
)


def smooth_labels(rng: np.random.Generator, shape: tuple, n_labels: int, blobs: int = 6) -> np.ndarray:
    """A label map of overlapping balls (organ-like blobs) on background 0."""
    seg = np.zeros(shape, dtype=np.int16)
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    for _ in range(blobs):
        centre = [rng.uniform(0, s) for s in shape]
        radius = rng.uniform(0.15, 0.35) * min(shape)
        inside = sum((g - c) ** 2 for g, c in zip(grids, centre)) < radius**2
        seg[inside] = rng.integers(1, n_labels)
    return seg


# --- analyze hooks of fastseg.io.verify_dataset: worker processes import them by module name, so they
# live here (tests/ is on sys.path), not in a test module.


def hook_shape_and_labels(case):
    """What the worker saw of a verified case."""
    return case.identifier, case.images.dtype.name, case.images.shape, case.seg.shape, case.num_training_cases


def hook_fail_on_c1(case):
    if case.identifier == "c1":
        raise ZeroDivisionError("boom")
    return case.identifier


# --- worker functions for tests/test_workers.py (importable by worker processes) -------------------


def package_file() -> str:
    """The fastseg package file this process imported."""
    import fastseg

    return fastseg.__file__


def mark_and_sleep(folder: str, seconds: float) -> None:
    """Writes '<pid> <parent pid>' into a file named after this process, then sleeps."""
    import os
    import time
    from pathlib import Path

    (Path(folder) / str(os.getpid())).write_text(f"{os.getpid()} {os.getppid()}")
    time.sleep(seconds)


def kill_self(_: int) -> None:
    """Dies the way the out-of-memory killer ends a process."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def fastseg_script() -> str:
    """The installed `fastseg` console script, as a user runs it (not `python -m fastseg.cli`, which
    would put the working directory, perhaps the source checkout, first on sys.path)."""
    script = Path(sysconfig.get_path("scripts")) / "fastseg"
    found = str(script) if script.is_file() else shutil.which("fastseg")
    assert found, "the `fastseg` console script is not installed; run `pip install .`"
    return found


def timed_nap(seconds: float) -> tuple[float, float]:
    """Sleeps; returns (start, end) wall-clock times, to see which jobs ran at the same time."""
    import time

    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def planned_dataset(base: Path, preprocess_3d_fullres: bool = False) -> tuple[Path, Path]:
    """(raw dataset, work folder) of 3 small synthetic CT cases after `plan` (and, when asked,
    `preprocess -c 3d_fullres`), under `base`."""
    from fastseg.datasets.synthetic import SyntheticConfig, write_synthetic_dataset
    from fastseg.preprocess.runner import PreprocessOptions, preprocess_dataset
    from fastseg.workflow import plan_dataset

    raw = base / "raw" / "Dataset001_Synthetic"
    write_synthetic_dataset(raw, SyntheticConfig(num_cases=3, ct=True, shape=(12, 28, 24)), num_processes=1)
    work = base / "work"
    plan_dataset(raw, work, num_processes=1, progress=False)
    if preprocess_3d_fullres:
        preprocess_dataset(work, options=PreprocessOptions(configurations=("3d_fullres",), num_processes=1, progress=False))
    return raw, work
