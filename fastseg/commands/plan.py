"""`fastseg plan`: verify a raw dataset, extract its fingerprint and write nnU-Net v2 plans."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from pathlib import Path

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


def add_dataset_option(p: argparse.ArgumentParser, folder: str) -> None:
    """`-d/--dataset`: an nnU-Net dataset id or name in place of the `folder` argument."""
    p.add_argument(
        "-d",
        "--dataset",
        default=None,
        metavar="ID",
        help=f"nnU-Net dataset id or name (4, Dataset004_Hippocampus) instead of {folder}: the folders under "
        "$nnUNet_raw, $nnUNet_preprocessed and $nnUNet_results, as nnU-Net's commands find them",
    )


def nnunet_dataset(args: argparse.Namespace):
    """The nnU-Net folders of `-d` (`fastseg.datasets.nnunet_paths.NnunetDataset`), None without -d."""
    if getattr(args, "dataset", None) is None:
        return None
    from fastseg.datasets.nnunet_paths import resolve_dataset

    return resolve_dataset(args.dataset, os.environ)


def folder_or_dataset(args: argparse.Namespace, given: str | None, what: str, root: str) -> str:
    """The folder a command works on: `given` (its positional argument, named `what` in messages) or,
    with -d, the dataset's folder under the nnU-Net root `root` ("nnUNet_raw", ...).

    Raises:
        ValueError: both or neither were given, or -d cannot be resolved (the message says why).
    """
    if given is not None and getattr(args, "dataset", None) is not None:
        raise ValueError(f"give {what} or -d {args.dataset}, not both")
    dataset = nnunet_dataset(args)
    if dataset is None:
        if given is None:
            raise ValueError(f"give {what}, or an nnU-Net dataset id with -d (with ${root} set)")
        return given
    return str(dataset.require(root))


def add_model_options(p: argparse.ArgumentParser, folder: str) -> None:
    """-d with -c, -tr, -p: a model folder under $nnUNet_results named as nnU-Net's commands name it."""
    add_dataset_option(p, f"{folder} (with -c, -tr, -p)")
    p.add_argument("-c", "--configuration", default=None, metavar="CONFIG", help="with -d: the model's configuration")
    p.add_argument("-tr", "--trainer", default="nnUNetTrainer", metavar="TRAINER",
                   help="with -d: the model's trainer class (default: nnUNetTrainer)")
    p.add_argument("-p", "--plans", default="nnUNetPlans", metavar="PLANS",
                   help="with -d: the model's plans identifier (default: nnUNetPlans)")


def dataset_model_folder(args: argparse.Namespace, given: str | None, what: str):
    """The model folder a command works on: `given` (named `what` in messages) or, with -d ID -c CONFIG,
    $nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration> (which must exist).

    Raises:
        ValueError: both or neither were given, -c without -d or -d without -c, or -d cannot be resolved.
        FileNotFoundError: -d's model folder does not exist.
    """
    dataset = nnunet_dataset(args)
    if dataset is None:
        if given is None:
            raise ValueError(f"give {what}, or -d ID -c CONFIG (with $nnUNet_results set)")
        if args.configuration is not None:
            raise ValueError(f"-c picks a model folder of -d; {what} says its own configuration")
        return Path(given)
    if given is not None:
        raise ValueError(f"give {what} or -d {args.dataset}, not both")
    if args.configuration is None:
        raise ValueError(f"-d {args.dataset} needs the model's configuration with -c (e.g. -c 3d_fullres)")
    folder = dataset.model_folder(args.configuration, args.trainer, args.plans)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no trained model {folder.name} in {folder.parent}; train it (fastseg train -d {args.dataset} -c "
            f"{args.configuration} -f 0), or pick another -c / -tr / -p"
        )
    return folder


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

    from fastseg.datasets.nnunet_paths import PREPROCESSED, RAW

    raw_dir = folder_or_dataset(args, args.raw_dataset_dir, "RAW_DATASET_DIR", RAW)
    output = args.output
    if output is None:
        dataset = nnunet_dataset(args)
        if dataset is None:
            raise ValueError("give the work folder to write with -o WORK_DIR (or plan an nnU-Net dataset with -d ID)")
        output = str(dataset.require(PREPROCESSED))
    options = PlannerOptions(planner=args.planner, gpu_memory_gb=args.gpu_memory_gb)
    result = plan_dataset(
        raw_dir,
        output,
        options,
        num_processes=args.num_processes,
        run_verification=not args.no_verify,
        env=dict(os.environ),
    )
    print(format_summary(result.plans))
    if not args.preprocess:
        print("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()))
        following = f"-d {args.dataset}" if args.dataset is not None else str(result.work_dir)
        print(f"wrote {result.work_dir / 'plans.json'}; next: fastseg preprocess {following}")
        return 0
    import time

    from fastseg.preprocess.runner import PreprocessOptions, preprocess_dataset

    print(f"wrote {result.work_dir / 'plans.json'}")
    t = time.perf_counter()
    reports = preprocess_dataset(
        result.work_dir, raw_dir, PreprocessOptions(num_processes=args.num_processes), env=dict(os.environ)
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
            "into WORK_DIR: while another one does, this one stops at once with an error naming it. With -d ID "
            "(nnU-Net's environment variables set), RAW_DATASET_DIR is $nnUNet_raw/DatasetXXX_Name and WORK_DIR "
            "defaults to $nnUNet_preprocessed/DatasetXXX_Name, the folders nnU-Net itself uses."
        ),
        epilog=(
            "Examples:\n"
            "  fastseg plan /data/nnUNet_raw/Dataset001_Heart -o work/Dataset001_Heart\n"
            "  fastseg plan -d 1 --preprocess      (nnUNet_raw and nnUNet_preprocessed set)\n"
            "  fastseg plan /data/nnUNet_raw/Dataset001_Heart -o work/Dataset001_Heart --preprocess\n"
            "  fastseg plan /data/Dataset002_Liver -o work/liver --planner resenc-l -j 8\n"
            "  fastseg plan /data/Dataset002_Liver -o work/liver --gpu-memory-gb 12"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("raw_dataset_dir", nargs="?", default=None, metavar="RAW_DATASET_DIR",
                   help="raw dataset folder (dataset.json, imagesTr, labelsTr)")
    add_dataset_option(p, "RAW_DATASET_DIR")
    p.add_argument("-o", "--output", default=None, metavar="WORK_DIR",
                   help="work folder to write (created); with -d: $nnUNet_preprocessed/DatasetXXX_Name")
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
