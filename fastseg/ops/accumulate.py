"""Gaussian-weighted accumulation of predicted tiles, in place, and the division by the weights.

Sliding-window prediction adds every predicted tile, times the importance map of
:func:`fastseg.ops.gaussian_importance_map`, into a float32 accumulator of the whole image, and the
importance map into a weight map; the logits are the accumulator divided by the weights
(:func:`normalize_accumulated`, or fused into :func:`fastseg.ops.export_segmentation` with its
``weights`` argument). Tiles of one batch may overlap. How the backends avoid lost updates:
``csrc/include/fastseg/inference.h``.

Backends: numpy arrays and CPU tensors go to ``fastseg._C`` (OpenMP); CUDA tensors to
``fastseg._C_cuda`` when it is built, else to the Triton kernel (``fastseg/ops/triton/accumulate.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastseg import _native
from fastseg.ops._arrays import dispatch, kind_of, torch


__all__ = ["accumulate_tiles", "normalize_accumulated"]

_NUMPY_TILE_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}


def _torch_tile_dtypes() -> dict:
    return {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _dtype_name(x: Any) -> str:
    return str(x.dtype).removeprefix("torch.")


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _check_float32_inplace(x: Any, name: str) -> None:
    """x is float32, C-contiguous and writable: it is updated in place, so it cannot be converted."""
    if _dtype_name(x) != "float32":
        raise ValueError(f"{name} must be float32 (it is updated in place), got {_dtype_name(x)}")
    if isinstance(x, np.ndarray):
        if not x.flags.c_contiguous or not x.flags.writeable or not x.dtype.isnative:
            raise ValueError(f"{name} must be a writable, C-contiguous, native-byte-order array (updated in place)")
    elif not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous (it is updated in place), got strides {x.stride()}")


def _offsets_array(offsets: Any, batch: int, ndim: int) -> np.ndarray:
    """offsets as a host integer (B, ndim) array, of any integer dtype (checked, then converted to int64,
    by _check_offsets)."""
    if torch is not None and isinstance(offsets, torch.Tensor):
        offsets = offsets.detach().cpu().numpy()
    arr = np.asarray(offsets)
    if arr.size == 0 and batch == 0:
        return np.zeros((0, ndim), dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"offsets must hold integers, got dtype {arr.dtype}")
    if arr.shape != (batch, ndim):
        raise ValueError(
            f"offsets must have shape (B, {ndim}) = ({batch}, {ndim}), one start corner per tile, got {arr.shape}"
        )
    return arr


def _check_offsets(offsets: np.ndarray, tile: tuple, image: tuple) -> np.ndarray:
    """Every tile inside the image, as int64 offsets.

    A tile fits along an axis when ``0 <= offset <= image - tile`` (``tile <= image`` is checked
    before). The comparison never forms ``offset + tile``: near the int64 limits that sum wraps around
    and would let a tile far outside the image through. Python-int bounds compare exactly with any
    integer dtype, uint64 included.
    """
    outside = np.zeros(offsets.shape, dtype=bool)
    for axis in range(offsets.shape[1]):
        column = offsets[:, axis]
        outside[:, axis] = (column < 0) | (column > int(image[axis]) - int(tile[axis]))
    if outside.any():
        b, axis = (int(i) for i in np.argwhere(outside)[0])
        raise ValueError(
            f"tile {b} at offset {tuple(int(v) for v in offsets[b])} does not fit in the image along axis {axis}: "
            f"offset {int(offsets[b, axis])} + tile size {tile[axis]} must lie in [0, {image[axis]}] "
            f"(image {image}, tile {tile})"
        )
    return offsets.astype(np.int64)


def accumulate_tiles(
    accumulator: Any,
    tiles: Any,
    offsets: Any,
    *,
    weights: Any = None,
    importance_map: Any = None,
) -> None:
    """Adds a batch of predicted tiles, times the importance map, into the accumulator, in place.

    For every tile ``b`` at start corner ``offsets[b]``:
    ``accumulator[:, offsets[b] + t] += tiles[b, :, t] * importance_map[t]`` and
    ``weights[offsets[b] + t] += importance_map[t]`` for every tile voxel ``t``. Tiles of one batch may
    overlap; no update is lost. Sums are float32 whatever the tiles' dtype. A 2D network sliding over
    a 3D volume (nnU-Net's 2d configuration) passes its tiles as ``(B, C, 1, h, w)`` with offsets
    ``(slice, y, x)``.

    Args:
        accumulator: float32 ``(C, D, H, W)`` or ``(C, H, W)``, C-contiguous and writable: numpy
            array or torch tensor (CPU or CUDA). Updated in place.
        tiles: ``(B, C, d, h, w)`` or ``(B, C, h, w)`` network outputs: float16 or float32 (numpy),
            float16, bfloat16 or float32 (torch); on the accumulator's device (a numpy accumulator
            takes numpy arrays or CPU tensors). No tile may be larger than the image.
        offsets: ``(B, ndim)`` integer start corner of each tile (numpy array, sequence or tensor),
            e.g. rows of :func:`fastseg.ops.sliding_window_offsets`; every tile must lie inside the
            image.
        weights: float32 ``(D, H, W)`` / ``(H, W)`` weight map, updated in place like the
            accumulator; None (default) skips it.
        importance_map: float32 ``(d, h, w)`` / ``(h, w)`` weight of each tile voxel, e.g.
            :func:`fastseg.ops.gaussian_importance_map`; None (default) weighs every voxel 1 (nnU-Net
            without Gaussian). Converted to float32 on the accumulator's device when it is not.

    Raises:
        TypeError: an argument is neither a numpy array nor a torch tensor.
        ValueError: wrong dtypes or dimensions, channel counts that differ, offsets whose shape is
            not ``(B, ndim)``, a tile larger than the image or placed outside it, devices that differ.
    """
    kind_of(accumulator, "accumulator")
    kind_of(tiles, "tiles")
    if accumulator.ndim not in (3, 4):
        raise ValueError(f"accumulator must be (C, D, H, W) or (C, H, W), got shape {_shape(accumulator)}")
    _check_float32_inplace(accumulator, "accumulator")
    ndim = accumulator.ndim - 1
    image = _shape(accumulator)[1:]
    channels = int(accumulator.shape[0])
    if tiles.ndim != ndim + 2:
        raise ValueError(
            f"tiles must be (B, C, *tile) with {ndim} spatial axes like the accumulator {_shape(accumulator)}, "
            f"got shape {_shape(tiles)}"
        )
    batch, tile_channels = int(tiles.shape[0]), int(tiles.shape[1])
    tile = _shape(tiles)[2:]
    if tile_channels != channels:
        raise ValueError(f"tiles have {tile_channels} channels but the accumulator has {channels}")
    larger = [a for a in range(ndim) if tile[a] > image[a]]
    if larger:
        raise ValueError(
            f"tile {tile} is larger than the image {image} along axes {larger}; pad the image to the tile size first"
        )
    torch_tiles = torch is not None and isinstance(tiles, torch.Tensor)
    allowed = _torch_tile_dtypes() if torch_tiles else _NUMPY_TILE_DTYPES
    if tiles.dtype not in allowed:
        raise ValueError(
            f"tiles must be {', '.join(allowed.values())}, got {_dtype_name(tiles)}; convert them to float32"
        )
    off = _check_offsets(_offsets_array(offsets, batch, ndim), tile, image)
    if weights is not None:
        kind_of(weights, "weights")
        _check_float32_inplace(weights, "weights")
        if _shape(weights) != image:
            raise ValueError(f"weights must have the image shape {image}, got {_shape(weights)}")
    if importance_map is not None:
        kind_of(importance_map, "importance_map")
        if _shape(importance_map) != tile:
            raise ValueError(f"importance_map must have the tile shape {tile}, got {_shape(importance_map)}")
        if _dtype_name(importance_map) not in ("float16", "bfloat16", "float32", "float64"):
            raise ValueError(f"importance_map must be a float array, got {_dtype_name(importance_map)}")
    if batch == 0 or channels == 0:
        return

    # Everything in 3D: a 2D image is one slice.
    pad = 3 - ndim
    image3 = (1,) * pad + image
    tile3 = (1,) * pad + tile
    off3 = np.concatenate([np.zeros((batch, pad), dtype=np.int64), off], axis=1) if pad else off

    dispatch(
        accumulator,
        "accumulator",
        cpu=lambda acc: _accumulate_cpu(acc, tiles, off3, weights, importance_map, image3, tile3),
        cuda=lambda acc: _accumulate_cuda(acc, tiles, off3, weights, importance_map, image3, tile3),
    )


def _host_tiles(tiles: Any) -> tuple[np.ndarray, str]:
    """tiles as a C-contiguous numpy array plus the dtype name the kernel reads them as."""
    if torch is not None and isinstance(tiles, torch.Tensor):
        if tiles.device.type != "cpu":
            raise ValueError(f"tiles must be on the CPU like the accumulator, got device {tiles.device}")
        t = tiles.detach().contiguous()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(np.uint16), "bfloat16"
        return t.numpy(), _torch_tile_dtypes()[t.dtype]
    return np.ascontiguousarray(tiles, dtype=tiles.dtype.newbyteorder("=")), _NUMPY_TILE_DTYPES[tiles.dtype]


def _host_array(x: Any, name: str) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if x.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU like the accumulator, got device {x.device}")
    return x.detach().numpy()


def _accumulate_cpu(acc: np.ndarray, tiles, off3, weights, importance_map, image3, tile3) -> None:
    """acc: the accumulator as a numpy view (updated in place through it)."""
    acc = acc.reshape((acc.shape[0],) + image3)
    t, tiles_dtype = _host_tiles(tiles)
    t = t.reshape((t.shape[0], t.shape[1]) + tile3)
    w = None if weights is None else _host_array(weights, "weights").reshape(image3)
    g = None
    if importance_map is not None:
        if not isinstance(importance_map, np.ndarray):
            importance_map = _host_array(importance_map.detach().to(torch.float32), "importance_map")
        g = np.ascontiguousarray(importance_map, dtype=np.float32).reshape(tile3)
    _native.cpu().accumulate_tiles(acc, w, t, tiles_dtype, np.ascontiguousarray(off3), g)


def _accumulate_cuda(accumulator, tiles, off3, weights, importance_map, image3, tile3) -> None:
    device = accumulator.device
    for name, x in (("tiles", tiles), ("weights", weights)):
        if x is not None and (not isinstance(x, torch.Tensor) or x.device != device):
            where = x.device if isinstance(x, torch.Tensor) else "host (numpy)"
            raise ValueError(f"{name} must be on the accumulator's device {device}, got {where}")
    acc = accumulator.view((accumulator.shape[0],) + image3)
    t = tiles.contiguous().view((tiles.shape[0], tiles.shape[1]) + tile3)
    w = None if weights is None else weights.view(image3)
    g = None
    if importance_map is not None:
        g = torch.as_tensor(importance_map).to(device=device, dtype=torch.float32).contiguous().view(tile3)
    if _native.cuda_module() is not None:
        from fastseg.ops import _cuda_inference

        _cuda_inference.accumulate_tiles(acc, w, t, off3, g)
    else:
        from fastseg.ops.triton import accumulate as triton_accumulate

        offsets = torch.from_numpy(np.ascontiguousarray(off3)).to(device)
        triton_accumulate.accumulate_tiles(acc, w, t, offsets, g)


def normalize_accumulated(accumulator: Any, weights: Any) -> Any:
    """Divides the accumulated logits by the accumulated weights, in place.

    Only needed when the logits themselves are wanted (ensembling, saving them):
    :func:`fastseg.ops.export_segmentation` takes ``weights`` and divides on the fly.

    Args:
        accumulator: float32 ``(C, *spatial)``, C-contiguous and writable (numpy or torch, CPU or CUDA).
        weights: float32 ``(*spatial)`` on the same device; positive wherever a tile was added
            (a zero weight gives inf or NaN, as in nnU-Net).

    Returns:
        ``accumulator``, divided.

    Raises:
        ValueError: wrong dtypes, shapes that do not match, devices that differ.
    """
    kind_of(accumulator, "accumulator")
    kind_of(weights, "weights")
    if accumulator.ndim < 2:
        raise ValueError(f"accumulator must be (C, *spatial), got shape {_shape(accumulator)}")
    _check_float32_inplace(accumulator, "accumulator")
    if _dtype_name(weights) != "float32":
        raise ValueError(f"weights must be float32, got {_dtype_name(weights)}")
    if _shape(weights) != _shape(accumulator)[1:]:
        raise ValueError(
            f"weights {_shape(weights)} must match the accumulator's spatial shape {_shape(accumulator)[1:]}"
        )

    def on_cuda(acc) -> None:
        if not isinstance(weights, torch.Tensor) or weights.device != acc.device:
            raise ValueError(f"weights must be on the accumulator's device {acc.device}")
        torch.div(acc, weights, out=acc)

    dispatch(
        accumulator,
        "accumulator",
        cpu=lambda acc: _native.cpu().normalize_accumulated(acc, np.ascontiguousarray(_host_array(weights, "weights"))),
        cuda=on_cuda,
    )
    return accumulator
