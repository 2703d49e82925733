"""nnU-Net's dataset ids and names: where `-d 4` (or `-d Dataset004_Hippocampus`) points.

nnU-Net keeps each dataset under one folder name, `DatasetXXX_Name` (XXX: the id, three digits), in
three roots named by environment variables:

    $nnUNet_raw/DatasetXXX_Name/            the raw dataset (dataset.json, imagesTr, labelsTr)
    $nnUNet_preprocessed/DatasetXXX_Name/   plans, fingerprint, preprocessed cases
    $nnUNet_results/DatasetXXX_Name/        trained models, <trainer>__<plans>__<configuration>/

fastseg maps its own folders onto these: the raw dataset is the first, the work folder of `fastseg
plan` / `preprocess` / `train` is the second (plans.json beside nnU-Net's <plans_name>.json, the
preprocessed cases in the same `<data_identifier>/` folders nnU-Net uses), and `fastseg train` puts
its model folders into the third, where `nnUNetv2_predict -d` and `fastseg predict -d` find them.

An id is turned into the folder name as nnU-Net does it: every `DatasetXXX_*` folder in any of the
three roots counts, and they must all carry the same name (a dataset renamed in one root but not in
the others is an error that lists them). A name given in full is used as it is, so a dataset that
exists nowhere yet (the preprocessed folder before `fastseg plan`) can still be named.

Nothing here reads the process environment: the command line passes `os.environ` (or any mapping)
down, as everywhere in fastseg.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

RAW = "nnUNet_raw"
PREPROCESSED = "nnUNet_preprocessed"
RESULTS = "nnUNet_results"
ROOTS = (RAW, PREPROCESSED, RESULTS)

#: nnU-Net's default trainer and plans identifier (the `-tr` and `-p` of its commands).
DEFAULT_TRAINER = "nnUNetTrainer"
DEFAULT_PLANS = "nnUNetPlans"

_NAME = re.compile(r"^Dataset(\d{3})_(.+)$")


class DatasetIdError(ValueError):
    """A dataset id or name that cannot be resolved: the message says which variable, folder or id,
    and what to do."""


def parse_dataset(text: str | int) -> int | str:
    """The id (int) or the full folder name (str) that `-d` was given.

    Args:
        text: "4", "004", 4 or "Dataset004_Hippocampus".

    Raises:
        DatasetIdError: neither an id in 0..999 nor a name of the form DatasetXXX_Name.
    """
    if isinstance(text, int):
        value = text
    else:
        text = str(text).strip()
        if text.startswith("Dataset"):
            if not _NAME.match(text):
                raise DatasetIdError(
                    f"dataset name {text!r} is not of nnU-Net's form DatasetXXX_Name (XXX: three digits, "
                    "e.g. Dataset004_Hippocampus)"
                )
            return text
        try:
            value = int(text)
        except ValueError:
            raise DatasetIdError(
                f"-d expects an nnU-Net dataset id (e.g. 4) or name (e.g. Dataset004_Hippocampus), got {text!r}"
            ) from None
    if not 0 <= value <= 999:
        raise DatasetIdError(f"an nnU-Net dataset id has three digits (0-999), got {value}")
    return value


def dataset_id(name: str) -> int:
    """The id of a DatasetXXX_Name folder name.

    Raises:
        DatasetIdError: `name` is not of that form.
    """
    m = _NAME.match(name)
    if not m:
        raise DatasetIdError(f"{name!r} is not an nnU-Net dataset name (DatasetXXX_Name)")
    return int(m[1])


def _root(env: Mapping[str, str], variable: str) -> Path | None:
    value = env.get(variable)
    return Path(value) if value else None


def _unset(variables: tuple[str, ...], dataset: str | None = None) -> str:
    if len(variables) > 1:
        what = "none of " + ", ".join(f"${v}" for v in variables) + " is set: an nnU-Net dataset id needs nnU-Net's folders"
    else:
        where = f" (the dataset's folder is ${variables[0]}/{dataset})" if dataset else ""
        what = f"${variables[0]} is not set: -d needs it here{where}"
    exports = " ".join(f"{v}=/path/to/{v}" for v in variables)
    return f"{what}; set {'them' if len(variables) > 1 else 'it'} (export {exports}) or give the folder itself instead of -d"


def dataset_name(dataset: str | int, env: Mapping[str, str]) -> str:
    """The DatasetXXX_Name folder name of a dataset id or name.

    Args:
        dataset: what `-d` was given (an id, "004", or a full name, which is returned as it is).
        env: the environment; `nnUNet_raw`, `nnUNet_preprocessed`, `nnUNet_results` are searched.

    Raises:
        DatasetIdError: none of the three variables is set, no root holds a DatasetXXX_ folder with
            that id, or the roots hold folders of different names with that id.
    """
    parsed = parse_dataset(dataset)
    if isinstance(parsed, str):
        return parsed
    roots = [(v, _root(env, v)) for v in ROOTS]
    if all(r is None for _, r in roots):
        raise DatasetIdError(_unset(ROOTS))
    prefix = f"Dataset{parsed:03d}_"
    found: dict[str, list[str]] = {}
    for variable, root in roots:
        if root is None or not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if child.name.startswith(prefix) and child.is_dir():
                found.setdefault(child.name, []).append(f"${variable} ({root})")
    if not found:
        searched = ", ".join(f"${v}={r}" for v, r in roots if r is not None)
        raise DatasetIdError(
            f"no dataset with id {parsed}: none of {searched} holds a folder {prefix}*; check the id, or create the "
            f"raw dataset as ${RAW}/{prefix}<Name> first"
        )
    if len(found) > 1:
        listing = "; ".join(f"{name} in {', '.join(where)}" for name, where in found.items())
        raise DatasetIdError(
            f"dataset id {parsed} names more than one dataset: {listing}; rename or remove all but one, or give the "
            "full name with -d"
        )
    return next(iter(found))


@dataclass(frozen=True)
class NnunetDataset:
    """One dataset's folders under nnU-Net's roots (None where the root's variable is unset).

    Attributes:
        name: the DatasetXXX_Name folder name.
        raw: `$nnUNet_raw/<name>`.
        preprocessed: `$nnUNet_preprocessed/<name>` (fastseg's work folder).
        results: `$nnUNet_results/<name>` (the model folders).
    """

    name: str
    raw: Path | None
    preprocessed: Path | None
    results: Path | None

    @property
    def id(self) -> int:
        return dataset_id(self.name)

    def require(self, variable: str) -> Path:
        """The folder under root `variable` (one of RAW, PREPROCESSED, RESULTS).

        Raises:
            DatasetIdError: the variable is not set.
        """
        folder = {RAW: self.raw, PREPROCESSED: self.preprocessed, RESULTS: self.results}[variable]
        if folder is None:
            raise DatasetIdError(_unset((variable,), self.name))
        return folder

    def model_folder(self, configuration: str, trainer: str = DEFAULT_TRAINER, plans: str = DEFAULT_PLANS) -> Path:
        """`$nnUNet_results/<name>/<trainer>__<plans>__<configuration>`, where nnU-Net and fastseg train
        into and predict from.

        Raises:
            DatasetIdError: nnUNet_results is not set.
        """
        return self.require(RESULTS) / f"{trainer}__{plans}__{configuration}"


def resolve_dataset(dataset: str | int, env: Mapping[str, str]) -> NnunetDataset:
    """The folders of a dataset id or name (`dataset_name`, then each root joined with it).

    Raises:
        DatasetIdError: as in `dataset_name`.
    """
    name = dataset_name(dataset, env)
    raw, pre, res = (_root(env, v) for v in ROOTS)
    return NnunetDataset(
        name=name,
        raw=raw / name if raw else None,
        preprocessed=pre / name if pre else None,
        results=res / name if res else None,
    )
