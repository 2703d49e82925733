"""The boundary of `fastseg.ops`: numpy arrays and torch tensors in, the same kind out, and the checks
every op makes there.

Every op accepts a numpy array, a CPU torch tensor or a CUDA torch tensor and returns the same kind.
:func:`dispatch` is the one place that tells them apart: CPU inputs are viewed as numpy arrays
without a copy (torch's ``.numpy()`` shares memory) and go to ``fastseg._C``, and the numpy results
come back as tensors (sharing their memory) for tensor callers; CUDA tensors stay on their device
and go to the CUDA/Triton implementations, which return tensors on that device.

Checks shared by the ops, made before their work starts:

* :func:`check_result_size` refuses results that cannot fit in memory (the machine's for CPU
  inputs, the device's for CUDA tensors) before anything is allocated, naming shapes and bytes;
* :func:`check_finite` refuses NaN and Inf in float inputs, counted by one native pass (CPU) or in
  bounded chunks (CUDA), never through a temporary as large as the input.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastseg import _native


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
    """A CPU input as a numpy array (no copy for numpy arrays and CPU tensors; bfloat16 becomes float32)."""
    if isinstance(x, np.ndarray):
        return x
    if x.dtype == torch.bfloat16:
        x = x.float()
    return x.detach().numpy()


def native_contiguous(a: np.ndarray, dtype: np.dtype | None = None) -> np.ndarray:
    """C-contiguous, native byte order, optionally converted to `dtype`; copies only when needed."""
    target = np.dtype(dtype) if dtype is not None else a.dtype.newbyteorder("=")
    return np.ascontiguousarray(a, dtype=target)


def back(result: Any, kind: Kind) -> Any:
    """Hands a CPU result back in the caller's kind: for tensor callers every numpy array becomes a
    tensor sharing its memory, also inside tuples and dataclasses (e.g. ComponentStats); anything
    else (None, ints) is returned as it is."""
    if not kind.is_torch:
        return result
    if isinstance(result, np.ndarray):
        return torch.from_numpy(result)
    if isinstance(result, tuple):
        return tuple(back(r, kind) for r in result)
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        fields = {f.name: back(getattr(result, f.name), kind) for f in dataclasses.fields(result) if f.init}
        return dataclasses.replace(result, **fields)
    return result


def dispatch(
    x: Any,
    name: str,
    *,
    cpu: Callable[[Any], Any],
    cuda: Callable[[Any], Any],
    host: Callable[[Any], Any] = to_numpy,
) -> Any:
    """Runs an op on the backend that `x` selects and hands the result back in `x`'s kind.

    Args:
        x: the op's main input: a numpy array or a torch tensor, CPU or CUDA.
        name: its name in the TypeError raised when it is neither.
        cpu: the CPU implementation, called with ``host(x)`` for numpy arrays and CPU tensors. Its
            numpy results are handed back with :func:`back` (tensors for tensor callers).
        cuda: the GPU implementation, called with the CUDA tensor itself; returns what the op
            returns (tensors on ``x``'s device).
        host: how a CPU input becomes what ``cpu`` takes (default :func:`to_numpy`: a numpy view).

    Returns:
        What ``cpu`` or ``cuda`` returned, in ``x``'s kind.
    """
    kind = kind_of(x, name)
    if kind.is_cuda:
        return cuda(x)
    if kind.is_torch and kind.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU or a CUDA device, got {kind.device}")
    return back(cpu(host(x)), kind)


# --- up-front checks ---------------------------------------------------------------------------------


def _dtype_name_and_size(dtype: Any) -> tuple[str, int]:
    """Name and element size of a numpy or torch dtype."""
    if isinstance(dtype, np.dtype) or (isinstance(dtype, type) and issubclass(dtype, np.generic)):
        dt = np.dtype(dtype)
        return dt.name, dt.itemsize
    return str(dtype).removeprefix("torch."), int(dtype.itemsize)


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.3g} GiB"


def memory_limit(kind: Kind) -> tuple[int, str]:
    """The most bytes a result of `kind` could ever occupy, and where: the CUDA device's total
    memory for CUDA tensors, else the machine's physical memory (no larger allocation can succeed,
    whatever else is running), never more than numpy can address."""
    addressable = int(np.iinfo(np.intp).max)
    if kind.is_cuda:
        total = int(torch.cuda.get_device_properties(kind.device).total_memory)
        return min(total, addressable), f"memory of {kind.device}"
    try:
        total = int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        total = 0
    if total <= 0:
        return addressable, "the largest array numpy can address"
    return min(total, addressable), "memory of this machine"


def check_result_size(what: str, results: Sequence[tuple[str, Sequence[int], Any]], kind: Kind, hint: str) -> None:
    """Refuses, before anything is allocated, results that cannot fit in memory.

    Sizes are Python ints, so no product overflows however large the shapes.

    Args:
        what: what is computed, for the message (e.g. ``"resampling data (1, 4, 4, 4) to new_shape
            (9, 9, 9)"``).
        results: ``(label, shape, dtype)`` of every array the op returns; dtype numpy or torch.
        kind: the inputs' kind, which says where the results would live (:func:`memory_limit`).
        hint: what to do instead, ends the message.

    Raises:
        ValueError: the results take more bytes than :func:`memory_limit` allows; the message
            names every shape, the bytes and the limit.
    """
    total = 0
    parts = []
    for label, shape, dtype in results:
        dims = tuple(int(s) for s in shape)
        dtype_name, itemsize = _dtype_name_and_size(dtype)
        nbytes = math.prod(dims) * itemsize
        total += nbytes
        parts.append(f"{label} {dims} {dtype_name} ({nbytes:,} bytes)")
    limit, where = memory_limit(kind)
    if total > limit:
        raise ValueError(
            f"{what} would need {total:,} bytes ({_gib(total)}) for the {' and the '.join(parts)}: more than the "
            f"{limit:,} bytes ({_gib(limit)}) of {where}. {hint}"
        )


# Elements per chunk where the count cannot run natively (CUDA tensors, unusual layouts or dtypes).
_CHUNK = 1 << 22
_NATIVE_FLOATS = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}


def count_nonfinite(x: Any, storage: str | None = None) -> int:
    """The number of NaN and +-Inf elements of a float array or tensor; 0 for other dtypes.

    Args:
        x: numpy array or torch tensor (CPU or CUDA).
        storage: ``"bfloat16"`` when ``x`` is a uint16 numpy array of bfloat16 bit patterns (numpy
            has no bfloat16); None (default) reads ``x``'s dtype.
    """
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            return 0
        if x.device.type != "cpu":
            flat = x.detach().reshape(-1)
            count = torch.zeros((), dtype=torch.int64, device=x.device)
            for start in range(0, flat.numel(), _CHUNK):
                count += (~torch.isfinite(flat[start : start + _CHUNK])).sum()
            return int(count)
        if x.dtype == torch.bfloat16:
            return count_nonfinite(x.detach().view(torch.int16).numpy().view(np.uint16), "bfloat16")
        return count_nonfinite(x.detach().numpy())
    if storage is None and x.dtype.kind != "f":
        return 0
    name = storage or _NATIVE_FLOATS.get(x.dtype)
    if name is not None and x.flags.c_contiguous:
        return int(_native.cpu().count_nonfinite(x, name))
    # Any other layout or dtype (float64, non-native byte order, strided): bounded chunks in numpy.
    count = 0
    with np.nditer(x, flags=["external_loop", "buffered", "zerosize_ok"], buffersize=_CHUNK, order="K") as it:
        for chunk in it:
            bad = (chunk & 0x7F80) == 0x7F80 if storage == "bfloat16" else ~np.isfinite(chunk)
            count += int(np.count_nonzero(bad))
    return count


def check_finite(x: Any, name: str, consequence: str, storage: str | None = None) -> None:
    """Raises ``ValueError("<name> contains <n> NaN or infinite values; <consequence>")`` when x holds
    any (see :func:`count_nonfinite` for `storage`)."""
    count = count_nonfinite(x, storage)
    if count:
        raise ValueError(f"{name} contains {count} NaN or infinite values; {consequence}")
