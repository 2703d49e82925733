"""`fastseg find-postprocessing`: nnU-Net's postprocessing decision on cross-validation predictions."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from fastseg.commands.plan import add_model_options, dataset_model_folder, positive_int, reports_errors


def reference_folder(model_or_predictions: Path, given: str | None, env: dict) -> Path:
    """The references: `given`, else where nnU-Net looks for a dataset's training labels
    ($nnUNet_raw/<dataset>/labelsTr, then $nnUNet_preprocessed/<dataset>/gt_segmentations)."""
    if given:
        return Path(given)
    plans = model_or_predictions / "plans.json"
    name = json.loads(plans.read_text()).get("dataset_name") if plans.is_file() else None
    tried = []
    for var, tail in (("nnUNet_raw", "labelsTr"), ("nnUNet_preprocessed", "gt_segmentations")):
        if name and env.get(var):
            candidate = Path(env[var]) / name / tail
            if candidate.is_dir():
                return candidate
            tried.append(str(candidate))
    where = f" (looked in {', '.join(tried)})" if tried else ""
    raise FileNotFoundError(f"no reference segmentations for {model_or_predictions}{where}; give them with --ref LABELS_DIR")


def _dataset_json(folder: Path, given: str | None) -> dict:
    path = Path(given) if given else folder / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; give the dataset's dataset.json with --dataset-json")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None


@reports_errors
def run(args: argparse.Namespace) -> int:
    from fastseg.evaluate import format_table
    from fastseg.evaluate.crossval import merge_validation, validated_folds
    from fastseg.evaluate.postprocessing import find_postprocessing

    folder = dataset_model_folder(args, args.folder, "FOLDER")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found")
    model = folder if validated_folds(folder) or args.folds else None
    predictions = merge_validation(folder, args.folds) if model is not None else folder
    if model is not None:
        print(f"gathered the validation predictions of {model} into {predictions}")
    ref = reference_folder(predictions, args.ref, dict(os.environ))
    dataset_json = _dataset_json(predictions, args.dataset_json)
    choice = find_postprocessing(predictions, ref, dataset_json, num_processes=args.num_processes)
    names = {tuple(v) if isinstance(v, list) else v: k for k, v in dataset_json.get("labels", {}).items()}
    print("before postprocessing:")
    print(format_table(choice.before, names))
    for line in choice.log:
        print(line)
    print("after postprocessing:")
    print(format_table(choice.after, names))
    pkl = predictions / "postprocessing.pkl"
    print(f"wrote {pkl}, {predictions / 'postprocessing.json'} and {predictions / 'postprocessed'}/")
    if model is not None:
        folds = " ".join(str(f) for f in (args.folds or validated_folds(model)))
        print(f"predict with it:\n  fastseg predict -m {model} -f {folds} -i INPUT_FOLDER -o OUTPUT_FOLDER --postprocessing {pkl}")
    else:
        print(f"apply it when predicting: fastseg predict ... --postprocessing {pkl}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "find-postprocessing",
        help="decide nnU-Net's postprocessing (keep the largest component) on cross-validation predictions",
        description=(
            "Decides, as nnU-Net's determine_postprocessing does, whether keeping only the largest connected "
            "component improves the cross-validation Dice: first of all foreground together (kept when the foreground "
            "mean Dice rises and no label gets worse), then of each label or region in turn (kept when its Dice "
            "rises). FOLDER is a trained model folder (its folds' validation predictions are gathered into "
            "crossval_results_folds_<folds>/ first, as nnU-Net does) or a folder of predictions. Writes "
            "postprocessing.pkl (nnU-Net's format), postprocessing.json and postprocessed/ with the postprocessed "
            "predictions and their summary.json. With -d ID -c CONFIG, FOLDER is the model folder "
            "$nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>."
        ),
        epilog=(
            "Examples:\n"
            "  fastseg find-postprocessing results/Dataset001_Heart/nnUNetTrainer__nnUNetPlans__3d_fullres\n"
            "  fastseg find-postprocessing MODEL_FOLDER -f 0 1 2 3 4 --ref raw/Dataset001_Heart/labelsTr -j 4\n"
            "  fastseg find-postprocessing -d 1 -c 3d_fullres      (nnUNet_results set)\n"
            "  fastseg find-postprocessing cv_predictions/ --ref labelsTr/ --dataset-json dataset.json\n"
            "References default to $nnUNet_raw/<dataset>/labelsTr (or $nnUNet_preprocessed/<dataset>/gt_segmentations)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("folder", nargs="?", default=None, metavar="FOLDER",
                   help="trained model folder, or a folder of cross-validation predictions")
    add_model_options(p, "FOLDER")
    p.add_argument("--ref", default=None, metavar="LABELS_DIR", help="reference segmentations (the same file names)")
    p.add_argument("-f", "--folds", type=int, nargs="+", default=None, metavar="K",
                   help="folds of a model folder (default: every fold with validation predictions)")
    p.add_argument("--dataset-json", default=None, metavar="FILE", help="dataset.json (default: the one in FOLDER)")
    p.add_argument("-j", "--num-processes", type=positive_int, default=None, metavar="N", help="worker processes (default: all cores)")
    p.set_defaults(func=run)
