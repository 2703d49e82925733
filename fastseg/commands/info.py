"""`fastseg info`: version and which native kernels this installation has."""

from __future__ import annotations

import argparse
import json

import fastseg


def run(args: argparse.Namespace) -> int:
    from fastseg import _native
    from fastseg.predict.precision import resolve_precision

    print(json.dumps({"fastseg": fastseg.__version__, **_native.build_info(),
                      "cpu_network_precision": resolve_precision("auto", "cpu")}, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="show the version and which native kernels this installation has",
        description="Prints the version, the CPU thread count, whether the CUDA kernels were compiled and see a GPU, and "
                    "the arithmetic the networks run in on this CPU by default (bf16 where it has AMX tiles, else fp32).",
        epilog="Example:\n  fastseg info",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=run)
