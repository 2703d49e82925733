"""`fastseg evaluate`: score predicted segmentations against references (nnU-Net's summary.json)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fastseg.commands.plan import positive_int, reports_errors
from fastseg.commands.ray_cluster import add_ray_options, evaluate_mapper, report_runner


@reports_errors
def run(args: argparse.Namespace) -> int:
    from fastseg.evaluate import evaluate_folders, format_table

    from fastseg.evaluate.folder import load_dataset_json

    dataset_json = load_dataset_json(args.dataset_json)
    if args.plot:
        from fastseg.evaluate.plots import check_plot_path

        check_plot_path(args.plot)
    output = Path(args.output) if args.output else Path(args.pred_dir) / "summary.json"
    mapper = evaluate_mapper(args)
    summary = evaluate_folders(
        args.pred_dir, args.ref_dir, dataset_json, output=output, num_processes=args.num_processes,
        nsd_tolerance_mm=args.nsd_tolerance_mm, map_cases=mapper,
    )
    report_runner(mapper)
    names = {}
    for name, value in dataset_json["labels"].items():
        names[tuple(value) if isinstance(value, list) else value] = name
    print(format_table(summary, names))
    print(f"wrote {output}")
    if args.plot:
        from fastseg.evaluate.plots import plot_summary

        plot_summary(summary, args.plot, names)
        print(f"wrote {args.plot}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score predicted segmentations against references (Dice, IoU, ...; nnU-Net's summary.json)",
        description=(
            "Scores every segmentation in PRED_DIR against the file of the same name in REF_DIR with nnU-Net's "
            "metrics: per case and per label (per region for region-based datasets) Dice, IoU, TP, FP, FN, TN, "
            "n_pred, n_ref, with the ignore label left out; their means over cases and the foreground mean. Writes "
            "summary.json in nnU-Net's layout (its tools read it). A case on one side only, or a pair whose shapes "
            "or spacings differ, is an error naming the files; nothing is written then."
        ),
        epilog=(
            "Examples:\n"
            "  fastseg evaluate pred/ labelsTs/ --dataset-json raw/Dataset001_Heart/dataset.json\n"
            "  fastseg evaluate pred/ labelsTs/ --dataset-json dataset.json -o results/summary.json -j 4\n"
            "  fastseg evaluate pred/ labelsTs/ --dataset-json dataset.json --nsd-tolerance-mm 2\n"
            "  fastseg evaluate pred/ labelsTs/ --dataset-json dataset.json --nsd-tolerance-mm 2 --plot scores.png"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pred_dir", metavar="PRED_DIR", help="folder of predicted segmentations")
    p.add_argument("ref_dir", metavar="REF_DIR", help="folder of reference segmentations (the same file names)")
    p.add_argument("--dataset-json", required=True, metavar="FILE", help="the dataset's dataset.json (labels, regions, ignore label)")
    p.add_argument("-o", "--output", default=None, metavar="FILE", help="summary file (default: PRED_DIR/summary.json)")
    p.add_argument("-j", "--num-processes", type=positive_int, default=None, metavar="N", help="worker processes (default: all cores)")
    p.add_argument(
        "--nsd-tolerance-mm", type=float, default=None, metavar="T",
        help="also compute HD95, average symmetric surface distance (ASSD) and normalized surface Dice at T mm, on each "
        "case's spacing (extra keys in summary.json)",
    )
    p.add_argument(
        "--plot", default=None, metavar="FILE.png",
        help="also write per-label box plots of the per-case Dice (and HD95 with --nsd-tolerance-mm) as a PNG",
    )
    add_ray_options(p, cpus_per_worker=1)
    p.set_defaults(func=run)
