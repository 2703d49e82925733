"""A U-Net's forward pass for prediction that holds fewer activations at once.

dynamic-network-architectures' U-Nets (`PlainConvUNet`, `ResidualEncoderUNet`: encoder, then
`UNetDecoder`) keep every skip connection until the decoder returns, each decoder stage's input
(the upsampled features concatenated with the skip) until the stage's last block has run, and each
convolution block's input until its normalization and nonlinearity have run. In a 3D network the
full-resolution decoder stage sets the forward pass's peak, and there the skip and the
concatenation are as large as everything else alive together. `lean_unet_forward` runs the same
modules in the same order on the same tensors, and lets go of every tensor as soon as nothing reads
it any more:

- each skip once it is copied into its stage's concatenation, and the concatenation is filled in
  place (the skip first, then the upsampled features), so the upsampled features, the skip and the
  concatenation are never alive together, as they are inside `torch.cat`;
- inside the library's plain convolution blocks (`StackedConvBlocks` of `ConvDropoutNormReLU`),
  each layer's input once the layer has run.

The outputs are equal bit for bit, in float32 and under bfloat16 autocast (tests/test_precision.py).
Letting go of skips and concatenations took a 3D forward pass's peak from 408 to 267 MiB; the
in-place concatenation and the per-layer release take a little more off (benchmarks/README.md,
"Prediction").
"""

from __future__ import annotations

import weakref
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


#: `_layers` of each stage already looked at (the forward passes of a prediction walk the same stages).
_LAYERS: "weakref.WeakKeyDictionary[Any, list]" = weakref.WeakKeyDictionary()


def _chain(module: Any) -> list:
    from dynamic_network_architectures.building_blocks.simple_conv_blocks import (
        ConvDropoutNormReLU,
        StackedConvBlocks,
    )
    from torch import nn

    if type(module) is nn.Sequential:
        return [layer for child in module for layer in _chain(child)]
    if type(module) is StackedConvBlocks:
        return _chain(module.convs)
    if type(module) is ConvDropoutNormReLU:
        return _chain(module.all_modules)
    return [module]


def _layers(module: Any) -> list:
    """The modules that `module(x)` applies one after the other, where `module` is a plain chain of
    the library (`nn.Sequential`, `StackedConvBlocks`, `ConvDropoutNormReLU`, by exact type: a
    subclass may change its forward); `[module]` for anything else. Looked up once per module."""
    layers = _LAYERS.get(module)
    if layers is None:
        layers = _LAYERS[module] = _chain(module)
    return layers


def _run(module: Any, held: list) -> Any:
    """`module(x)` for the one tensor in `held`, which the caller no longer references: each layer's
    input is freed once the layer has run."""
    x = held.pop()
    for layer in _layers(module):
        x = layer(x)
    return x


def _concatenation(transpconv: Any, held_low: list, held_skip: list) -> Any:
    """`torch.cat((transpconv(low), skip), 1)` for the tensors in the one-element lists `held_low` and
    `held_skip` (which the caller no longer references): the skip is copied into the result first
    and freed, then the upsampled features are computed, copied and freed."""
    import torch

    low, skip = held_low.pop(), held_skip.pop()
    channels = transpconv.out_channels
    # the upsampled features' dtype: autocast's for a convolution where it is on, else the input's
    dtype = low.dtype
    if torch.is_autocast_enabled(low.device.type):
        dtype = torch.get_autocast_dtype(low.device.type)
    skip_dtype = skip.dtype
    shape = (skip.shape[0], channels + skip.shape[1], *skip.shape[2:])
    out = torch.empty(shape, dtype=torch.promote_types(dtype, skip_dtype), device=skip.device)
    out[:, channels:] = skip
    del skip
    up = transpconv(low)
    del low
    if up.shape[2:] != out.shape[2:] or torch.promote_types(up.dtype, skip_dtype) != out.dtype:
        # not what `torch.cat` makes of the two: make exactly that
        return torch.cat((up, out[:, channels:].to(skip_dtype)), 1)
    out[:, :channels] = up
    return out


def lean_unet_forward(network: Any, x: Any) -> Any:
    """`network(x)` for a network `lean_forward_applies` to, holding less at once (module docstring)."""
    encoder, decoder = network.encoder, network.decoder
    stem = getattr(encoder, "stem", None)
    if stem is not None:
        x = stem(x)
    skips = []
    for stage in encoder.stages:
        held = [x]
        del x
        x = _run(stage, held)
        skips.append(x)
    del x
    low = skips.pop()
    for s, stage in enumerate(decoder.stages):
        held_low, held_skip = [low], [skips.pop()]
        del low
        held = [_concatenation(decoder.transpconvs[s], held_low, held_skip)]
        low = _run(stage, held)
    return decoder.seg_layers[-1](low)


class LeanUNet:
    """Calls `lean_unet_forward` on the network it holds; callers treat it as the network itself."""

    def __init__(self, network: Any) -> None:
        self.network = network

    def __call__(self, x: Any) -> Any:
        return lean_unet_forward(self.network, x)
