"""Which trained model to ship: nnU-Net's `find_best_configuration`.

For a dataset's results folder (nnU-Net's `nnUNet_results/<dataset>/`, holding one
`<trainer>__<plans>__<configuration>/` folder per trained model):

1. each model's cross-validation predictions are gathered (`crossval_results_folds_<folds>/`,
   `fastseg.evaluate.crossval`) and scored against the references: foreground mean Dice;
2. unless ensembling is off, each pair of models is ensembled fold by fold from their validation
   probabilities (`fold_k/validation/<case>.npz`, written when validating with probabilities) into
   `ensembles/ensemble___<model 1>___<model 2>___<folds>/` and scored the same way;
3. the best foreground mean Dice wins (the first in that order on a tie, as in nnU-Net), and
   postprocessing is decided on its predictions (`fastseg.evaluate.postprocessing`);
4. `inference_information.json` (nnU-Net's layout: nnU-Net's tools read it) and
   `inference_instructions.txt` (the fastseg commands to predict, ensemble and postprocess with the
   winner) are written into the results folder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

#: nnU-Net's default candidates: configuration names tried for each trainer and plans.
DEFAULT_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")


@dataclass
class Selection:
    """What `find_best_configuration` found.

    Attributes:
        results: foreground mean Dice of each model and ensemble, by identifier (in the order tried).
        best: the winner's identifier.
        source: the winner's cross-validation prediction folder.
        models: the winner's models as (trainer, plans, configuration), one or two.
        postprocessing_file: the winner's postprocessing.pkl.
        dice_after_postprocessing: the winner's foreground mean Dice after postprocessing.
        information: the content of inference_information.json.
        instructions: the commands to predict with the winner.
    """

    results: dict[str, float] = field(default_factory=dict)
    best: str = ""
    source: Path = Path()
    models: list[tuple[str, str, str]] = field(default_factory=list)
    postprocessing_file: Path = Path()
    dice_after_postprocessing: float = float("nan")
    information: dict = field(default_factory=dict)
    instructions: str = ""


def model_identifier(trainer: str, plans: str, configuration: str) -> str:
    """nnU-Net's model folder name: `<trainer>__<plans>__<configuration>`."""
    return f"{trainer}__{plans}__{configuration}"


def ensemble_identifier(model_1: str, model_2: str, folds: Sequence[int]) -> str:
    """nnU-Net's ensemble folder name: `ensemble___<model 1>___<model 2>___<folds>`."""
    from fastseg.evaluate.crossval import folds_name

    return f"ensemble___{model_1}___{model_2}___{folds_name(folds)}"


def _ensemble_crossvalidation(models: Sequence[Path], output: Path, folds: Sequence[int], num_processes: int | None,
                              progress: bool | None) -> Path:
    """Ensembles the models' validation probabilities into `output`, fold by fold."""
    from fastseg.predict.ensemble import ensemble_folders

    for model in models:
        for fold in folds:
            folder = model / f"fold_{fold}" / "validation"
            if not folder.is_dir():
                raise FileNotFoundError(f"fold {fold} of {model} has no validation predictions ({folder}); train fold {fold}")
            if not any(folder.glob("*.npz")):
                raise FileNotFoundError(
                    f"{folder} holds no probabilities (.npz); ensembles need the validation probabilities: validate "
                    "with probabilities saved (nnU-Net: nnUNetv2_train ... --val --npz), or leave ensembles out"
                )
    for fold in folds:
        ensemble_folders(
            [m / f"fold_{fold}" / "validation" for m in models], output,
            dataset_json=models[0] / "dataset.json",
            plans=models[0] / "plans.json" if (models[0] / "plans.json").is_file() else None,
            num_processes=num_processes, progress=progress,
        )
    return output


def find_best_configuration(
    results_root: str | Path,
    models: Sequence[tuple[str, str, str]],
    reference: str | Path,
    *,
    folds: Sequence[int] = (0, 1, 2, 3, 4),
    allow_ensembling: bool = True,
    num_processes: int | None = None,
    progress: bool | None = None,
    dataset_name_or_id: str | None = None,
) -> Selection:
    """Scores the models and their pair ensembles on cross-validation and picks the best.

    Args:
        results_root: the dataset's results folder, holding the model folders.
        models: (trainer, plans, configuration) of each candidate; each must have its folder with
            every fold in `folds` validated.
        reference: the reference segmentations of the training cases (labelsTr).
        folds: the cross-validation folds (default 0-4).
        allow_ensembling: also try every pair of models (default True).
        num_processes: worker processes (default: the cores).
        progress: progress bars; None: only when stderr is a terminal.
        dataset_name_or_id: written into inference_information.json (default: the plans' dataset name).

    Returns:
        The `Selection`; inference_information.json and inference_instructions.txt are written.

    Raises:
        FileNotFoundError: a model folder, fold or the references are missing.
        ValueError: no models, or what scoring raises (cases missing, shapes that differ).
    """
    import json

    from fastseg.evaluate.crossval import folds_name, merge_validation
    from fastseg.evaluate.folder import evaluate_folders
    from fastseg.evaluate.postprocessing import find_postprocessing
    from fastseg.io.atomic import atomic_path, write_json_atomic

    root, reference = Path(results_root), Path(reference)
    if not models:
        raise ValueError(f"no trained models to compare in {root}")
    folders = {model_identifier(*m): root / model_identifier(*m) for m in models}
    for identifier, folder in folders.items():
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder {folder} not found; train {identifier} (all folds {list(folds)}) first")
    first = next(iter(folders.values()))
    dataset_json = json.loads((first / "dataset.json").read_text())
    plans_file = first / "plans.json"
    dataset_name = dataset_name_or_id or (json.loads(plans_file.read_text()).get("dataset_name") if plans_file.is_file() else root.name)

    selection = Selection()
    sources: dict[str, Path] = {}

    def score(identifier: str, predictions: Path) -> None:
        summary = evaluate_folders(predictions, reference, dataset_json, output=predictions / "summary.json",
                                   num_processes=num_processes, progress=progress)
        selection.results[identifier] = float(summary["foreground_mean"]["Dice"])
        sources[identifier] = predictions
        logger.info("%s: foreground mean Dice %.5f", identifier, selection.results[identifier])

    for identifier, folder in folders.items():
        score(identifier, merge_validation(folder, folds))
    ids = list(folders)
    if allow_ensembling:
        for i in range(len(ids)):
            for j in range(i + 1, len(ids)):
                name = ensemble_identifier(ids[i], ids[j], folds)
                out = root / "ensembles" / name
                _ensemble_crossvalidation([folders[ids[i]], folders[ids[j]]], out, folds, num_processes, progress)
                score(name, out)

    best_score = max(selection.results.values())
    selection.best = next(k for k, v in selection.results.items() if v == best_score)
    selection.source = sources[selection.best]
    chosen = selection.best.split("___")[1:3] if selection.best.startswith("ensemble___") else [selection.best]
    selection.models = [tuple(c.split("__")) for c in chosen]
    choice = find_postprocessing(selection.source, reference, dataset_json, num_processes=num_processes, progress=progress)
    selection.postprocessing_file = selection.source / "postprocessing.pkl"
    selection.dice_after_postprocessing = float(choice.after["foreground_mean"]["Dice"])
    some_plans = selection.source / "plans.json"
    if not some_plans.is_file():
        some_plans = plans_file

    selection.information = {
        "folds": [int(f) for f in folds],
        "dataset_name_or_id": dataset_name,
        "considered_models": [{"plans": p, "configuration": c, "trainer": t} for t, p, c in models],
        "ensembling_allowed": bool(allow_ensembling),
        "all_results": dict(selection.results),
        "best_model_or_ensemble": {
            "result_on_crossval_pre_pp": selection.results[selection.best],
            "result_on_crossval_post_pp": selection.dice_after_postprocessing,
            "postprocessing_file": str(selection.postprocessing_file),
            "some_plans_file": str(some_plans),
            "selected_model_or_models": [{"configuration": c, "trainer": t, "plans_identifier": p} for t, p, c in selection.models],
        },
    }
    selection.instructions = inference_instructions(root, selection, folds)
    write_json_atomic(selection.information, root / "inference_information.json")
    with atomic_path(root / "inference_instructions.txt") as tmp:
        tmp.write_text(selection.instructions)
    logger.debug("cross-validation folds %s", folds_name(folds))
    return selection


def inference_instructions(root: Path, selection: Selection, folds: Sequence[int]) -> str:
    """The fastseg commands that predict with the winner: predict (each member with probabilities
    for an ensemble), ensemble, and postprocessing."""
    fold_list = " ".join(str(int(f)) for f in folds)
    pp = selection.postprocessing_file
    lines = ["Predict like this:", ""]
    if len(selection.models) == 1:
        folder = root / model_identifier(*selection.models[0])
        lines.append(f"fastseg predict -m {folder} -f {fold_list} -i INPUT_FOLDER -o OUTPUT_FOLDER --postprocessing {pp}")
        return "\n".join(lines) + "\n"
    lines.append("An ensemble won. Predict with each member, keeping the probabilities:")
    outputs = []
    for k, model in enumerate(selection.models, start=1):
        outputs.append(f"OUTPUT_FOLDER_MODEL_{k}")
        lines.append(f"fastseg predict -m {root / model_identifier(*model)} -f {fold_list} -i INPUT_FOLDER "
                     f"-o {outputs[-1]} --save-probabilities")
    dataset_json = root / model_identifier(*selection.models[0]) / "dataset.json"
    lines += ["", "then ensemble them and postprocess:",
              f"fastseg ensemble -i {' '.join(outputs)} -o OUTPUT_FOLDER --dataset-json {dataset_json} --postprocessing {pp}"]
    return "\n".join(lines) + "\n"


def summary_lines(selection: Selection) -> list[str]:
    """The results as nnU-Net prints them: every candidate, then the winner."""
    lines = ["All results (cross-validation foreground mean Dice):"]
    lines += [f"  {k}: {v:.5f}" for k, v in selection.results.items()]
    lines.append(f"Best: {selection.best}: {selection.results[selection.best]:.5f} "
                 f"({selection.dice_after_postprocessing:.5f} after postprocessing)")
    return lines

