"""`fastseg ensemble`: average the probabilities of several prediction folders (nnUNetv2_ensemble)."""

from __future__ import annotations

import argparse

from fastseg.commands.plan import positive_int, reports_errors

#: What the workers of `ensemble` import (`fastseg.predict.ensemble.ensemble_case`).
WORKER_MODULES = ("fastseg.predict.ensemble", "fastseg.io", "SimpleITK")


@reports_errors
def run(args: argparse.Namespace) -> int:
    from fastseg.runtime.workers import default_num_workers, start_fork_server

    if (args.num_processes or default_num_workers()) > 1:
        start_fork_server(WORKER_MODULES)  # starts while the inputs are listed and checked
    from fastseg.predict.ensemble import ensemble_folders

    report = ensemble_folders(
        args.inputs,
        args.output,
        dataset_json=args.dataset_json,
        plans=args.plans,
        num_processes=args.num_processes,
        save_probabilities=args.save_probabilities,
        allow_missing=args.skip_missing,
        postprocessing=args.postprocessing,
    )
    skipped = f"; {len(report.left_out)} case(s) not in every folder left out" if report.left_out else ""
    print(f"ensembled {len(report.written)} case(s) from {len(args.inputs)} folders into {args.output}{skipped}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ensemble",
        help="average the probabilities of several prediction folders into one segmentation (nnU-Net's ensembling)",
        description=(
            "Ensembles prediction folders as nnUNetv2_ensemble does: for every case, the probabilities "
            "(<case>.npz, as `fastseg predict --save-probabilities` and nnU-Net's --save_probabilities write them) "
            "of all input folders are averaged and turned into labels (argmax; for region-based datasets each "
            "region above 0.5, in regions_class_order), written as <case><file_ending> on the geometry of the first "
            "folder's <case>.pkl. dataset.json (and plans.json, which is optional) come from the first input "
            "folder unless given. Every folder must hold the same cases (--skip-missing ensembles the common ones); "
            "a case whose probabilities differ in shape is an error naming the files. Nothing is written unless "
            "every case succeeds; dataset.json (and plans.json) are written beside the results."
        ),
        epilog=(
            "Examples:\n"
            "  fastseg ensemble -i pred_3d_fullres pred_2d -o pred_ensemble\n"
            "  fastseg ensemble -i pred_a pred_b pred_c -o ens --dataset-json model/dataset.json -j 4\n"
            "  fastseg ensemble -i pred_a pred_b -o ens --save-probabilities --skip-missing\n"
            "  fastseg ensemble -i pred_a pred_b -o ens --postprocessing results/ensembles/ENSEMBLE/postprocessing.pkl"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-i", "--inputs", nargs="+", required=True, metavar="DIR",
        help="two or more prediction folders holding <case>.npz and <case>.pkl",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="folder to write the ensembled segmentations into (created)")
    p.add_argument(
        "--dataset-json", default=None, metavar="FILE",
        help="the dataset's dataset.json (labels, regions, file ending; default: the first input folder's)",
    )
    p.add_argument(
        "--plans", default=None, metavar="FILE",
        help="the model's plans.json, checked for a writer and label manager fastseg reproduces (default: the first "
        "input folder's, when it has one)",
    )
    p.add_argument("-j", "--num-processes", type=positive_int, default=None, metavar="N", help="worker processes (default: all cores)")
    p.add_argument(
        "--save-probabilities", action="store_true",
        help="also write the averaged probabilities (<case>.npz) and properties (<case>.pkl)",
    )
    p.add_argument(
        "--skip-missing", action="store_true",
        help="ensemble only the cases every folder holds, with a warning naming the others (default: an error)",
    )
    p.add_argument(
        "--postprocessing", default=None, metavar="FILE",
        help="postprocessing to apply to the ensembled labels: nnU-Net's postprocessing.pkl or fastseg's .json "
        "(as `fastseg find-postprocessing` and `fastseg find-best` write them)",
    )
    p.set_defaults(func=run)
