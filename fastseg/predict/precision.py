"""The number format of the network's arithmetic (`fastseg predict --precision`).

- ``fp32``: float32 throughout, as nnU-Net runs on the CPU.
- ``bf16``: the network under torch's bfloat16 autocast (convolutions and matrix products in
  bfloat16; on the CPU the instance normalization then runs in bfloat16 too, as autocast leaves it
  in its input's type); the network's outputs are converted to float32 and accumulated in float32
  as with fp32. On CPUs with AMX tiles (`amx_bf16`) oneDNN runs the networks 2-2.5x faster
  this way (benchmarks/README.md, "Prediction"); the labels still agree with nnU-Net's float32
  prediction to the tolerance the tests hold.
- ``auto`` (default): bf16 on a CPU with AMX tiles, fp32 everywhere else (CPUs without AMX gain
  nothing from bf16: their bf16 convolutions were measured no faster; CUDA keeps float32).
"""

from __future__ import annotations

from typing import Any

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_amx_bf16() -> bool:
    """True when torch's oneDNN backend can run bfloat16 convolutions on AMX tiles here."""
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe is not None and probe() and torch.backends.mkldnn.is_available())
    except RuntimeError:
        return False


def resolve_precision(precision: str, device: Any) -> str:
    """``fp32`` or ``bf16`` for `precision` (one of `PRECISIONS`) on `device`."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if torch.device(device).type == "cpu" and cpu_has_amx_bf16() else "fp32"


class AutocastNetwork:
    """A network called under torch's bfloat16 autocast on its device type.

    `accumulate_mirrored` and every other caller treat it as the network itself: calling it returns
    the network's output (bfloat16 where autocast produced it; `fastseg.ops.accumulate_tiles` sums
    it in float32).
    """

    def __init__(self, network: Any, device: Any) -> None:
        import torch

        self.network = network
        self.device_type = torch.device(device).type

    def __call__(self, x: Any) -> Any:
        import torch

        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.network(x)
