"""Triton kernels for torch tensors (GPU, or CPU under ``TRITON_INTERPRET=1``).

Importing this package imports ``triton``; callers that must work without it (macOS, CPU-only
installs) check for it first and fall back to the C++ CPU path in ``fastseg._C``.
"""

from .normalize import moments, normalize_apply

__all__ = ["moments", "normalize_apply"]
