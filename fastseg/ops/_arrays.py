"""Conversion at the boundary of `fastseg.ops`: numpy arrays and torch tensors in, the same kind out.

Every op accepts a numpy array, a CPU torch tensor or a CUDA torch tensor. CPU inputs are viewed as
numpy arrays without a copy (torch's `.numpy()` shares memory) and go to `fastseg._C`; CUDA tensors
stay on their device and go to the CUDA/Triton implementations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

try:
    import torch
except ImportError:  # pragma: no cover - torch is a dependency, kept optional for the ops only
    torch = None


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
    if torch is not None and isinstance(x, torch.Tensor):
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
