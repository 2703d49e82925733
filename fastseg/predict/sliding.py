"""Sliding-window prediction of one preprocessed image: batched tiles, mirror TTA, fp32 accumulation.

nnU-Net's rule, tile for tile:
- The image is padded with zeros to at least the patch size on each axis (the content centred, the
  odd voxel of padding after it), and the padding is cut off the result.
- Tile positions are `fastseg.ops.sliding_window_offsets` (nnU-Net's steps for `step_size`); a 2d
  configuration slides its 2D tiles over every slice of a 3D image.
- A tile's prediction is the network's output averaged over the input and each of its mirrored
  copies (every non-empty subset of the allowed mirror axes, flipped back), and over the folds.
- Each prediction is weighted by the Gaussian importance map and summed into an accumulator whose
  per-voxel weights divide it at the end.

fastseg adds each network output (each copy of each tile, from each fold) into the accumulator as
it comes, and the importance map into the weights with each of them: the weights count every
output, so accumulator / weights is the same average without a per-tile sum held across the
forward passes.

What differs from nnU-Net's predictor, for speed: tiles and their mirrored copies go through the
network together, `batch_size` inputs per forward pass (nnU-Net: one tile per pass), and the sums
are float32 (nnU-Net: float16), added by `fastseg.ops.accumulate_tiles` -- the native CPU kernel,
or on a GPU the CUDA kernel, with the image, the accumulator and the weights kept on the device.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fastseg.ops import accumulate_tiles, gaussian_importance_map, sliding_window_offsets

logger = logging.getLogger(__name__)


def mirror_combinations(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every non-empty subset of the spatial mirror axes, as nnU-Net enumerates them (by size)."""
    axes = sorted(set(int(a) for a in mirror_axes))
    return [c for n in range(1, len(axes) + 1) for c in itertools.combinations(axes, n)]


def pad_to_patch(data: np.ndarray, patch_size: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pads the last len(patch_size) axes of (C, *spatial) `data` to at least `patch_size`.

    Returns:
        (padded data, or `data` itself when nothing is padded; the spatial slices that cut the
        padding off again).
    """
    spatial = data.shape[1:]
    lead = len(spatial) - len(patch_size)
    pads = [(0, 0)] * (1 + lead)
    cut = [slice(None)] * lead
    for size, patch in zip(spatial[lead:], patch_size):
        missing = max(0, int(patch) - size)
        pads.append((missing // 2, missing - missing // 2))
        cut.append(slice(missing // 2, missing // 2 + size))
    if all(p == (0, 0) for p in pads):
        return data, tuple(slice(None) for _ in spatial)
    return np.pad(data, pads, mode="constant", constant_values=0), tuple(cut)


def tile_offsets(image_size: Sequence[int], patch_size: Sequence[int], step_size: float) -> np.ndarray:
    """(N, len(image_size)) start corners; a 2D patch on a 3D image gets every slice's tiles."""
    image_size = tuple(int(s) for s in image_size)
    if len(patch_size) == len(image_size):
        return sliding_window_offsets(image_size, patch_size, step_size)
    if len(patch_size) != len(image_size) - 1:
        raise ValueError(f"a {len(patch_size)}D patch cannot slide over a {len(image_size)}D image")
    in_plane = sliding_window_offsets(image_size[1:], patch_size, step_size)
    slices = np.repeat(np.arange(image_size[0], dtype=np.int64), len(in_plane))
    return np.column_stack([slices, np.tile(in_plane, (image_size[0], 1))])


def _device_buffers(image: np.ndarray, num_outputs: int, device: Any) -> tuple[Any, Any, Any] | None:
    """(image, zeroed float32 accumulator, zeroed weights) on `device`, or None when they do not fit there."""
    import torch

    spatial = image.shape[1:]
    try:
        return (
            torch.from_numpy(image).to(device),
            torch.zeros((num_outputs, *spatial), dtype=torch.float32, device=device),
            torch.zeros(spatial, dtype=torch.float32, device=device),
        )
    except torch.cuda.OutOfMemoryError:
        gib = 4 * (num_outputs + 1 + image.shape[0]) * int(np.prod(spatial)) / 2**30
        logger.warning(
            "the image and its accumulator (%.1f GiB for %d outputs x %s) do not fit in %s memory: "
            "accumulating in host memory", gib, num_outputs, tuple(spatial), device,
        )
        return None


def accumulate_mirrored(
    networks: Sequence[Callable],
    x: Any,
    dims: Sequence[tuple[int, ...]],
    batch_size: int,
    add: Callable[[Any, np.ndarray], None],
) -> None:
    """Runs the tiles `x` (B, C, *patch) and their flips along each of `dims` (axes of `x`) through
    the networks, `batch_size` inputs per forward pass, and hands each pass's outputs, flipped back,
    to `add(outputs, rows)` as soon as they come: `outputs` (b, C, *patch) on the networks' device,
    `rows` the indices in `x` of their tiles, in the order of the passes and, within a pass, of the
    inputs (each run of outputs with the same flip at once). `add` sums them with the importance
    map into the accumulator and adds the importance map to the weights for each output, so that
    accumulator / weights is the average over the copies and the networks. Only one pass's outputs
    are held at a time."""
    import torch

    n = len(x)
    jobs = [(None, i) for i in range(n)] + [(d, i) for d in dims for i in range(n)]  # (flip, tile)
    for net in networks:
        for start in range(0, len(jobs), batch_size):
            part = jobs[start : start + batch_size]
            inputs = torch.stack([x[i] if d is None else torch.flip(x[i], [a - 1 for a in d]) for d, i in part])
            out = net(inputs)
            del inputs
            first = 0
            while first < len(part):
                flip = part[first][0]
                end = first
                while end < len(part) and part[end][0] == flip:
                    end += 1
                tiles = out[first:end] if flip is None else torch.flip(out[first:end], list(flip))
                add(tiles, np.asarray([i for _, i in part[first:end]], dtype=np.int64))
                del tiles
                first = end
            del out


def tile_adder(accumulator: Any, weights: Any, importance: Any, two_d: bool) -> Callable[[Any, np.ndarray], None]:
    """`add(outputs, offsets)`: adds network outputs (B, C, *patch) at `offsets` into `accumulator`
    with `importance`, and `importance` into `weights` for each (`fastseg.ops.accumulate_tiles`); a
    2d configuration's outputs as one-slice tiles; moved to the host first unless the accumulator is
    a tensor on their device."""
    import torch

    host = not isinstance(accumulator, torch.Tensor) or accumulator.device.type == "cpu"

    def add(outputs: Any, offsets: np.ndarray) -> None:
        if two_d:
            outputs = outputs[:, :, None]
        accumulate_tiles(accumulator, outputs.cpu() if host else outputs, offsets, weights=weights,
                         importance_map=importance)

    return add


def predict_logits(
    networks: Sequence[Callable],
    data: np.ndarray,
    patch_size: Sequence[int],
    num_outputs: int,
    *,
    mirror_axes: Sequence[int] = (),
    step_size: float = 0.5,
    batch_size: int = 4,
    device: Any = "cpu",
    on_tiles: Callable[[int], None] | None = None,
    keep_on_device: bool | None = None,
) -> tuple[Any, Any]:
    """Runs the sliding window over one preprocessed image.

    Args:
        networks: one network per fold (torch modules in eval mode on `device`); their outputs are
            averaged.
        data: float32 (C, z, y, x) preprocessed image (a 2d configuration also takes (C, z, y, x)).
        patch_size: the configuration's patch size (2 or 3 entries).
        num_outputs: output channels of the networks.
        mirror_axes: spatial axes (0-based, of the patch) to mirror for test-time augmentation; ()
            turns it off.
        step_size: largest step between tiles as a fraction of the patch size, in (0, 1] (default 0.5).
        batch_size: network inputs per forward pass (tiles times mirrored copies), >= 1.
        device: where the networks run.
        on_tiles: called with the number of tiles after each forward pass (progress).
        keep_on_device: keep the image, the accumulator and the weights on `device` as torch tensors
            (the tiles never leave it; `fastseg.ops.accumulate_tiles` runs there); falls back to host
            memory, with a warning, when the accumulator does not fit. None (default): on devices
            other than the CPU. On the CPU, True gives CPU tensors instead of numpy arrays.

    Returns:
        (accumulator float32 (num_outputs, *spatial), weights float32 (*spatial)): numpy arrays, or
        torch tensors on `device` when kept there. The logits are accumulator / weights
        (`fastseg.ops.export_segmentation` divides them on the fly).
    """
    import torch

    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if data.ndim != 4:
        raise ValueError(f"data must be (C, z, y, x), got shape {data.shape}")
    device = torch.device(device)
    patch = tuple(int(p) for p in patch_size)
    two_d = len(patch) == 2
    padded, cut = pad_to_patch(np.ascontiguousarray(data, dtype=np.float32), patch)
    spatial = tuple(padded.shape[1:])
    offsets = tile_offsets(spatial, patch, step_size)
    importance = gaussian_importance_map(patch)
    if two_d:
        importance = importance[None]

    buffers = None
    if keep_on_device if keep_on_device is not None else device.type != "cpu":
        buffers = _device_buffers(padded, num_outputs, device)
    if buffers is not None:
        source, accumulator, weights = buffers  # tiles are cut on the device
        importance = torch.from_numpy(importance).to(device)
    else:
        accumulator = np.zeros((num_outputs, *spatial), dtype=np.float32)
        weights = np.zeros(spatial, dtype=np.float32)
        source = torch.from_numpy(padded)

    combos = mirror_combinations(mirror_axes)
    dims = [tuple(a + 2 for a in combo) for combo in combos]
    tiles_per_pass = max(1, batch_size // (1 + len(combos)))
    add = tile_adder(accumulator, weights, importance, two_d)

    with torch.inference_mode():
        for start in range(0, len(offsets), tiles_per_pass):
            batch = offsets[start : start + tiles_per_pass]
            if two_d:
                x = torch.stack([source[:, d, y : y + patch[0], w : w + patch[1]] for d, y, w in batch])
            else:
                x = torch.stack(
                    [source[:, a : a + patch[0], b : b + patch[1], c : c + patch[2]] for a, b, c in batch]
                )
            x = x.to(device, non_blocking=True)
            accumulate_mirrored(networks, x, dims, batch_size, lambda tiles, rows, at=batch: add(tiles, at[rows]))
            del x
            if on_tiles is not None:
                on_tiles(len(batch))
    if any(s != slice(None) for s in cut):
        if buffers is not None:
            accumulator = accumulator[(slice(None), *cut)].contiguous()
            weights = weights[cut].contiguous()
        else:
            accumulator = np.ascontiguousarray(accumulator[(slice(None), *cut)])
            weights = np.ascontiguousarray(weights[cut])
    return accumulator, weights
