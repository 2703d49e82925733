"""A U-Net's forward pass for prediction that holds fewer activations at once.

dynamic-network-architectures' U-Nets (`PlainConvUNet`, `ResidualEncoderUNet`: encoder, then
`UNetDecoder`) keep every skip connection until the decoder returns, and each decoder stage's input
(the upsampled features concatenated with the skip) until the stage's last block has run. In a 3D
network the full-resolution decoder stage sets the forward pass's peak, and there the skip and the
concatenation are as large as everything else alive together. `lean_unet_forward` runs the same
modules in the same order on the same tensors, and lets go of each skip once it is concatenated and
of the concatenation once the stage's first block has read it. The outputs are equal bit for bit,
in float32 and under bfloat16 autocast (tests/test_precision.py); a 3D forward pass's peak
falls by a third (benchmarks/README.md, "Prediction").
"""

from __future__ import annotations

from typing import Any


def lean_forward_applies(network: Any) -> bool:
    """True when `lean_unet_forward(network, x)` computes `network(x)`: a dynamic-network-architectures
    U-Net whose forward, encoder forward and decoder are the library's own (no subclass changes
    them), without deep supervision."""
    try:
        from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
        from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
        from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
        from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
    except ImportError:
        return False
    if type(network).forward not in (PlainConvUNet.forward, ResidualEncoderUNet.forward):
        return False
    encoder, decoder = getattr(network, "encoder", None), getattr(network, "decoder", None)
    if type(decoder) is not UNetDecoder or decoder.deep_supervision:
        return False
    if type(encoder).forward not in (PlainConvEncoder.forward, ResidualEncoder.forward):
        return False
    return len(decoder.stages) == len(encoder.stages) - 1 == len(decoder.transpconvs)


def lean_unet_forward(network: Any, x: Any) -> Any:
    """`network(x)` for a network `lean_forward_applies` to, holding less at once (module docstring)."""
    import torch

    encoder, decoder = network.encoder, network.decoder
    stem = getattr(encoder, "stem", None)
    if stem is not None:
        x = stem(x)
    skips = []
    for stage in encoder.stages:
        x = stage(x)
        skips.append(x)
    del x
    low = skips.pop()
    for s, stage in enumerate(decoder.stages):
        x = torch.cat((decoder.transpconvs[s](low), skips.pop()), 1)
        del low
        for block in stage.convs if hasattr(stage, "convs") else (stage,):
            x = block(x)  # the previous x (the concatenation, then each block's input) is freed here
        low = x
        del x
    return decoder.seg_layers[-1](low)


class LeanUNet:
    """Calls `lean_unet_forward` on the network it holds; callers treat it as the network itself."""

    def __init__(self, network: Any) -> None:
        self.network = network

    def __call__(self, x: Any) -> Any:
        return lean_unet_forward(self.network, x)
