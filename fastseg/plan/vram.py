"""The planner's GPU memory proxy: the number of feature-map elements a U-Net produces for one patch.

nnU-Net instantiates the network (dynamic-network-architectures) and calls its
`compute_conv_feature_map_size(patch_size)`. The count follows from the architecture alone, so it
is computed here in closed form, without building the network (planning calls it dozens of times).
Every convolution contributes `out_channels * prod(output size)`; sizes shrink by integer division
by the stage stride. With `S_s` the feature-map size of encoder stage `s` (`S_0 = patch // stride_0`,
`S_s = S_{s-1} // stride_s`) and `f_s` its features:

    PlainConvUNet encoder       sum_s  n_conv[s] * f_s * |S_s|
    ResidualEncoderUNet encoder stem f_0 * |patch|
                                + sum_s  2 * n_blocks[s] * f_s * |S_s|                 (two convs per block)
                                         + f_s * |S_s| if the first block needs a 1x1 skip projection
                                           (channels change, or the stride changes the size)
    decoder (both)              sum over stages s = n-2 .. 0 (deepest first):
                                    (n_conv_dec + 1) * f_s * |S_s|                      (convs + transposed conv)
                                + num_classes * |S_0|                                 (only the last seg head:
                                                                                        deep supervision is off)

`tests/test_planner.py` checks this against the instantiated networks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC_UNET = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"


@dataclass(frozen=True)
class UNetSpec:
    """What the feature-map count depends on.

    Attributes:
        network_class_name: PLAIN_UNET or RESENC_UNET.
        features_per_stage: output features of each encoder stage.
        strides: per stage, the stride of each spatial axis (first stage usually all ones).
        blocks_per_stage: convolutions (PlainConvUNet) or residual blocks (ResidualEncoderUNet) per
            encoder stage.
        conv_per_stage_decoder: convolutions per decoder stage, deepest first (n_stages - 1 entries).
    """

    network_class_name: str
    features_per_stage: tuple[int, ...]
    strides: tuple[tuple[int, ...], ...]
    blocks_per_stage: tuple[int, ...]
    conv_per_stage_decoder: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.features_per_stage)
        if self.network_class_name not in (PLAIN_UNET, RESENC_UNET):
            raise ValueError(f"network_class_name must be {PLAIN_UNET!r} or {RESENC_UNET!r}, got {self.network_class_name!r}")
        if len(self.strides) != n or len(self.blocks_per_stage) != n:
            raise ValueError(
                f"strides ({len(self.strides)}) and blocks_per_stage ({len(self.blocks_per_stage)}) need one entry "
                f"per stage ({n})"
            )
        if len(self.conv_per_stage_decoder) != n - 1:
            raise ValueError(f"conv_per_stage_decoder needs {n - 1} entries, got {len(self.conv_per_stage_decoder)}")


def _shrink(size: Sequence[int], stride: Sequence[int]) -> list[int]:
    return [int(s) // int(t) for s, t in zip(size, stride)]


def feature_map_size(spec: UNetSpec, patch_size: Sequence[int], num_classes: int) -> int:
    """Feature-map elements of the network for one patch: the number nnU-Net compares against its
    reference value to decide patch and batch size.

    Args:
        spec: the architecture.
        patch_size: spatial patch size (2 or 3 ints).
        num_classes: output channels of the segmentation head (nnU-Net passes len(dataset.json labels)).

    Returns:
        The element count (int).
    """
    if len(patch_size) != len(spec.strides[0]):
        raise ValueError(f"patch_size {list(patch_size)} does not match the {len(spec.strides[0])}-D strides")
    residual = spec.network_class_name == RESENC_UNET
    f = spec.features_per_stage
    total = 0
    size = [int(s) for s in patch_size]
    sizes = []
    if residual:
        total += f[0] * math.prod(size)  # the stem: one conv, stride 1
    in_ch = f[0]
    for s, stride in enumerate(spec.strides):
        out = _shrink(size, stride)
        n_out = f[s] * math.prod(out)
        if residual:
            total += 2 * spec.blocks_per_stage[s] * n_out
            if in_ch != f[s] or out != size:
                total += n_out
        else:
            total += spec.blocks_per_stage[s] * n_out
        sizes.append(out)
        size = out
        in_ch = f[s]
    n = len(f)
    for d in range(n - 1):
        s = n - 2 - d
        total += (spec.conv_per_stage_decoder[d] + 1) * f[s] * math.prod(sizes[s])
    total += num_classes * math.prod(sizes[0])
    return int(total)
