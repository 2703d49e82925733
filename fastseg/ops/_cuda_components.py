"""CUDA backend of fastseg.ops.components: torch tensors on a CUDA device in, on that device out.

Labelling runs the block-based union-find of ``fastseg._C_cuda`` (csrc/cuda/components.cu), which
leaves every voxel pointing at its component's first voxel; the roots are then numbered in raster
order by a prefix sum (``torch.cumsum``) of the root flags, so the labels equal the CPU path's.
Statistics, the largest-component filter and hole filling are torch operations on those labels.
Callers (fastseg.ops.components) have validated dtypes, ndim and connectivity already.
"""

from __future__ import annotations

import torch

from fastseg import _native
from fastseg.ops._stats import ComponentStats

__all__ = ["component_stats", "connected_components", "fill_holes", "remove_all_but_largest"]

_FULL = {3: 26, 2: 8}


def _kernels():
    """fastseg._C_cuda, or a RuntimeError that says how to get it."""
    module = _native.cuda_module()
    if module is None:
        raise RuntimeError(
            "fastseg's CUDA kernels were not built (fastseg._C_cuda is missing): reinstall fastseg where nvcc "
            "is on PATH, or pass CPU tensors / numpy arrays."
        )
    return module


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _as_volume(x: torch.Tensor) -> torch.Tensor:
    """(D, H, W) contiguous; a 2D image becomes D = 1."""
    x = x.contiguous()
    return x.reshape((1,) + tuple(x.shape)) if x.ndim == 2 else x


def connected_components(x: torch.Tensor, connectivity: int, binary: bool) -> tuple[torch.Tensor, int]:
    """Labels of a 2D/3D integer or bool CUDA tensor: (int32 labels of x's shape, n), as on the CPU."""
    kernels = _kernels()
    vol = _as_volume(x)
    if vol.dtype == torch.bool:
        vol = vol.view(torch.uint8)
    total = vol.numel()
    labels = torch.empty(tuple(vol.shape), dtype=torch.int32, device=x.device)
    if total == 0:
        return labels.reshape(x.shape), 0
    stream = _stream(x.device)
    with torch.cuda.device(x.device):
        kernels.cc_label(
            vol.data_ptr(), labels.data_ptr(), list(vol.shape), vol.element_size(), connectivity, binary, stream
        )
        rank = torch.empty(total, dtype=torch.int32, device=x.device)
        kernels.cc_mark_roots(labels.data_ptr(), rank.data_ptr(), total, stream)
        rank = torch.cumsum(rank, 0, dtype=torch.int32)
        kernels.cc_relabel(labels.data_ptr(), rank.data_ptr(), total, stream)
        n = int(rank[-1])
    return labels.reshape(x.shape), n


def component_stats(labels: torch.Tensor, n: int, image: torch.Tensor | None):
    """ComponentStats of labels 1..n (any integer CUDA tensor), values from image at each first voxel."""
    device = labels.device
    flat = labels.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) > n):
        raise ValueError(f"labels must lie in [0, n={n}], got [{int(flat.min())}, {int(flat.max())}]")
    counts = torch.bincount(flat, minlength=n + 1)[1 : n + 1]
    index = torch.arange(flat.numel(), device=device)
    ndim = labels.ndim
    starts, stops = [], []
    for axis in range(ndim):
        stride = 1
        for size in labels.shape[axis + 1 :]:
            stride *= int(size)
        coord = (index // stride) % labels.shape[axis]
        lo = torch.full((n + 1,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=device)
        hi = torch.full((n + 1,), -1, dtype=torch.int64, device=device)
        lo.scatter_reduce_(0, flat, coord, reduce="amin")
        hi.scatter_reduce_(0, flat, coord, reduce="amax")
        present = counts > 0
        starts.append(torch.where(present, lo[1:], 0))
        stops.append(torch.where(present, hi[1:] + 1, 0))
    bboxes = torch.stack(starts + stops, dim=1)
    values = None
    if image is not None:
        first = torch.full((n + 1,), flat.numel(), dtype=torch.int64, device=device)
        first.scatter_reduce_(0, flat, index, reduce="amin")
        img = image.reshape(-1)
        found = img[first[1:].clamp(max=max(flat.numel() - 1, 0))]
        values = torch.where(counts > 0, found, torch.zeros((), dtype=img.dtype, device=device))
    return ComponentStats(counts, bboxes, values)


def remove_all_but_largest(seg: torch.Tensor, members: list[int], background: int, connectivity: int) -> torch.Tensor:
    """seg with member voxels outside the largest component(s) of the members' union set to background."""
    out = seg.clone()
    if not members:
        return out
    mask = torch.isin(seg, torch.tensor(members, device=seg.device, dtype=seg.dtype))
    labels, n = connected_components(mask, connectivity, True)
    if n == 0:
        return out
    sizes = torch.bincount(labels.reshape(-1).to(torch.int64), minlength=n + 1)
    sizes[0] = 0
    keep = sizes == sizes.max()
    keep[0] = True
    out[~keep[labels.to(torch.int64)]] = background
    return out


def fill_holes(mask: torch.Tensor, connectivity: int) -> torch.Tensor:
    """mask | (background components that do not reach the border), bool, as scipy's binary_fill_holes."""
    fg = mask != 0
    labels, n = connected_components(~fg, connectivity, True)
    if n == 0:
        return fg
    vol = labels if labels.ndim == 3 else labels.unsqueeze(0)
    volumetric = connectivity in (6, 18, 26) and labels.ndim == 3
    faces = [vol[:, 0], vol[:, -1], vol[:, :, 0], vol[:, :, -1]]
    if volumetric:
        faces += [vol[0], vol[-1]]
    open_ = torch.zeros(n + 1, dtype=torch.bool, device=mask.device)
    for face in faces:
        open_[face.reshape(-1).to(torch.int64)] = True
    open_[0] = True
    return fg | ~open_[labels.to(torch.int64)]
