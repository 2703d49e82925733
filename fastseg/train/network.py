"""The network to train, built from the plans as nnU-Net v2 builds it (`get_network_from_plans`).

The configuration's `architecture` entry names the class (`network_class_name`, from
dynamic-network-architectures) and its keyword arguments (`arch_kwargs`); the arguments listed in
`_kw_requires_import` are dotted names of classes (conv, norm, dropout, nonlinearity) that are
imported. The class and the imports are found by `fastseg.predict.model`'s helpers, which inference
uses too, so a trained network and the one prediction builds cannot differ.

After construction the network's own `initialize` is applied to every module (post-order, as
`nn.Module.apply` visits them), as nnU-Net does: for PlainConvUNet He-normal weights with negative
slope 1e-2 and zero biases on every (transposed) convolution (`InitWeights_He(1e-2)`); for the
residual U-Nets also the last norm of each residual block set to 0. Under the same torch seed the
weights equal nnU-Net's bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fastseg.plan.plans import resolve_configuration
from fastseg.predict.model import ModelFolderError, network_from_architecture


def build_network(
    plans: Mapping[str, Any],
    configuration: Mapping[str, Any] | str,
    num_input_channels: int,
    num_outputs: int,
    deep_supervision: bool = True,
) -> torch.nn.Module:
    """The configuration's network, initialized as nnU-Net initializes it for training.

    Args:
        plans: the plans (plans.json); only read to resolve a configuration given by name.
        configuration: the configuration's entry of the plans with `inherits_from` resolved
            (`fastseg.plan.plans.resolve_configuration`), or its name.
        num_input_channels: input channels (dataset.json's channel_names).
        num_outputs: output channels: one per label (background included), or one per region.
        deep_supervision: return the outputs of every decoder stage (a list, full resolution first)
            in training mode; default True, as nnU-Net trains.

    Returns:
        The network, on the CPU, in training mode.

    Raises:
        ValueError: channel counts < 1, an unknown configuration name.
        fastseg.predict.model.ModelFolderError: no `architecture` entry, or a class that cannot be
            imported.
    """
    if num_input_channels < 1:
        raise ValueError(f"num_input_channels must be at least 1, got {num_input_channels}")
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be at least 1, got {num_outputs}")
    name = configuration if isinstance(configuration, str) else None
    config = resolve_configuration(plans, configuration) if name is not None else configuration
    arch = config.get("architecture")
    if not arch:
        raise ModelFolderError(
            f"configuration {name or '(given)'} has no 'architecture' entry (plans from nnU-Net v2.4 or later have one; "
            f"found keys {sorted(config)}); re-plan the dataset with fastseg plan"
        )
    network = network_from_architecture(arch, num_input_channels, num_outputs, deep_supervision,
                                        source=f"configuration {name or '(given)'}")
    if hasattr(network, "initialize"):
        network.apply(network.initialize)
    return network
