"""Typed kernels: the one place that dispatches by input (numpy / CPU tensor -> fastseg._C, CUDA
tensor -> fastseg._C_cuda or Triton). Every op returns the same kind of array it was given."""

from fastseg.ops.normalize import SCHEMES, normalize
from fastseg.ops.resample import ANISO_THRESHOLD, compute_new_shape, resample, separate_z_axis

__all__ = ["ANISO_THRESHOLD", "SCHEMES", "compute_new_shape", "normalize", "resample", "separate_z_axis"]
