"""`fastseg.predict.precision`: which arithmetic the predictor's network runs in."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastseg.predict.precision import AutocastNetwork, resolve_precision


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads the CPU's flags from /proc/cpuinfo (Linux)")
def test_auto_is_bf16_exactly_on_cpus_with_amx_bf16():
    expected = "bf16" if {"amx_bf16", "amx_tile"} <= _cpu_flags() else "fp32"
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("auto", torch.device("cpu")) == expected


def test_explicit_precisions_are_kept_and_others_refused():
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        resolve_precision("fp16", "cpu")


def test_autocast_network_runs_convolutions_in_bf16_and_agrees_with_fp32():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.LeakyReLU(), torch.nn.Conv3d(4, 2, 1)).eval()
    x = torch.randn(1, 1, 8, 12, 12)
    with torch.inference_mode():
        reference = net(x)
        out = AutocastNetwork(net, "cpu")(x)
    assert out.dtype == torch.bfloat16 and reference.dtype == torch.float32
    # bfloat16 keeps 8 significant bits: relative error of a few 1e-3 over these small sums
    torch.testing.assert_close(out.float(), reference, rtol=0.03, atol=0.03)
    assert not torch.equal(out.float(), reference)


def _unet(kind: str, dims: int, deep_supervision: bool = False):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

    conv = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
    norm = torch.nn.InstanceNorm3d if dims == 3 else torch.nn.InstanceNorm2d
    common = dict(
        input_channels=2, n_stages=4, features_per_stage=[4, 8, 16, 16], conv_op=conv, kernel_sizes=3,
        strides=[1, 2, 2, 2], num_classes=3, n_conv_per_stage_decoder=2, conv_bias=True, norm_op=norm,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        deep_supervision=deep_supervision,
    )
    if kind == "plain":
        return PlainConvUNet(n_conv_per_stage=2, **common).eval()
    return ResidualEncoderUNet(n_blocks_per_stage=[1, 2, 2, 2], **common).eval()


@pytest.mark.parametrize("kind", ["plain", "residual"])
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_lean_forward_equals_the_library_forward_bit_for_bit(kind, dims, precision):
    from fastseg.predict.lean import LeanUNet, lean_forward_applies

    torch.manual_seed(1)
    net = _unet(kind, dims)
    for p in net.parameters():  # trained-looking weights: not the initial ones, affine norms not 1/0
        p.data += 0.05 * torch.randn_like(p)
    x = torch.randn(2, 2, *([16, 24, 32] if dims == 3 else [40, 48]))
    assert lean_forward_applies(net)
    with torch.inference_mode():
        if precision == "bf16":
            reference = AutocastNetwork(net, "cpu")(x)
            lean = AutocastNetwork(LeanUNet(net), "cpu")(x)
        else:
            reference, lean = net(x), LeanUNet(net)(x)
    assert lean.dtype == reference.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    assert torch.equal(lean, reference)


def test_lean_forward_is_not_used_where_it_could_differ():
    from fastseg.predict.lean import lean_forward_applies

    assert not lean_forward_applies(_unet("plain", 3, deep_supervision=True))
    net = _unet("plain", 3)

    class Custom(type(net)):  # a subclass with its own forward: only the library's forward is known
        def forward(self, x):
            return super().forward(x) * 2

    net.__class__ = Custom
    assert not lean_forward_applies(net)
    assert not lean_forward_applies(torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3)))
