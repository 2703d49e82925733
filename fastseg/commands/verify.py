"""`fastseg verify`: check a raw dataset and print one report of every problem."""

from __future__ import annotations

import argparse
import json
import os
import sys

#: Exit status for a dataset that failed verification (argparse also uses 2 for bad arguments).
EXIT_BAD_DATASET = 2


def run(args: argparse.Namespace) -> int:
    from fastseg.commands.plan import folder_or_dataset
    from fastseg.datasets.nnunet_paths import RAW
    from fastseg.io import verify_dataset

    if args.num_processes is not None and args.num_processes < 1:
        print(f"fastseg verify: -j must be >= 1, got {args.num_processes}", file=sys.stderr)
        return EXIT_BAD_DATASET
    try:
        folder = folder_or_dataset(args, args.folder, "RAW_DATASET_DIR", RAW)
    except ValueError as err:
        print(f"fastseg verify: {err}", file=sys.stderr)
        return EXIT_BAD_DATASET
    report = verify_dataset(
        folder,
        args.num_processes,
        env=dict(os.environ),
        check_test_cases=not args.skip_test_cases,
        progress=None,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format(max_per_kind=args.max_problems))
    return 0 if report.ok else EXIT_BAD_DATASET


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check a raw dataset (nnU-Net v2 layout) and report every problem",
        description=(
            "Checks dataset.json (required keys, labels, regions, ignore label), the file layout (every case has "
            "every channel and a label, no stray files, numTraining) and every case's content (readable, not "
            "truncated, no NaN/Inf, channels and label on one grid, only declared label values). Prints one "
            "report and exits with status 2 when there is any error. Writes nothing. With -d ID, the dataset is "
            "$nnUNet_raw/DatasetXXX_Name."
        ),
        epilog=(
            "Examples:\n"
            "  fastseg verify /data/nnUNet_raw/Dataset001_BrainTumour\n"
            "  fastseg verify -d 1      (nnUNet_raw set)\n"
            "  fastseg verify Dataset001_BrainTumour -j 8 --json > report.json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from fastseg.commands.plan import add_dataset_option

    p.add_argument("folder", nargs="?", default=None, metavar="RAW_DATASET_DIR",
                   help="dataset folder holding dataset.json, imagesTr, labelsTr")
    add_dataset_option(p, "RAW_DATASET_DIR")
    p.add_argument(
        "-j", "--num-processes", type=int, default=None, metavar="N", help="worker processes (default: all CPUs)"
    )
    p.add_argument("--skip-test-cases", action="store_true", help="do not read imagesTs")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--max-problems", type=int, default=None, metavar="N", help="list at most N errors and N warnings")
    p.set_defaults(func=run)
