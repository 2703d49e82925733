"""Connected components: labelling, per-component statistics, nnU-Net's largest-component filter and
hole filling, on native kernels.

numpy arrays and CPU tensors run in ``fastseg._C`` (a run-based union-find over z-slabs in parallel,
with a row-block variant for masks under full connectivity; ``csrc/cpu/components.cpp`` says which
file explains what); CUDA tensors run in ``fastseg._C_cuda`` (a block-based
union-find, ``csrc/cuda/components.cu``) and are renumbered on the device, so both give the same
labels. The union-find bodies both use live in ``csrc/include/fastseg/components.h``.

Labels are deterministic: components are numbered 1..n in raster order (C order, last axis fastest)
of their first voxel, whatever the device, thread count or memory layout of the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fastseg import _native
from fastseg.ops._arrays import dispatch, kind_of, native_contiguous, to_numpy
from fastseg.ops._stats import ComponentStats

__all__ = [
    "ComponentStats",
    "component_stats",
    "connected_components",
    "fill_holes",
    "release_cached_memory",
    "remove_all_but_largest_component",
]

#: Connectivities per spatial ndim; the first is the full one (the default).
CONNECTIVITIES = {3: (26, 18, 6), 2: (8, 4)}

LabelsOrRegions = int | Sequence[int] | Sequence[int | Sequence[int]]


# --- validation ------------------------------------------------------------------------------------


def _dtype_of(x) -> np.dtype:
    """numpy dtype of an array, or of a torch tensor's elements."""
    if isinstance(x, np.ndarray):
        return x.dtype
    import torch

    if x.dtype == torch.bool:
        return np.dtype(bool)
    if x.is_floating_point() or x.is_complex():
        return np.dtype(np.float32 if x.is_floating_point() else np.complex64)
    return np.dtype(str(x.dtype).replace("torch.", ""))


def _check_integral(x, name: str) -> None:
    dt = _dtype_of(x)
    if dt.kind not in "biu":
        dtype = x.dtype if not isinstance(x, np.ndarray) else dt
        raise TypeError(f"{name} must hold integer labels or bools, got dtype {dtype}")


def _check_ndim(x, name: str, allowed: tuple = (2, 3)) -> int:
    if x.ndim not in allowed:
        what = " or ".join(f"{d}D" for d in allowed)
        raise ValueError(f"{name} must be {what}, got shape {tuple(x.shape)} ({x.ndim}D)")
    return x.ndim


def _check_connectivity(connectivity: int | None, ndim: int, in_plane: bool = False) -> int:
    allowed = CONNECTIVITIES[2 if in_plane else ndim]
    if connectivity is None:
        return allowed[0]
    if connectivity not in allowed:
        where = "per slice" if in_plane and ndim == 3 else f"in {ndim}D"
        raise ValueError(f"connectivity must be one of {allowed} {where}, got {connectivity!r}")
    return int(connectivity)


def _volume(a: np.ndarray) -> np.ndarray:
    """(D, H, W) C-contiguous native-order view or copy; 2D becomes D = 1."""
    a = native_contiguous(a)
    return a.reshape((1,) + a.shape) if a.ndim == 2 else a


def _labels_for(labels: np.ndarray, x: Any) -> np.ndarray:
    """uint32 labels for numpy callers; int32 (same bits, n < 2^31) for torch, whose uint32 lacks most ops."""
    return labels if isinstance(x, np.ndarray) else labels.view(np.int32)


# --- connected components -------------------------------------------------------------------------


def connected_components(x: Any, connectivity: int | None = None, *, return_stats: bool = False) -> tuple:
    """Labels the connected components of a mask or a label map.

    Voxels connect when they are neighbours under ``connectivity`` and carry the same nonzero value
    (like ``cc3d.connected_components``); 0 is background. A bool mask is labelled as such, an integer
    map per value: two touching organs with different labels are different components.

    Args:
        x: 2D ``(H, W)`` or 3D ``(D, H, W)`` numpy array or torch tensor (CPU or CUDA) of bools or
            integers. Any memory layout and byte order (non-C-contiguous input is copied once).
        connectivity: neighbours that connect: 26 (faces, edges, corners), 18 (faces, edges) or 6
            (faces) in 3D; 8 or 4 in 2D. Default None: the full one (26 in 3D, 8 in 2D).
        return_stats: also return a :class:`ComponentStats` (voxel counts, bounding boxes and the
            input value of each component). On the CPU they are gathered from the labeller's run
            tables in the same call, without reading the labels back; on CUDA by one more kernel
            over the labels.

    Returns:
        ``(labels, n)``, or ``(labels, n, stats)`` with ``return_stats``. ``labels`` has ``x``'s shape:
        0 for background, components 1..n numbered in raster order (C order, last axis fastest) of
        their first voxel, so the result does not depend on the device or the thread count. dtype
        uint32 for numpy input; int32 for torch tensors (torch's uint32 supports few operations),
        on ``x``'s device.

    Memory: on the CPU, the labels and the kernel's temporaries come from a cache that fastseg keeps
    for its kernels' large buffers (at most 256 MiB, in huge pages where the OS offers them). When
    the labels array is freed its memory returns to that cache, so a loop over volumes of similar
    size reuses mapped pages instead of faulting in fresh ones for every call.
    :func:`release_cached_memory` hands the cache back to the OS.

    Raises:
        TypeError: ``x`` is not an array or tensor, or holds floats or complex numbers.
        ValueError: ``x`` is not 2D or 3D, ``connectivity`` is not valid for its ndim, or it has
            2^32 - 1 voxels or more (2^31 - 1 for torch tensors).
    """
    kind = kind_of(x, "x")
    ndim = _check_ndim(x, "x")
    _check_integral(x, "x")
    connectivity = _check_connectivity(connectivity, ndim)
    _check_size(x, kind.is_torch)
    binary = _dtype_of(x) == np.bool_

    def on_cpu(a: np.ndarray) -> tuple:
        if not return_stats:
            labels, n = _native.cpu().connected_components(_volume(a), connectivity, binary)
            return _labels_for(labels.reshape(a.shape), x), int(n)
        # Statistics come from the labeller's run tables, in the same pass (no second read of the labels).
        labels, n, counts, bbox, values = _native.cpu().connected_components(_volume(a), connectivity, binary, True)
        return _labels_for(labels.reshape(a.shape), x), int(n), _stats_of(counts, bbox, values, ndim)

    def on_cuda(t) -> tuple:
        from fastseg.ops import _cuda_components

        labels, n = _cuda_components.connected_components(t, connectivity, binary)
        if return_stats:
            return labels, n, _cuda_components.component_stats(labels, n, t)
        return labels, n

    return dispatch(x, "x", cpu=on_cpu, cuda=on_cuda)


def release_cached_memory() -> int:
    """Returns the memory cached for the CPU kernels' buffers (see :func:`connected_components`) to
    the OS. Arrays still in use are not affected. Returns the number of bytes released."""
    return int(_native.cpu().release_scratch())


def _check_size(x, is_torch: bool) -> None:
    limit = 2**31 - 1 if is_torch else 2**32 - 2
    size = int(np.prod(tuple(x.shape), dtype=np.int64))
    if size >= limit:
        raise ValueError(f"x has {size} voxels; at most {limit - 1} are supported (labels are 32-bit)")


def _stats_of(counts: np.ndarray, bbox: np.ndarray, values: np.ndarray | None, ndim: int) -> ComponentStats:
    """ComponentStats from native (n,) counts, (n, 6) boxes and (n,) values; 2D drops z."""
    if ndim == 2:
        bbox = np.ascontiguousarray(bbox[:, [1, 2, 4, 5]])
    return ComponentStats(counts, bbox, values)


def component_stats(labels: Any, n: int | None = None, *, image: Any = None) -> ComponentStats:
    """Voxel counts and bounding boxes of labels 1..n, and optionally the image value of each.

    Args:
        labels: 2D or 3D non-negative integer labels (numpy array or torch tensor, CPU or CUDA), 0 for
            background, e.g. the output of :func:`connected_components`.
        n: number of labels; default None takes ``labels.max()``. Labels above n are an error.
        image: optional array of ``labels``' shape (e.g. the labelled input); ``values[i]`` is its
            value at the first voxel (raster order) of label ``i + 1``.

    Returns:
        A :class:`ComponentStats` of the labels' kind; a label that does not occur has count 0 and
        an all-zero box.

    Raises:
        TypeError: labels or image are not integer/bool arrays.
        ValueError: wrong ndim, negative labels, labels above ``n``, or an image of another shape.
    """
    kind = kind_of(labels, "labels")
    ndim = _check_ndim(labels, "labels")
    _check_integral(labels, "labels")
    if image is not None:
        if kind_of(image, "image") != kind:
            raise ValueError("image must be of the same kind (numpy, or torch on the same device) as labels")
        _check_integral(image, "image")
        if tuple(image.shape) != tuple(labels.shape):
            raise ValueError(f"image must have the labels' shape {tuple(labels.shape)}, got {tuple(image.shape)}")

    def on_cpu(a: np.ndarray) -> ComponentStats:
        lab = _volume(a)
        if lab.dtype.kind == "i" and lab.size and lab.min() < 0:
            raise ValueError(f"labels must be non-negative, got minimum {lab.min()}")
        count = n if n is not None else (int(lab.max()) if lab.size else 0)
        if count < 0:
            raise ValueError(f"n must be >= 0, got {count}")
        img = _volume(to_numpy(image)) if image is not None else None
        counts, bbox, values = _native.cpu().component_stats(lab, int(count), img)
        return _stats_of(counts, bbox, values if image is not None else None, ndim)

    def on_cuda(t) -> ComponentStats:
        from fastseg.ops import _cuda_components

        count = n if n is not None else (int(t.max()) if t.numel() else 0)
        return _cuda_components.component_stats(t, int(count), image)

    return dispatch(labels, "labels", cpu=on_cpu, cuda=on_cuda)


# --- nnU-Net's largest-component post-processing --------------------------------------------------


def _member_labels(labels_or_regions: LabelsOrRegions) -> list[int]:
    """The labels whose union nnU-Net filters: `labels_or_regions` is one label, one region (a tuple of
    labels), or a list of labels and regions (remove_all_but_largest_component_from_segmentation)."""
    items = labels_or_regions if isinstance(labels_or_regions, list) else [labels_or_regions]
    members: list[int] = []
    for item in items:
        group = [item] if np.isscalar(item) else list(item)
        for label in group:
            if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
                raise TypeError(
                    f"labels_or_regions must hold integer labels or tuples of them, got {label!r} in {labels_or_regions!r}"
                )
            members.append(int(label))
    return members


def remove_all_but_largest_component(
    seg: Any,
    labels_or_regions: LabelsOrRegions,
    background_label: int = 0,
    *,
    connectivity: int | None = None,
) -> Any:
    """Keeps only the largest connected component of a set of labels, as nnU-Net's
    ``remove_all_but_largest_component_from_segmentation`` does.

    The mask of all voxels whose label is in ``labels_or_regions`` is labelled with full connectivity
    (skimage's default that nnU-Net relies on: 26 in 3D, 8 in 2D); voxels of the mask outside its
    largest component become ``background_label``. When several components tie for the largest, all
    of them are kept (as acvl_utils does). The input is not modified.

    Args:
        seg: 2D or 3D integer or bool segmentation (numpy array or torch tensor, CPU or CUDA).
        labels_or_regions: a label, a region (tuple of labels), or a list of labels and regions; a
            list is one union, exactly as in nnU-Net.
        background_label: value written where voxels are removed (default 0); must fit seg's dtype.
        connectivity: override of the connectivity (26/18/6 in 3D, 8/4 in 2D); default None is nnU-Net's.

    Returns:
        A new segmentation of ``seg``'s shape, dtype and kind.

    Raises:
        TypeError: seg is not an integer/bool array, or a label is not an integer.
        ValueError: seg is not 2D or 3D, the connectivity is invalid, or background_label does not
            fit seg's dtype.
    """
    kind = kind_of(seg, "seg")
    ndim = _check_ndim(seg, "seg")
    _check_integral(seg, "seg")
    connectivity = _check_connectivity(connectivity, ndim)
    _check_size(seg, kind.is_torch)
    dtype = _dtype_of(seg)
    members = _member_labels(labels_or_regions)
    if isinstance(background_label, (bool, np.bool_)):
        background_label = int(background_label)
    if not isinstance(background_label, (int, np.integer)) or not _fits(int(background_label), dtype):
        raise ValueError(f"background_label must be an integer that fits seg's dtype {dtype}, got {background_label!r}")
    # Labels the dtype cannot hold match no voxel.
    members = sorted({m for m in members if _fits(m, dtype)})

    def on_cpu(a: np.ndarray) -> np.ndarray:
        vol = _volume(a)
        out = _native.cpu().remove_all_but_largest(
            vol, np.asarray(members, dtype=vol.dtype), np.asarray([background_label], dtype=vol.dtype), connectivity
        )
        return out.reshape(a.shape)

    def on_cuda(t):
        from fastseg.ops import _cuda_components

        return _cuda_components.remove_all_but_largest(t, members, int(background_label), connectivity)

    return dispatch(seg, "seg", cpu=on_cpu, cuda=on_cuda)


def _fits(value: int, dtype: np.dtype) -> bool:
    if dtype == np.bool_:
        return value in (0, 1)
    info = np.iinfo(dtype)
    return info.min <= value <= info.max


# --- hole filling ----------------------------------------------------------------------------------


def fill_holes(mask: Any, *, slice_wise: bool = False, connectivity: int | None = None) -> Any:
    """Fills the holes of a mask: background regions that do not reach the border.

    The same as ``scipy.ndimage.binary_fill_holes`` (with ``structure`` matching ``connectivity``),
    applied to the whole volume, or to every slice along axis 0 with ``slice_wise``.

    Args:
        mask: 2D or 3D mask (numpy array or torch tensor, CPU or CUDA); nonzero is foreground.
        slice_wise: fill each 2D slice ``mask[i]`` of a 3D mask on its own (default False).
        connectivity: how background voxels connect: 6, 18 or 26 in 3D, 4 or 8 in 2D and per slice.
            Default None: 6 / 4, scipy's default structure.

    Returns:
        A bool mask of ``mask``'s shape and kind: the input's foreground plus its holes.

    Raises:
        TypeError: mask holds floats or complex numbers.
        ValueError: mask is not 2D or 3D, slice_wise on a 2D mask, or an invalid connectivity.
    """
    kind = kind_of(mask, "mask")
    ndim = _check_ndim(mask, "mask")
    _check_integral(mask, "mask")
    if slice_wise and ndim != 3:
        raise ValueError(f"slice_wise fills the slices of a 3D mask, got shape {tuple(mask.shape)}")
    default = 6 if ndim == 3 and not slice_wise else 4
    connectivity = default if connectivity is None else _check_connectivity(connectivity, ndim, slice_wise)
    _check_size(mask, kind.is_torch)

    def on_cuda(t):
        from fastseg.ops import _cuda_components

        return _cuda_components.fill_holes(t, connectivity)

    return dispatch(
        mask, "mask", cpu=lambda a: _native.cpu().fill_holes(_volume(a), connectivity).reshape(a.shape), cuda=on_cuda
    )
