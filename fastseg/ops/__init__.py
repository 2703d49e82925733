"""Typed kernels: the one place that dispatches by input (numpy / CPU tensor -> fastseg._C, CUDA
tensor -> fastseg._C_cuda or Triton). Every op returns the same kind of array it was given."""

from fastseg.ops.accumulate import accumulate_tiles, normalize_accumulated
from fastseg.ops.components import (
    ComponentStats,
    component_stats,
    connected_components,
    fill_holes,
    release_cached_memory,
    remove_all_but_largest_component,
)
from fastseg.ops.export import export_segmentation
from fastseg.ops.normalize import SCHEMES, normalize
from fastseg.ops.resample import ANISO_THRESHOLD, compute_new_shape, resample, separate_z_axis
from fastseg.ops.tiling import gaussian_importance_map, sliding_window_offsets, sliding_window_steps

__all__ = [
    "ANISO_THRESHOLD",
    "ComponentStats",
    "SCHEMES",
    "accumulate_tiles",
    "component_stats",
    "compute_new_shape",
    "connected_components",
    "export_segmentation",
    "fill_holes",
    "gaussian_importance_map",
    "normalize",
    "normalize_accumulated",
    "release_cached_memory",
    "remove_all_but_largest_component",
    "resample",
    "separate_z_axis",
    "sliding_window_offsets",
    "sliding_window_steps",
]
