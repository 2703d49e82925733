"""A trained model folder, nnU-Net v2's layout, and the networks built from it.

    <model>/plans.json                 the plans the model was trained with
    <model>/dataset.json               channels, labels (regions), file ending
    <model>/fold_<k>/checkpoint_final.pth, checkpoint_best.pth

The network is built from the plans' `architecture` entry (`network_class_name` with `arch_kwargs`,
classes from dynamic-network-architectures), never by importing the trainer class the checkpoint
names, so checkpoints written by any trainer subclass load. The checkpoint supplies the weights
(`network_weights`), the configuration (`init_args.configuration`) and the mirroring axes test-time
augmentation may use (`inference_allowed_mirroring_axes`).
"""

from __future__ import annotations

import copy
import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastseg.io.labels import LabelSpec
from fastseg.plan.plans import resolve_configuration

CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}


class ModelFolderError(ValueError):
    """A model folder, or a checkpoint in it, that cannot be used; the message names the file."""


@dataclass
class ModelFolder:
    """What prediction needs from a trained model folder.

    Attributes:
        path: the folder (None for a model built in memory).
        plans: plans.json.
        dataset_json: dataset.json.
        configuration: the configuration the checkpoints were trained for ("3d_fullres", "2d", ...).
        trainer_name: the trainer class the checkpoints name (informative only).
        checkpoints: the checkpoint file per fold, in the order asked for.
        weights: each checkpoint's `network_weights` (same order).
        mirror_axes: spatial axes (0-based) test-time mirroring may flip, from the checkpoint.
    """

    path: Path | None
    plans: dict
    dataset_json: dict
    configuration: str
    trainer_name: str
    checkpoints: list[Path]
    weights: list[dict]
    mirror_axes: tuple[int, ...]

    @property
    def config(self) -> dict:
        """The configuration's entry of the plans, inheritance resolved."""
        return resolve_configuration(self.plans, self.configuration)

    @property
    def labels(self) -> LabelSpec:
        return LabelSpec.from_json(self.dataset_json["labels"], self.dataset_json.get("regions_class_order"))

    @property
    def num_input_channels(self) -> int:
        names = self.dataset_json.get("channel_names", self.dataset_json.get("modality", {}))
        return len(names)

    @property
    def num_outputs(self) -> int:
        """Output channels: one per region for region-based models, else one per label."""
        spec = self.labels
        return len(spec.regions) if spec.has_regions else len(spec.all_labels)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelFolderError(f"{path} not found; a model folder holds plans.json, dataset.json and fold_<k>/ folders")
    try:
        content = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(content, dict):
        raise ModelFolderError(f"{path} must hold a JSON object, found {type(content).__name__}")
    return content


def available_folds(path: str | Path, checkpoint: str = "final") -> list[str]:
    """The folds of a model folder that have the checkpoint, as "0".."4" / "all", sorted."""
    name = CHECKPOINTS.get(checkpoint, checkpoint)
    folds = [p.name[len("fold_"):] for p in Path(path).glob("fold_*") if (p / name).is_file()]
    return sorted(folds, key=lambda f: (f == "all", int(f) if f.isdigit() else 0))


def _checkpoint_file(path: Path, fold: str, checkpoint: str) -> Path:
    if checkpoint not in CHECKPOINTS:
        file = Path(checkpoint)
        if not file.is_file():
            raise ModelFolderError(f"checkpoint {file} not found (--checkpoint is final, best or a file)")
        return file
    folder = path / f"fold_{fold}"
    file = folder / CHECKPOINTS[checkpoint]
    if not folder.is_dir():
        have = available_folds(path, checkpoint)
        raise ModelFolderError(
            f"{folder} not found: the model folder {path} has no fold {fold} "
            f"(folds with {CHECKPOINTS[checkpoint]}: {', '.join(have) or 'none'})"
        )
    if not file.is_file():
        raise ModelFolderError(f"{file} not found (fold {fold} has no {checkpoint} checkpoint; try --checkpoint final)")
    return file


def _load_checkpoint(file: Path) -> dict:
    import torch

    try:
        content = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 -- torch raises many kinds for a damaged file
        raise ModelFolderError(f"{file} cannot be read as a checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(content, dict) or "network_weights" not in content:
        keys = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise ModelFolderError(f"{file} is not an nnU-Net/fastseg checkpoint: no 'network_weights' (found {keys})")
    return content


def load_model_folder(
    path: str | Path, folds: Sequence[int | str] | None = (0,), checkpoint: str = "final", configuration: str | None = None
) -> ModelFolder:
    """Reads a model folder and the checkpoints of the given folds.

    Args:
        path: the model folder (`<trainer>__<plans>__<configuration>/`).
        folds: fold numbers or "all"; None takes every fold that has the checkpoint.
        checkpoint: "final", "best", or the path of one checkpoint file (then `folds` is ignored).
        configuration: the configuration, when a checkpoint does not name it.

    Raises:
        ModelFolderError: a missing file or fold, a damaged checkpoint, folds trained for different
            configurations, or plans and dataset.json that do not fit together.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(f"model folder {path} not found")
    plans = _read_json(path / "plans.json")
    dataset_json = _read_json(path / "dataset.json")
    if checkpoint not in CHECKPOINTS:
        files = [_checkpoint_file(path, "", checkpoint)]
    else:
        fold_names = [str(f) for f in folds] if folds is not None else available_folds(path, checkpoint)
        if not fold_names:
            raise ModelFolderError(f"{path} has no fold_<k>/{CHECKPOINTS[checkpoint]}")
        files = [_checkpoint_file(path, f, checkpoint) for f in fold_names]
    contents = [_load_checkpoint(f) for f in files]
    configs = {c.get("init_args", {}).get("configuration") for c in contents} - {None}
    if len(configs) > 1:
        raise ModelFolderError(f"the checkpoints {[str(f) for f in files]} were trained for different configurations {sorted(configs)}")
    name = configuration or (configs.pop() if configs else None)
    if name is None:
        raise ModelFolderError(f"{files[0]} does not name its configuration (init_args.configuration); pass it explicitly")
    if name not in plans.get("configurations", {}):
        raise ModelFolderError(
            f"{files[0]} was trained for configuration {name!r}, which {path / 'plans.json'} does not have "
            f"(it has {sorted(plans.get('configurations', {}))})"
        )
    mirror = contents[0].get("inference_allowed_mirroring_axes")
    folder = ModelFolder(
        path=path,
        plans=plans,
        dataset_json=dataset_json,
        configuration=name,
        trainer_name=str(contents[0].get("trainer_name", "unknown")),
        checkpoints=files,
        weights=[c["network_weights"] for c in contents],
        mirror_axes=tuple(int(a) for a in mirror) if mirror is not None else (),
    )
    spec = folder.labels
    if spec.problems:
        raise ModelFolderError(f"{path / 'dataset.json'}: {'; '.join(spec.problems)}")
    return folder


def _locate(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        return None


def _network_class(name: str) -> Any:
    cls = _locate(name)
    if cls is None:  # classes that moved within dynamic-network-architectures: find by name
        import dynamic_network_architectures.architectures as archs
        import pkgutil

        short = name.rpartition(".")[2]
        for info in pkgutil.walk_packages(archs.__path__, archs.__name__ + "."):
            cls = getattr(importlib.import_module(info.name), short, None)
            if cls is not None:
                break
    if cls is None:
        raise ModelFolderError(f"network class {name!r} of the plans is not installed (is dynamic-network-architectures?)")
    return cls


def _plans_source(model: ModelFolder) -> str:
    """Where the model's plans came from, for messages (a model built in memory has no folder)."""
    return str(model.path / "plans.json") if model.path is not None else "the plans"


def build_network(model: ModelFolder, deep_supervision: bool = False) -> Any:
    """The configuration's network (untrained), built from the plans' `architecture` entry."""
    arch = model.config.get("architecture")
    if not arch:
        raise ModelFolderError(
            f"{_plans_source(model)}: configuration {model.configuration!r} has no 'architecture' entry "
            "(plans from nnU-Net v2.4 or later have one)"
        )
    return network_from_architecture(arch, model.num_input_channels, model.num_outputs, deep_supervision,
                                     source=_plans_source(model))


def network_from_architecture(
    arch: Mapping[str, Any], num_input_channels: int, num_outputs: int, deep_supervision: bool, *, source: str = "the plans"
) -> Any:
    """The network a plans' `architecture` entry names (`network_class_name`, `arch_kwargs`, the
    `_kw_requires_import` classes resolved), untrained and uninitialised. `source` names the plans
    in errors."""
    kwargs = copy.deepcopy(dict(arch["arch_kwargs"]))
    for key in arch.get("_kw_requires_import", ()):
        if kwargs.get(key) is not None:
            located = _locate(kwargs[key])
            if located is None:
                raise ModelFolderError(f"{source}: the architecture names {kwargs[key]!r} ({key}), which cannot be imported")
            kwargs[key] = located
    kwargs["deep_supervision"] = bool(deep_supervision)
    cls = _network_class(arch["network_class_name"])
    return cls(input_channels=int(num_input_channels), num_classes=int(num_outputs), **kwargs)


def _strip_prefixes(weights: Mapping[str, Any]) -> dict:
    """State dict keys without the `module.` (DDP) and `_orig_mod.` (torch.compile) prefixes."""
    out = {}
    for key, value in weights.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_networks(model: ModelFolder, device: Any = "cpu") -> list[Any]:
    """One network per fold, weights loaded, in eval mode, on `device`.

    Raises:
        ModelFolderError: a checkpoint whose weights do not fit the network the plans describe.
    """
    networks = []
    for file, weights in zip(model.checkpoints, model.weights):
        net = build_network(model)
        try:
            net.load_state_dict(_strip_prefixes(weights))
        except RuntimeError as err:
            first = str(err).strip().splitlines()
            raise ModelFolderError(
                f"{file}: the weights do not fit the network that {_plans_source(model)} describes for "
                f"{model.configuration!r} ({model.num_input_channels} input channels, {model.num_outputs} outputs): "
                f"{' '.join(first[:3])}"
            ) from None
        networks.append(net.to(device).eval())
    return networks
