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
