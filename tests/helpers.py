"""Helpers shared by the test modules (tests/ is on sys.path through pytest's `pythonpath`)."""

from __future__ import annotations

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
