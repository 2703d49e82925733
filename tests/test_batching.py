"""The default batch size of the predictor (`fastseg.predict.batching`)."""

from __future__ import annotations

import pytest
import torch

from fastseg.predict.batching import CPU_BATCH_BYTES, cpu_batch_size, estimated_activation_bytes
from fastseg.predict.model import ModelFolder, build_network

CONFIG = {
    "patch_size": [32, 64, 64],
    "architecture": {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 4,
            "features_per_stage": [8, 16, 32, 64],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * 4,
            "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
            "n_conv_per_stage": [2, 2, 2, 2],
            "n_conv_per_stage_decoder": [2, 2, 2],
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    },
}


def test_activation_estimate_covers_the_encoder_outputs_kept_for_the_skips():
    """The estimate is at least what the encoder's stage outputs (held until the decoder uses them)
    and the decoder's stage outputs occupy in float32, measured with forward hooks."""
    plans = {"configurations": {"3d_fullres": CONFIG}}
    model = ModelFolder(None, plans, {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}}, "3d_fullres", "", [], [], ())
    net = build_network(model).eval()
    sizes = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() * 4)) for m in net.encoder.stages]
    hooks += [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() * 4)) for m in net.decoder.stages]
    with torch.inference_mode():
        net(torch.zeros((1, 1, *CONFIG["patch_size"])))
    for h in hooks:
        h.remove()
    estimate = estimated_activation_bytes(CONFIG, 1)
    assert sum(sizes) <= estimate <= 8 * sum(sizes)


def _config(patch, features):
    import copy

    cfg = copy.deepcopy(CONFIG)
    cfg["patch_size"] = list(patch)
    n = len(features)
    arch = cfg["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = list(features)
    arch["strides"] = [[1] * len(patch)] + [[2] * len(patch)] * (n - 1)
    return cfg


def test_cpu_batch_is_one_input_when_activations_are_large():
    big = _config((80, 160, 160), (8, 16, 32, 64, 80, 80))  # a 3d_fullres network, features / 4
    assert estimated_activation_bytes(big, 1) > CPU_BATCH_BYTES
    for copies in (1, 4, 8):
        assert cpu_batch_size(big, 1, copies, 64 << 30) == 1


@pytest.mark.parametrize("copies", [1, 4, 8])
def test_cpu_batch_takes_whole_tiles_up_to_16_when_activations_are_small(copies):
    small = _config((64, 64), (8, 16, 32))
    per_input = estimated_activation_bytes(small, 1)
    assert 16 * per_input <= CPU_BATCH_BYTES
    assert cpu_batch_size(small, 1, copies, 64 << 30) == 16


def test_cpu_batch_shrinks_to_the_memory_in_whole_tiles():
    small = _config((64, 64), (8, 16, 32))
    per_input = estimated_activation_bytes(small, 1)
    # A quarter of the memory holds 9 inputs: one tile with its 8 copies.
    assert cpu_batch_size(small, 1, 8, 4 * 9 * per_input) == 8
    # Not even one tile's copies fit: fewer inputs per pass, never zero.
    assert cpu_batch_size(small, 1, 8, 4 * 3 * per_input) == 3
    assert cpu_batch_size(small, 1, 8, 10) == 1
