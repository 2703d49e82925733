"""How many network inputs go through one forward pass (`--batch-size` when not given).

A batch holds whole tiles with all their mirrored copies, so the default is a multiple of the
copies per tile (1 without test-time mirroring, up to 8 with three axes). It is sized from the
memory that is free where the network runs:

- CUDA: one forward pass of a single input is measured (the peak of torch's allocator over it);
  the batch takes at most half of the free device memory at that rate, and at most 32 inputs.
- CPU: the activations of one input are estimated from the plans (feature maps of every encoder
  stage, kept for the skip connections, plus the decoder's and the layer in flight: three times
  their sum, float32), and the batch holds at most `CPU_BATCH_BYTES` of them (and at most a
  quarter of the available memory, and 16 inputs). On the CPU a batch only helps while its
  activations stay small: a 2d network's 192x192 tiles run 1.7x faster per input in batches of 8
  than one by one, a 3D network's 80x160x160 tiles run slower in any batch larger than one
  (measured in benchmarks/README.md), so 3D configurations get one input per pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def estimated_activation_bytes(config: Mapping[str, Any], input_channels: int) -> int:
    """Rough float32 activation memory of one input of the configuration's network, in bytes."""
    arch = config["architecture"]["arch_kwargs"]
    voxels = math.prod(int(p) for p in config["patch_size"])
    total = input_channels * voxels
    for features, stride in zip(arch["features_per_stage"], arch["strides"]):
        stride = stride if isinstance(stride, Sequence) else [stride] * len(config["patch_size"])
        voxels = max(1, voxels // math.prod(int(s) for s in stride))
        total += int(features) * voxels
    return 4 * 3 * total


def _round_to_copies(n: int, copies: int) -> int:
    return max(1, n // copies * copies) if n >= copies else max(1, n)


#: Activation bytes a CPU batch may hold (see the module's docstring).
CPU_BATCH_BYTES = 64 << 20


def cpu_batch_size(config: Mapping[str, Any], input_channels: int, copies: int, available_bytes: int) -> int:
    """The CPU default: as many inputs as `CPU_BATCH_BYTES` of activations hold (whole tiles with
    their copies when one tile's fit), at most 16, fewer when memory is short."""
    per_input = max(1, estimated_activation_bytes(config, input_channels))
    fits = min(CPU_BATCH_BYTES, available_bytes // 4) // per_input
    return _round_to_copies(max(1, min(16, int(fits))), copies)


def cuda_batch_size(network: Any, patch_size: Sequence[int], input_channels: int, copies: int, device: Any) -> int:
    """The CUDA default: as many inputs as half of the free device memory holds, measured."""
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        network(torch.zeros((1, input_channels, *patch_size), device=device))
    torch.cuda.synchronize(device)
    per_input = max(1, torch.cuda.max_memory_allocated(device) - base)
    free, _ = torch.cuda.mem_get_info(device)
    return _round_to_copies(min(32, max(1, int(free // 2 // per_input))), copies)
