"""Conversion at the boundary of `fastseg.ops`: numpy arrays and torch tensors in, the same kind out.

Every op accepts a numpy array, a CPU torch tensor or a CUDA torch tensor. CPU inputs are viewed as
numpy arrays without a copy (torch's `.numpy()` shares memory) and go to `fastseg._C`; CUDA tensors
stay on their device and go to the CUDA/Triton implementations.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np



class _TorchOnceLoaded:
    """`torch`, without importing it for callers that never use it.

    Importing torch costs over a second, and the CLI and the preprocessing workers pass numpy arrays
    only. No tensor can exist before the caller has imported torch, so until then `torch.Tensor`
    is a class nothing is an instance of; any other attribute imports torch on first use.
    """

    class _NoTensorYet:
        pass

    def __getattr__(self, name: str):
        module = sys.modules.get("torch")
        if module is None:
            if name == "Tensor":
                return self._NoTensorYet
            import torch as module
        return getattr(module, name)


torch = _TorchOnceLoaded()


@dataclass(frozen=True)
class Kind:
    """Where an input came from, so that the result can be handed back in the same form."""

    is_torch: bool
    device: Any = None

    @property
    def is_cuda(self) -> bool:
        return self.is_torch and self.device is not None and self.device.type == "cuda"


def kind_of(x: Any, name: str) -> Kind:
    if isinstance(x, np.ndarray):
        return Kind(False)
    if isinstance(x, torch.Tensor):
        return Kind(True, x.device)
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


def to_numpy(x: Any) -> np.ndarray:
    """A CPU input as a numpy array (no copy for numpy arrays and CPU tensors)."""
    if isinstance(x, np.ndarray):
        return x
    if x.dtype == torch.bfloat16:
        x = x.float()
    return x.detach().numpy()


def native_contiguous(a: np.ndarray, dtype: np.dtype | None = None) -> np.ndarray:
    """C-contiguous, native byte order, optionally converted to `dtype`; copies only when needed."""
    target = np.dtype(dtype) if dtype is not None else a.dtype.newbyteorder("=")
    return np.ascontiguousarray(a, dtype=target)


def back(result: np.ndarray, kind: Kind) -> Any:
    """Hands a numpy result back in the caller's kind."""
    if kind.is_torch:
        return torch.from_numpy(result)
    return result
