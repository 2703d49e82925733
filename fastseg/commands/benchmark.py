"""`fastseg benchmark`: fastseg beside nnU-Net, stage by stage; `benchmark predict` for prediction."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastseg.commands.plan import positive_int, reports_errors
from fastseg.commands.predict import _fold, _step


def _cpus(text: str) -> set[int]:
    """'0', '0,1', '0-3' -> a set of CPU numbers."""
    out: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"CPUs are numbers and ranges such as 0 or 0,1 or 0-3, got {text!r}") from None
    return out


@reports_errors
def run_predict(args: argparse.Namespace) -> int:
    from fastseg.benchmark.predict import BenchmarkError, benchmark_predict, format_report

    if args.against not in (None, "nnunet"):
        raise ValueError(f"--against takes 'nnunet', got {args.against!r}")
    try:
        result = benchmark_predict(
            args.model, args.input, folds=args.folds, tta=not args.no_tta, step_size=args.step_size,
            checkpoint=args.checkpoint, against_nnunet=args.against == "nnunet", threads=args.threads,
            processes=args.processes, cpus=args.cpus, rounds=args.rounds, warmup=args.warmup, work_dir=args.work_dir,
        )
    except BenchmarkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_report(result))
    if args.json:
        from fastseg.io.atomic import write_json_atomic

        write_json_atomic(result.as_json(), Path(args.json))
        print(f"wrote {args.json}")
    return 0


@reports_errors
def run_loader(args: argparse.Namespace) -> int:
    from fastseg.benchmark.loader import BenchmarkError, benchmark_loader, format_report

    if args.against not in (None, "nnunet"):
        raise ValueError(f"--against takes 'nnunet', got {args.against!r}")
    try:
        result = benchmark_loader(args.work_dir, args.configuration, workers=args.workers, batches=args.batches,
                                  against_nnunet=args.against == "nnunet")
    except BenchmarkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_report(result))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark",
        help="time fastseg beside nnU-Net on your own data and models",
        description="Runs a stage with fastseg and with nnU-Net on the same data and prints them side by side.",
        epilog=(
            "Examples:\n  fastseg benchmark predict -m MODEL_DIR -i imagesTs --against nnunet\n"
            "  fastseg benchmark loader WORK_DIR -c 3d_fullres --against nnunet"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stages = p.add_subparsers(dest="stage", metavar="STAGE")
    p.set_defaults(func=lambda args: p.print_help() or 2)
    q = stages.add_parser(
        "predict",
        help="fastseg predict beside nnUNetv2_predict_from_modelfolder",
        description=(
            "Predicts a folder of images with `fastseg predict` and, with --against nnunet, with nnU-Net's "
            "nnUNetv2_predict_from_modelfolder (its own code path, torch pinned to the same threads), with the same "
            "model folder, folds, step size and mirroring. Prints wall time, peak memory (summed PSS of each tool's "
            "processes) and time per stage for both, and the voxel agreement of their outputs."
        ),
        epilog=(
            "Examples:\n"
            "  fastseg benchmark predict -m MODEL_DIR -i imagesTs --against nnunet\n"
            "  fastseg benchmark predict -m MODEL_DIR -i imagesTs --against nnunet --threads 1 --cpus 0 --json bench.json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("-m", "--model", required=True, metavar="MODEL_DIR", help="trained model folder")
    q.add_argument("-i", "--input", required=True, metavar="INPUT_DIR", help="folder of images (case_0000.nii.gz ...)")
    q.add_argument("--against", default=None, metavar="nnunet", help="also run nnU-Net's predictor (needs nnunetv2)")
    q.add_argument("-f", "--folds", nargs="+", type=_fold, default=["0"], metavar="FOLD", help="folds (default: 0)")
    q.add_argument("--checkpoint", default="final", choices=("final", "best"), help="checkpoint (default: final)")
    q.add_argument("--no-tta", action="store_true", help="both tools without mirror test-time augmentation")
    q.add_argument("--step-size", type=_step, default=0.5, metavar="S", help="sliding-window step (default: 0.5)")
    q.add_argument("--threads", type=positive_int, default=None, metavar="N", help="torch threads of both tools (default: the usable CPUs)")
    q.add_argument("--cpus", type=_cpus, default=None, metavar="LIST", help="run both tools on these CPUs only, e.g. 0 or 0-3")
    q.add_argument("--processes", type=positive_int, default=2, metavar="P", help="nnU-Net's -npp and -nps (default: 2)")
    q.add_argument("--rounds", type=positive_int, default=1, metavar="R", help="timed runs per tool; medians reported (default: 1)")
    q.add_argument("--warmup", type=int, default=0, metavar="W", help="untimed runs per tool first (default: 0)")
    q.add_argument("--work-dir", default=None, metavar="DIR", help="keep the outputs in DIR/fastseg and DIR/nnunet (default: a temporary folder)")
    q.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    q.set_defaults(func=run_predict)
    q = stages.add_parser(
        "loader",
        help="fastseg's training batches beside nnU-Net's data loader and augmentations",
        description=(
            "Samples per second of fastseg's training data pipeline (sampling, every default augmentation, "
            "deep-supervision targets) and, with --against nnunet, of nnU-Net's own (its trainer's nnUNetDataLoader, "
            "training transforms and augmenter, unchanged, on nnU-Net's preprocessing of the same raw dataset and plans, "
            "made with nnUNetv2_preprocess into WORK_DIR/.nnunet_reference the first time), with the same worker count; "
            "and the peak memory of each."
        ),
        epilog=(
            "Examples:\n"
            "  fastseg benchmark loader work/Dataset001 -c 3d_fullres --against nnunet\n"
            "  fastseg benchmark loader work/Dataset001 -c 2d --workers 4 --batches 50"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("work_dir", metavar="WORK_DIR", help="work folder of fastseg plan/preprocess")
    q.add_argument("-c", "--configuration", required=True, metavar="CONFIG", help="a preprocessed configuration")
    q.add_argument("--workers", type=positive_int, default=2, metavar="W", help="worker processes / threads of each tool (default: 2)")
    q.add_argument("--batches", type=positive_int, default=20, metavar="N", help="timed batches (default: 20)")
    q.add_argument("--against", default=None, metavar="nnunet", help="also time nnU-Net's pipeline (needs nnunetv2)")
    q.set_defaults(func=run_loader)
