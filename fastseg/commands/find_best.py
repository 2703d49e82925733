"""`fastseg find-best`: nnU-Net's find_best_configuration over trained model folders."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fastseg.commands.find_postprocessing import reference_folder
from fastseg.commands.plan import add_dataset_option, folder_or_dataset, positive_int, reports_errors


@reports_errors
def run(args: argparse.Namespace) -> int:
    from fastseg.evaluate.selection import DEFAULT_CONFIGURATIONS, find_best_configuration, model_identifier, summary_lines

    from fastseg.datasets.nnunet_paths import RESULTS

    root = Path(folder_or_dataset(args, args.results_root, "RESULTS_ROOT", RESULTS))
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} not found; give the dataset's results folder (nnUNet_results/DatasetXXX_Name)")
    configurations = args.configurations or DEFAULT_CONFIGURATIONS
    models = [(t, p, c) for t in args.trainers for p in args.plans for c in configurations]
    if args.configurations:
        missing = [model_identifier(*m) for m in models if not (root / model_identifier(*m)).is_dir()]
        if missing:
            raise FileNotFoundError(f"no trained model folder {', '.join(missing)} in {root}; train it, or leave it out of -c")
    else:  # nnU-Net's defaults: the configurations that were trained
        models = [m for m in models if (root / model_identifier(*m)).is_dir()]
        if not models:
            raise FileNotFoundError(f"{root} holds none of the model folders {', '.join(model_identifier(t, p, '<c>') for t in args.trainers for p in args.plans)}"
                                    f" for configurations {', '.join(configurations)}")
    reference = reference_folder(root / model_identifier(*models[0]), args.ref, dict(os.environ))
    selection = find_best_configuration(
        root, models, reference, folds=args.folds, allow_ensembling=not args.no_ensembling,
        num_processes=args.num_processes,
    )
    for line in summary_lines(selection):
        print(line)
    print()
    print(selection.instructions, end="")
    print(f"\nwrote {root / 'inference_information.json'} and {root / 'inference_instructions.txt'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "find-best",
        help="pick the best trained configuration or pair ensemble on cross-validation (nnU-Net's find_best_configuration)",
        description=(
            "For every trained model folder <trainer>__<plans>__<configuration> in RESULTS_ROOT and, unless "
            "--no-ensembling, every pair of them (ensembled fold by fold from the validation probabilities), scores the "
            "cross-validation predictions (foreground mean Dice), picks the best, decides its postprocessing and prints "
            "the commands to predict with it. Writes inference_information.json (nnU-Net's format) and "
            "inference_instructions.txt into RESULTS_ROOT. With -d ID, RESULTS_ROOT is $nnUNet_results/DatasetXXX_Name."
        ),
        epilog=(
            "Examples:\n"
            "  fastseg find-best nnUNet_results/Dataset001_Heart -c 2d 3d_fullres\n"
            "  fastseg find-best -d 1 -c 2d 3d_fullres      (nnUNet_results set)\n"
            "  fastseg find-best RESULTS_ROOT -c 3d_fullres -f 0 1 2 3 4 --ref raw/Dataset001_Heart/labelsTr --no-ensembling\n"
            "References default to $nnUNet_raw/<dataset>/labelsTr (or $nnUNet_preprocessed/<dataset>/gt_segmentations)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("results_root", nargs="?", default=None, metavar="RESULTS_ROOT",
                   help="the dataset's results folder, holding the model folders")
    add_dataset_option(p, "RESULTS_ROOT")
    p.add_argument("-c", "--configurations", nargs="+", default=None, metavar="CONFIG",
                   help="configurations to compare (default: those of 2d, 3d_fullres, 3d_lowres, 3d_cascade_fullres that were trained)")
    p.add_argument("-tr", "--trainers", nargs="+", default=["nnUNetTrainer"], metavar="TRAINER", help="trainer names (default: nnUNetTrainer)")
    p.add_argument("-p", "--plans", nargs="+", default=["nnUNetPlans"], metavar="PLANS", help="plans identifiers (default: nnUNetPlans)")
    p.add_argument("-f", "--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4], metavar="K", help="cross-validation folds (default: 0 1 2 3 4)")
    p.add_argument("--ref", default=None, metavar="LABELS_DIR", help="reference segmentations of the training cases")
    p.add_argument("--no-ensembling", action="store_true", help="compare single models only")
    p.add_argument("-j", "--num-processes", type=positive_int, default=None, metavar="N", help="worker processes (default: all cores)")
    p.set_defaults(func=run)
