"""Subcommands of the `fastseg` CLI. Each module defines `register(subparsers)`, which adds its parser
and sets `func(args) -> int` as the handler; `fastseg.cli` lists the modules in the order `--help`
shows them."""
