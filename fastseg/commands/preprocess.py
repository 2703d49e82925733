"""`fastseg preprocess`: preprocess a planned dataset's training cases into its work folder."""

from __future__ import annotations

import argparse
import os

from fastseg.commands.plan import PREPROCESS_WORKER_MODULES, positive_gb, positive_int, reports_errors


@reports_errors
def run(args: argparse.Namespace) -> int:
    from fastseg.runtime.workers import default_num_workers, start_fork_server

    if (args.num_processes or default_num_workers()) > 1:
        # fastseg.preprocess.runner's workers; the server starts while the runner is imported.
        start_fork_server(PREPROCESS_WORKER_MODULES)
    from fastseg.preprocess.runner import PreprocessOptions, preprocess_dataset

    options = PreprocessOptions(
        configurations=tuple(args.configurations) if args.configurations else None,
        num_processes=args.num_processes,
        memory_budget_bytes=int(args.memory_budget_gb * 1e9) if args.memory_budget_gb else None,
        overwrite=args.overwrite,
    )
    for report in preprocess_dataset(args.work_dir, args.raw, options, env=dict(os.environ)):
        print(
            f"{report.configuration}: {len(report.processed)} cases preprocessed, {len(report.skipped)} already done "
            f"-> {report.folder}"
        )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preprocess",
        help="crop, normalize and resample the training cases for training",
        description=(
            "Preprocesses every training case of the dataset planned in WORK_DIR (by `fastseg plan`): transpose, crop "
            "to the nonzero region, normalize, resample to each configuration's spacing, and sample foreground "
            "locations. Writes WORK_DIR/<data_identifier>/<case>.npy (float32), <case>_seg.npy (int8/int16) and "
            "<case>.json. Each case is written atomically; a rerun skips finished cases (and redoes damaged ones), so "
            "an interrupted run can be resumed by running the same command again. One command at a time may write "
            "into WORK_DIR: while another one does, this one stops at once with an error naming it."
        ),
        epilog=(
            "Examples:\n"
            "  fastseg preprocess work/Dataset001_Heart\n"
            "  fastseg preprocess work/Dataset001_Heart -c 3d_fullres -j 8\n"
            "  fastseg preprocess work/Dataset001_Heart -c 2d 3d_fullres --memory-budget-gb 16"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("work_dir", metavar="WORK_DIR", help="work folder written by `fastseg plan`")
    p.add_argument(
        "-c",
        "--configurations",
        nargs="+",
        metavar="CONFIG",
        default=None,
        help="configurations to preprocess (default: 2d, 3d_fullres and 3d_lowres, those the plans have)",
    )
    p.add_argument("-j", "--num-processes", type=positive_int, default=None, metavar="N", help="worker processes (default: all cores)")
    p.add_argument(
        "--memory-budget-gb",
        type=positive_gb,
        default=None,
        metavar="G",
        help="memory the cases in flight may use together (default: 75%% of the available memory)",
    )
    p.add_argument("--raw", default=None, metavar="RAW_DATASET_DIR", help="raw dataset folder (default: the one `fastseg plan` recorded)")
    p.add_argument("--overwrite", action="store_true", help="redo cases that are already preprocessed")
    p.set_defaults(func=run)
