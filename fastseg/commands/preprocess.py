"""`fastseg preprocess`: preprocess a planned dataset's training cases into its work folder, in
fastseg's format or in nnU-Net's own (`--format nnunet`)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from fastseg.commands.plan import (
    PREPROCESS_WORKER_MODULES,
    add_dataset_option,
    folder_or_dataset,
    nnunet_dataset,
    positive_gb,
    positive_int,
    reports_errors,
)
from fastseg.commands.ray_cluster import add_ray_options, preprocess_runner, report_runner

#: What the workers of `--format nnunet` import (blosc2 only in the workers: it starts a thread).
NNUNET_WORKER_MODULES = PREPROCESS_WORKER_MODULES + ("fastseg.preprocess.nnunet_format",)


def _nnunet_output(args: argparse.Namespace, work_dir: Path) -> Path:
    """-o, else $nnUNet_preprocessed/<the plans' dataset_name> (nnUNetv2_train looks there)."""
    if args.output is not None:
        return Path(args.output)
    dataset = nnunet_dataset(args)
    if dataset is not None:
        from fastseg.datasets.nnunet_paths import PREPROCESSED

        return dataset.require(PREPROCESSED)
    root = os.environ.get("nnUNet_preprocessed")
    if not root:
        raise ValueError(
            "--format nnunet writes into $nnUNet_preprocessed/<dataset>, and nnUNet_preprocessed is not set; "
            "set it, or give the folder with -o NNUNET_PREPROCESSED_DATASET_DIR"
        )
    from fastseg.plan import workdir

    plans_path = work_dir / workdir.PLANS
    name = workdir.read_json(plans_path, ("dataset_name",))["dataset_name"]
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise workdir.damaged(plans_path, f"'dataset_name' must be a folder name, got {name!r}")
    return Path(root) / name


def _refuse_nnunet_cases(work_dir: Path, configurations: list[str] | None) -> None:
    """fastseg's format must not land in a data folder that holds nnU-Net's (nnU-Net could then read
    neither): in a work folder that is also nnU-Net's dataset folder (-d), the names are the same."""
    from fastseg.plan import workdir
    from fastseg.plan.plans import data_configurations, resolve_configuration
    from fastseg.preprocess.nnunet_format import nnunet_case_file

    plans_path = work_dir / workdir.PLANS
    if not plans_path.is_file():
        return  # preprocess_dataset says what is missing
    plans = workdir.read_plans(plans_path)
    with workdir.interpreting(plans_path, "its configurations"):
        for name in data_configurations(plans, configurations):
            folder = work_dir / resolve_configuration(plans, name)["data_identifier"]
            found = nnunet_case_file(folder)
            if found is not None:
                raise ValueError(
                    f"{folder} holds nnU-Net's preprocessed format ({found.name}, from --format nnunet or "
                    "nnUNetv2_preprocess); fastseg's own cases cannot join it (nnU-Net could no longer read the "
                    "folder). Use that folder with nnU-Net, or plan into another work folder for fastseg's format"
                )


@reports_errors
def run(args: argparse.Namespace) -> int:
    from fastseg.datasets.nnunet_paths import PREPROCESSED
    from fastseg.runtime.workers import default_num_workers, start_fork_server

    work_dir = Path(folder_or_dataset(args, args.work_dir, "WORK_DIR", PREPROCESSED))
    nnunet = args.format == "nnunet"
    if args.output is not None and not nnunet:
        raise ValueError("-o is the output of --format nnunet; fastseg's own format is written into WORK_DIR")
    configurations = list(args.configurations) if args.configurations else None
    if nnunet:
        output = _nnunet_output(args, work_dir)
        from fastseg.preprocess.nnunet_format import require_blosc2

        require_blosc2()
    else:
        _refuse_nnunet_cases(work_dir, configurations)
    if args.ray is None and (args.num_processes or default_num_workers()) > 1:
        # the workers' modules; the server starts while the runner is imported.
        start_fork_server(NNUNET_WORKER_MODULES if nnunet else PREPROCESS_WORKER_MODULES)
    from fastseg.preprocess.runner import PreprocessOptions, preprocess_dataset

    options = PreprocessOptions(
        configurations=tuple(configurations) if configurations else None,
        num_processes=args.num_processes,
        memory_budget_bytes=int(args.memory_budget_gb * 1e9) if args.memory_budget_gb else None,
        overwrite=args.overwrite,
        run_cases=preprocess_runner(args),
    )
    if nnunet:
        from fastseg.preprocess.nnunet_format import preprocess_dataset_nnunet

        reports = preprocess_dataset_nnunet(work_dir, output, args.raw, options, env=dict(os.environ))
    else:
        reports = preprocess_dataset(work_dir, args.raw, options, env=dict(os.environ))
    report_runner(options.run_cases)
    for report in reports:
        print(
            f"{report.configuration}: {len(report.processed)} cases preprocessed, {len(report.skipped)} already done "
            f"-> {report.folder}"
        )
    if nnunet and reports:
        plans = json.loads((work_dir / "plans.json").read_text(encoding="utf-8"))
        name = plans.get("dataset_name", "DatasetXXX_Name")
        configuration = next((r.configuration for r in reports if r.configuration == "3d_fullres"), reports[0].configuration)
        plans_name = plans.get("plans_name", "nnUNetPlans")
        print(
            f"nnU-Net trains on it with nnUNet_preprocessed={output.parent}: nnUNetv2_train {name} {configuration} 0"
            + (f" -p {plans_name}" if plans_name != "nnUNetPlans" else "")
        )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preprocess",
        help="crop, normalize and resample the training cases for training (fastseg's or nnU-Net's format)",
        description=(
            "Preprocesses every training case of the dataset planned in WORK_DIR (by `fastseg plan`): transpose, crop "
            "to the nonzero region, normalize, resample to each configuration's spacing, and sample foreground "
            "locations. Writes WORK_DIR/<data_identifier>/<case>.npy (float32), <case>_seg.npy (int8/int16) and "
            "<case>.json. With --format nnunet it writes nnU-Net 2.8's own preprocessed format instead, so that "
            "nnUNetv2_train trains on it: <plans_name>.json, dataset.json, dataset_fingerprint.json, gt_segmentations/ "
            "and <data_identifier>/<case>.b2nd, <case>_seg.b2nd (blosc2, nnU-Net's chunks and compression) and "
            "<case>.pkl, into -o or $nnUNet_preprocessed/<dataset>. Each case is written atomically; a rerun skips "
            "finished cases (and redoes damaged ones), so an interrupted run can be resumed by running the same "
            "command again. One command at a time may write into a folder: while another one does, this one stops "
            "at once with an error naming it. With -d ID, WORK_DIR is $nnUNet_preprocessed/DatasetXXX_Name."
        ),
        epilog=(
            "Examples:\n"
            "  fastseg preprocess work/Dataset001_Heart\n"
            "  fastseg preprocess work/Dataset001_Heart -c 3d_fullres -j 8\n"
            "  fastseg preprocess work/Dataset001_Heart -c 2d 3d_fullres --memory-budget-gb 16\n"
            "  fastseg preprocess work/Dataset001_Heart --format nnunet -o $nnUNet_preprocessed/Dataset001_Heart\n"
            "  fastseg preprocess -d 1 --format nnunet -c 3d_fullres && nnUNetv2_train 1 3d_fullres 0"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("work_dir", nargs="?", default=None, metavar="WORK_DIR", help="work folder written by `fastseg plan`")
    add_dataset_option(p, "WORK_DIR")
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
    p.add_argument(
        "--format",
        choices=("fastseg", "nnunet"),
        default="fastseg",
        help="fastseg: .npy + .json in WORK_DIR (what fastseg trains on); nnunet: nnU-Net 2.8's .b2nd + .pkl dataset "
        "folder (what nnUNetv2_train trains on) (default: fastseg)",
    )
    p.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="NNUNET_PREPROCESSED_DATASET_DIR",
        help="with --format nnunet: nnU-Net's dataset folder to write (default: $nnUNet_preprocessed/<dataset_name>)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo cases that are already preprocessed")
    add_ray_options(p, cpus_per_worker=1)
    p.set_defaults(func=run)
