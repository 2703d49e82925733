"""The `fastseg` command: a thin shell over the Python API."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import fastseg


def _cmd_info(args: argparse.Namespace) -> int:
    from fastseg import _native

    info = {"fastseg": fastseg.__version__, **_native.build_info()}
    print(json.dumps(info, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastseg",
        description=(
            "Self-configuring medical image segmentation, compatible with nnU-Net v2 datasets, plans and "
            "model folders, with native CPU and GPU kernels on the hot paths."
        ),
        epilog="Examples:\n  fastseg info        # version, CPU threads, whether CUDA kernels are built\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fastseg {fastseg.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser(
        "info",
        help="show the version and which native kernels this installation has",
        description="Prints the version, the CPU thread count and whether the CUDA kernels were compiled and see a GPU.",
    )
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
