"""`fastseg plan`: verify a raw dataset, extract its fingerprint and write nnU-Net v2 plans."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys

logger = logging.getLogger(__name__)


def reports_errors(run):
    """Turns the errors a user can fix (bad input, missing or damaged files, a failing case, a full
    disk, a folder another command is writing into) into one message on stderr and exit status 1,
    instead of a traceback."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        from fastseg.runtime.locking import FolderInUseError
        from fastseg.runtime.workers import CaseError

        try:
            return run(args)
        except (ValueError, OSError, CaseError, FolderInUseError) as err:
            logger.debug("details", exc_info=True)
            print(f"error: {err}", file=sys.stderr)
            return 1

    return wrapper


#: What the workers of `plan` (verification with fingerprinting, `fastseg.workflow`) import.
WORKER_MODULES = ("fastseg.io.verify", "fastseg.io.sitk_format", "SimpleITK", "fastseg.plan.fingerprint")
#: What the workers of `preprocess` import (`fastseg.preprocess.runner`).
PREPROCESS_WORKER_MODULES = ("fastseg.preprocess.worker", "fastseg.io")


@reports_errors
def run(args: argparse.Namespace) -> int:
    from fastseg.runtime.workers import default_num_workers, start_fork_server

    if (args.num_processes or default_num_workers()) > 1:
        # Starts while the planner is imported; with --preprocess it serves both stages.
        start_fork_server(WORKER_MODULES + (PREPROCESS_WORKER_MODULES if args.preprocess else ()))
    from fastseg.plan.planner import PlannerOptions
    from fastseg.plan.plans import format_summary
    from fastseg.workflow import plan_dataset

    options = PlannerOptions(planner=args.planner, gpu_memory_gb=args.gpu_memory_gb)
    result = plan_dataset(
        args.raw_dataset_dir,
        args.output,
        options,
        num_processes=args.num_processes,
        run_verification=not args.no_verify,
        env=dict(os.environ),
    )
    print(format_summary(result.plans))
    if not args.preprocess:
        print("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()))
        print(f"wrote {result.work_dir / 'plans.json'}; next: fastseg preprocess {result.work_dir}")
        return 0
    import time

    from fastseg.preprocess.runner import PreprocessOptions, preprocess_dataset

    print(f"wrote {result.work_dir / 'plans.json'}")
    t = time.perf_counter()
    reports = preprocess_dataset(
        result.work_dir, args.raw_dataset_dir, PreprocessOptions(num_processes=args.num_processes), env=dict(os.environ)
    )
    result.seconds["preprocess"] = time.perf_counter() - t
    for report in reports:
        print(f"{report.configuration}: {len(report.processed)} cases preprocessed, {len(report.skipped)} already done -> {report.folder}")
    print("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()))
    return 0


def positive_gb(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GB, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of GB, got {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    from fastseg.plan.presets import PLANNERS

    p = sub.add_parser(
        "plan",
        help="fingerprint a raw dataset and write nnU-Net v2 plans",
        description=(
            "Verifies an nnU-Net v2 raw dataset, extracts its fingerprint (cropped shapes, spacings, foreground "
            "intensity statistics) and plans the 2d / 3d_fullres / 3d_lowres / 3d_cascade_fullres configurations "
            "with nnU-Net's rules. Writes WORK_DIR/dataset.json, dataset_fingerprint.json and plans.json (readable "
            "by nnU-Net) and WORK_DIR/source.json (where the raw data is, for `fastseg preprocess`). Nothing is "
            "written unless planning succeeds (WORK_DIR is created only then); one command at a time may write "
            "into WORK_DIR: while another one does, this one stops at once with an error naming it."
        ),
        epilog=(
            "Examples:\n"
            "  fastseg plan /data/nnUNet_raw/Dataset001_Heart -o work/Dataset001_Heart\n"
            "  fastseg plan /data/nnUNet_raw/Dataset001_Heart -o work/Dataset001_Heart --preprocess\n"
            "  fastseg plan /data/Dataset002_Liver -o work/liver --planner resenc-l -j 8\n"
            "  fastseg plan /data/Dataset002_Liver -o work/liver --gpu-memory-gb 12"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("raw_dataset_dir", metavar="RAW_DATASET_DIR", help="raw dataset folder (dataset.json, imagesTr, labelsTr)")
    p.add_argument("-o", "--output", required=True, metavar="WORK_DIR", help="work folder to write (created)")
    p.add_argument(
        "--planner",
        choices=PLANNERS,
        default="classic",
        help="classic: nnU-Net's default planner; resenc-m/l/xl: the residual-encoder presets for 8/24/40 GB (default: classic)",
    )
    p.add_argument(
        "--gpu-memory-gb",
        type=positive_gb,
        default=None,
        metavar="G",
        help="GPU memory target in GB (default: the planner's own, 8 for classic and resenc-m, 24 for resenc-l, 40 for resenc-xl)",
    )
    p.add_argument("-j", "--num-processes", type=positive_int, default=None, metavar="N", help="worker processes (default: all cores)")
    p.add_argument("--no-verify", action="store_true", help="skip dataset verification (not recommended)")
    p.add_argument(
        "--preprocess",
        action="store_true",
        help="then preprocess the default configurations into WORK_DIR, as `fastseg preprocess WORK_DIR` does "
        "(nnU-Net's plan_and_preprocess in one command, one set of worker processes for both)",
    )
    p.set_defaults(func=run)
