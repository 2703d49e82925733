"""`fastseg benchmark`: fastseg beside nnU-Net on a raw dataset, stage by stage in one table
(`fastseg benchmark RAW_DATASET --against nnunet`), with `benchmark predict` and `benchmark loader`
as the per-stage subcommands."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from fastseg.commands.plan import positive_int, reports_errors
from fastseg.commands.predict import _fold, _step
from fastseg.predict.precision import PRECISIONS


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
            precision=args.precision,
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


@reports_errors
def run_train(args: argparse.Namespace) -> int:
    from fastseg.benchmark.loader import BenchmarkError
    from fastseg.benchmark.train import benchmark_train, format_report

    if args.against not in (None, "nnunet"):
        raise ValueError(f"--against takes 'nnunet', got {args.against!r}")
    try:
        result = benchmark_train(args.work_dir, args.configuration, fold=args.fold, epochs=args.epochs,
                                 iterations=args.iterations, val_iterations=args.val_iterations, workers=args.workers,
                                 threads=args.threads, against_nnunet=args.against == "nnunet", compile=args.compile)
    except BenchmarkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_report(result))
    if args.json:
        from fastseg.io.atomic import write_json_atomic

        write_json_atomic(result.as_json(), Path(args.json))
        print(f"wrote {args.json}")
    return 0


def _stages(text: str) -> tuple[str, ...]:
    from fastseg.benchmark.stages import parse_stages

    try:
        return parse_stages(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


@reports_errors
def run_dataset(args: argparse.Namespace) -> int:
    import os

    from fastseg.benchmark.report import format_report
    from fastseg.benchmark.stages import BenchmarkError, BenchmarkOptions, run_benchmark

    if args.against not in (None, "nnunet"):
        raise ValueError(f"--against takes 'nnunet', got {args.against!r}")
    options = BenchmarkOptions(
        stages=args.stages, against_nnunet=args.against == "nnunet", configuration=args.configuration,
        workers=args.workers, threads=args.threads, batches=args.batches, iterations=args.iterations,
        model=args.model, folds=tuple(args.folds), cases=args.cases,
    )
    try:
        report = run_benchmark(args.raw_dataset, args.output, options, env=dict(os.environ))
    except BenchmarkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_report(report))
    failed = report.failed
    if failed is not None:
        print(f"error: the {failed.name} stage failed; the stages after it did not run", file=sys.stderr)
        return 1
    return 0


def _missing_target(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    print("error: name a raw dataset (fastseg benchmark RAW_DATASET --against nnunet) or a stage "
          "(fastseg benchmark predict|loader ...)", file=sys.stderr)
    return 2


_DESCRIPTION = "\n\n".join(textwrap.fill(part, 100) for part in (
    "Two forms.",
    "fastseg benchmark RAW_DATASET --against nnunet [--stages ...]: runs each stage of the pipeline (plan, "
    "preprocess, loader, train, predict, evaluate) with fastseg and with nnU-Net v2 (nnunetv2, as installed) on "
    "the same raw dataset and plans with the same worker count, and prints one table: per stage the wall time, the "
    "throughput (cases, samples or iterations per second), the peak memory (PSS summed over each tool's processes) "
    "and the agreement of the two tools' outputs (plans key by key, preprocessed arrays voxel by voxel, batch "
    "shapes, segmentations' voxels and Dice, evaluation metrics to 1e-6), with the fastseg / nnU-Net ratios. "
    "Writes DIR/benchmark.json and the bar chart DIR/benchmark.png (default DIR: "
    "./fastseg_benchmark/<dataset folder name>). nnU-Net reads the dataset as DatasetXXX_Name: a raw folder named "
    "otherwise is benchmarked as Dataset999_<name>. predict needs a model folder (-m); without one it is skipped.",
    "fastseg benchmark STAGE ...: one stage on its own inputs (STAGE: predict, loader); "
    "`fastseg benchmark STAGE --help` for its options.",
))
_EPILOG = (
    "Examples:\n"
    "  fastseg benchmark /data/nnUNet_raw/Dataset001_Heart --against nnunet --stages plan,preprocess\n"
    "  fastseg benchmark /data/nnUNet_raw/Dataset001_Heart --against nnunet -c 2d -j 4 -o bench/heart\n"
    "  fastseg benchmark /data/nnUNet_raw/Dataset001_Heart --against nnunet --stages predict,evaluate -m MODEL_DIR\n"
    "  fastseg benchmark predict -m MODEL_DIR -i imagesTs --against nnunet\n"
    "  fastseg benchmark loader WORK_DIR -c 3d_fullres --against nnunet"
)


def _add_dataset_options(p: argparse.ArgumentParser) -> None:
    """The options of `fastseg benchmark RAW_DATASET` (on the benchmark parser, for its help and
    for options given before RAW_DATASET, and on the parser of what follows RAW_DATASET)."""
    from fastseg.benchmark.stages import STAGES

    g = p.add_argument_group("options of fastseg benchmark RAW_DATASET")
    g.add_argument("--against", default=None, metavar="nnunet", help="also run nnU-Net v2 (needs nnunetv2); without it, fastseg alone")
    g.add_argument("--stages", type=_stages, default=STAGES, metavar="LIST",
                   help=f"comma-separated stages, run in pipeline order (default: {','.join(STAGES)})")
    g.add_argument("-c", "--configuration", default=None, metavar="CONFIG",
                   help="configuration to preprocess, load and train (default: 3d_fullres, or 2d without it)")
    g.add_argument("-o", "--output", default=None, metavar="DIR", help="output folder (default: ./fastseg_benchmark/<dataset>)")
    g.add_argument("-j", "--workers", type=positive_int, default=None, metavar="N",
                   help="worker processes of each tool (default: the usable CPUs)")
    g.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="torch threads of each tool in train and predict (default: the usable CPUs)")
    g.add_argument("-m", "--model", default=None, metavar="MODEL_DIR", help="model folder for the predict stage (fastseg's or nnU-Net's)")
    g.add_argument("-f", "--folds", nargs="+", type=_fold, default=["0"], metavar="FOLD", help="its folds (default: 0)")
    g.add_argument("--cases", type=positive_int, default=None, metavar="N",
                   help="cases to predict and score (default: all of imagesTs; without imagesTs the first 5 of imagesTr)")
    g.add_argument("--batches", type=positive_int, default=20, metavar="N", help="timed loader batches (default: 20)")
    g.add_argument("--iterations", type=positive_int, default=None, metavar="N",
                   help="training iterations per epoch in the train stage (default: the training benchmark's)")


class _StageOrDataset(argparse._SubParsersAction):
    """The benchmark's subcommands, where a first word that names no stage is the RAW_DATASET of
    the umbrella form: what follows it is parsed by `dataset_options` (argparse cannot otherwise
    take a positional argument beside subcommands)."""

    dataset_options: argparse.ArgumentParser

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.choices = None  # any first word passes argparse's check; __call__ tells the two forms apart

    def __call__(self, parser, namespace, values, option_string=None):
        if values[0] in self._name_parser_map:
            return super().__call__(parser, namespace, values, option_string)
        setattr(namespace, self.dest, None)
        namespace.raw_dataset = values[0]
        self.dataset_options.parse_args(values[1:], namespace)
        namespace.func = run_dataset


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark",
        help="time fastseg beside nnU-Net on your own data and models",
        usage="%(prog)s RAW_DATASET --against nnunet [--stages LIST] [-c CONFIG] [-o DIR] [-j N] [-m MODEL_DIR] ...\n"
              "       %(prog)s {predict,loader,train} ...",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_dataset_options(p)
    after = argparse.ArgumentParser(
        prog=f"{p.prog} RAW_DATASET", description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_dataset_options(after)
    stages = p.add_subparsers(dest="stage", metavar="STAGE", action=_StageOrDataset,
                              title="stages on their own (or RAW_DATASET, for every stage)")
    stages.dataset_options = after
    p.set_defaults(func=lambda args: _missing_target(p))
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
    q.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="fastseg's --precision (default: auto, bf16 autocast on CPUs with AMX tiles); nnU-Net runs fp32")
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
    q = stages.add_parser(
        "train",
        help="fastseg train beside nnUNetv2_train: steady iterations per second and loader wait",
        description=(
            "Trains the configuration with fastseg and, with --against nnunet, with nnU-Net's own trainer "
            "(nnUNetv2_train's entry point; only the run length is set) for the same epochs and iterations, on the CPU, "
            "with the same loader workers and torch threads, each in its own process and into a scratch folder (your "
            "results are not touched). nnU-Net trains on its preprocessing of the same raw dataset and plans, made with "
            "nnUNetv2_preprocess into WORK_DIR/.nnunet_reference the first time. Reports the steady training rate "
            "(epochs after the first), the share of the training loop spent waiting for batches, the whole command's "
            "wall time and peak memory."
        ),
        epilog=(
            "Examples:\n"
            "  fastseg benchmark train work/Dataset001 -c 2d --against nnunet\n"
            "  fastseg benchmark train work/Dataset001 -c 3d_fullres --against nnunet --threads 1 --epochs 3 --iterations 10"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("work_dir", metavar="WORK_DIR", help="work folder of fastseg plan/preprocess")
    q.add_argument("-c", "--configuration", required=True, metavar="CONFIG", help="a preprocessed configuration")
    q.add_argument("-f", "--fold", type=_fold, default="all", metavar="FOLD", help="0-4 or all (default: all)")
    q.add_argument("--epochs", type=positive_int, default=3, metavar="N", help="epochs, the first one a warm-up (default: 3)")
    q.add_argument("--iterations", type=positive_int, default=20, metavar="N", help="training iterations per epoch (default: 20)")
    q.add_argument("--val-iterations", type=positive_int, default=5, metavar="N", help="validation iterations per epoch (default: 5)")
    q.add_argument("--workers", type=positive_int, default=2, metavar="W", help="loader workers of each tool (default: 2)")
    q.add_argument("--threads", type=positive_int, default=None, metavar="T", help="torch threads of each tool (default: all cores)")
    q.add_argument("--against", default=None, metavar="nnunet", help="also train with nnU-Net (needs nnunetv2)")
    q.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="fastseg's network compiled, as `fastseg train` runs it by default (default: on)")
    q.add_argument("--json", default=None, metavar="FILE", help="also write the result as JSON")
    q.set_defaults(func=run_train)
