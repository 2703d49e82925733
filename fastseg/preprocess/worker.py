"""One case from raw files to preprocessed files: what a `fastseg preprocess` worker process runs.

Imports the kernels (`fastseg.preprocess.case`), the SimpleITK reader (which `fastseg.io` loads
lazily, at the first read) and numpy's random module (class-location sampling) at module level, so
that the worker pool's fork server loads them once for all workers instead of each worker at its first
case. (Importing SimpleITK starts no threads; what makes forking unsafe is a process that has used
it, and the fork server never reads an image.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.random  # noqa: F401 -- preloaded for the workers, see above
import SimpleITK  # noqa: F401 -- preloaded for the workers (fastseg.io.sitk_format imports it at first use)

import fastseg.io.sitk_format  # noqa: F401 -- preloaded for the workers, see above
from fastseg import io as fio
from fastseg.preprocess.case import preprocess_case_multi
from fastseg.preprocess.caseplan import CasePlan
from fastseg.preprocess.storage import save_case


def preprocess_files(identifier: str, images: list[str], label: str | None, plans: list[CasePlan], folders: list[str]) -> list[str]:
    """Reads one case, preprocesses it into every plan and saves each result atomically.

    Args:
        identifier: the case name (output file stem).
        images: channel files, in channel order.
        label: the segmentation file, or None.
        plans: configurations to produce (2d first lets 3D ones reuse its in-plane resampling).
        folders: output folder per plan.

    Returns:
        The configuration names written.
    """
    if len(plans) != len(folders):
        raise ValueError(f"need one output folder per plan, got {len(folders)} folders for {len(plans)} plans")
    data, props = fio.read_images([Path(p) for p in images])
    seg = fio.read_seg(Path(label))[0] if label is not None else None
    saved: list[tuple[np.ndarray, np.ndarray, str]] = []  # arrays written for earlier plans, and where
    for plan, folder, (_, d, s, p) in zip(plans, folders, preprocess_case_multi(data, seg, props, plans)):
        # A 3D configuration at the 2d one's spacing ends with the 2d one's very arrays: link its files.
        same = next((f for d0, s0, f in saved if d0 is d and s0.dtype == s.dtype and np.array_equal(s0, s)), None)
        save_case(folder, identifier, d, s, p, plan.digest(), same_arrays_in=same)
        saved.append((d, s, folder))
    return [plan.configuration for plan in plans]
