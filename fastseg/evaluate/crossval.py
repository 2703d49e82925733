"""Cross-validation results of a trained model folder, gathered into one folder (nnU-Net's
`accumulate_cv_results`).

A model folder (`<trainer>__<plans>__<configuration>/`, nnU-Net's or fastseg's) holds each fold's
validation predictions in `fold_k/validation/`. `merge_validation` puts them side by side in
`crossval_results_folds_<k_l_...>/` with the model's dataset.json and plans.json, as nnU-Net names
it, so the folder can be scored, postprocessed and ensembled like any prediction folder. Files are
hard-linked where the file system allows (copied otherwise); the folder is built beside its place
and renamed into it, so an interrupted merge never leaves half a folder.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

_FOLD = re.compile(r"^fold_(\d+)$")


def folds_name(folds: Sequence[int]) -> str:
    """nnU-Net's folder tail for a set of folds: (0, 1, 2) -> "0_1_2"."""
    return "_".join(str(int(f)) for f in folds)


def validated_folds(model_folder: str | Path) -> list[int]:
    """The folds of a model folder that have validation predictions (`fold_k/validation/`), sorted."""
    model_folder = Path(model_folder)
    found = []
    for p in model_folder.iterdir() if model_folder.is_dir() else ():
        m = _FOLD.match(p.name)
        if m and (p / "validation").is_dir():
            found.append(int(m[1]))
    return sorted(found)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def merge_validation(
    model_folder: str | Path,
    folds: Sequence[int] | None = None,
    output: str | Path | None = None,
    *,
    file_ending: str | None = None,
) -> Path:
    """Gathers the folds' validation predictions of a model folder into one folder.

    Args:
        model_folder: the trained model folder (with dataset.json, plans.json, fold_k/validation/).
        folds: which folds (default: every fold with a validation folder).
        output: the merged folder (default: `model_folder/crossval_results_folds_<folds>`); an existing
            one is replaced.
        file_ending: the segmentations' ending (default: dataset.json's `file_ending`).

    Returns:
        The merged folder.

    Raises:
        FileNotFoundError: the model folder, its dataset.json, or a fold's validation folder is missing.
        ValueError: no folds, or a case predicted by more than one fold.
    """
    import json

    from fastseg.runtime.locking import owner_token

    model_folder = Path(model_folder)
    dataset_json = model_folder / "dataset.json"
    if not dataset_json.is_file():
        raise FileNotFoundError(f"{model_folder} has no dataset.json; is it a trained model folder?")
    if folds is None:
        folds = validated_folds(model_folder)
        if not folds:
            raise ValueError(f"{model_folder} has no fold_k/validation folders; train (and validate) the folds first")
    folds = [int(f) for f in folds]
    ending = file_ending or json.loads(dataset_json.read_text()).get("file_ending", ".nii.gz")
    output = Path(output) if output is not None else model_folder / f"crossval_results_folds_{folds_name(folds)}"

    sources: dict[str, Path] = {}
    for fold in folds:
        folder = model_folder / f"fold_{fold}" / "validation"
        if not folder.is_dir():
            raise FileNotFoundError(f"fold {fold} of {model_folder} has no validation predictions ({folder}); train fold {fold}")
        for p in sorted(folder.iterdir()):
            if not p.is_file() or p.name.startswith(".") or not p.name.endswith(ending):
                continue
            if p.name in sources:
                raise ValueError(f"case {p.name} is predicted by more than one fold: {sources[p.name]} and {p}")
            sources[p.name] = p

    staging = output.with_name(f".staging-{owner_token()}-{output.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for name in ("dataset.json", "plans.json"):
            if (model_folder / name).is_file():
                shutil.copy2(model_folder / name, staging / name)
        for name, source in sources.items():
            _link_or_copy(source, staging / name)
        if output.exists():
            shutil.rmtree(output)
        os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output
