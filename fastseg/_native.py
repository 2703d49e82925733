"""Loading of the compiled modules: `fastseg._C` (CPU, always built) and `fastseg._C_cuda` (optional)."""

from __future__ import annotations

import functools
from types import ModuleType


@functools.lru_cache(maxsize=None)
def cpu() -> ModuleType:
    """The CPU kernel module. Raises ImportError with build instructions when it is missing."""
    try:
        from fastseg import _C
    except ImportError as err:  # pragma: no cover - only in a broken install
        raise ImportError(
            "fastseg's native CPU module (fastseg._C) is not built. Install the package with "
            "`pip install .` from the repository root (it compiles csrc/ with CMake), and run Python "
            f"from outside the source tree. Original error: {err}"
        ) from err
    return _C


@functools.lru_cache(maxsize=None)
def cuda_module() -> ModuleType | None:
    """The CUDA kernel module, or None when the build had no CUDA compiler."""
    try:
        from fastseg import _C_cuda
    except ImportError:
        return None
    return _C_cuda


def build_info() -> dict:
    """What this installation has: CPU threads, whether CUDA kernels were compiled and can run."""
    mod = cuda_module()
    devices = mod.device_count() if mod is not None else 0
    return {
        "cpu_threads": cpu().max_threads(),
        "cuda_kernels_compiled": mod is not None,
        "cuda_devices": devices,
    }
