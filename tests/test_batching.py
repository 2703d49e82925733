"""The default batch size of the predictor (`fastseg.predict.batching`)."""

from __future__ import annotations

import pytest
import torch

from fastseg.predict.batching import cpu_batch_size, estimated_activation_bytes
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


@pytest.mark.parametrize(
    "copies,available_gib,expected",
    [
        pytest.param(8, 64, 16, id="tta-3-axes-plenty-of-memory"),
        pytest.param(4, 64, 8, id="tta-2-axes"),
        pytest.param(1, 64, 2, id="no-tta"),
    ],
)
def test_cpu_batch_is_two_tiles_with_their_copies(copies, available_gib, expected):
    assert cpu_batch_size(CONFIG, 1, copies, available_gib << 30) == expected


def test_cpu_batch_shrinks_to_the_memory_in_whole_tiles():
    per_input = estimated_activation_bytes(CONFIG, 1)
    # A quarter of the memory holds 9 inputs: one tile with its 8 copies.
    assert cpu_batch_size(CONFIG, 1, 8, 4 * 9 * per_input) == 8
    # Not even one tile's copies fit: still one input at a time, never zero.
    assert cpu_batch_size(CONFIG, 1, 8, 4 * 3 * per_input) == 3
    assert cpu_batch_size(CONFIG, 1, 8, 10) == 1
