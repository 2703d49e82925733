"""The `fastseg` command: a thin shell over the Python API.

This is the one place that reads the environment and configures logging; the commands pass plain
values down to the library.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

import fastseg

#: Subcommand modules under fastseg.commands, in the order `fastseg --help` lists them.
COMMANDS = (
    "info", "verify", "convert", "plan", "preprocess", "predict", "evaluate", "overlay", "ensemble", "find-postprocessing",
    "find-best", "train", "benchmark", "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastseg",
        description=(
            "Self-configuring medical image segmentation, compatible with nnU-Net v2 datasets, plans and "
            "model folders, with native CPU and GPU kernels on the hot paths."
        ),
        epilog="Run `fastseg COMMAND --help` for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"fastseg {fastseg.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"fastseg.commands.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def console() -> None:
    """The `fastseg` command (and `python -m fastseg`): `main`, then exit with its code; without the
    interpreter's teardown where the command asked for that (`fastseg.runtime.teardown`)."""
    from fastseg.runtime import teardown

    code = main()
    if teardown.requested():
        teardown.exit_now(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
