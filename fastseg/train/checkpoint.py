"""Training checkpoints in nnU-Net v2's format, written atomically.

A checkpoint is one `torch.save`d dict with nnU-Net's keys, so nnU-Net (and fastseg's predictor)
read fastseg's checkpoints and fastseg resumes from nnU-Net's:

    network_weights                   the network's state dict (no DDP/torch.compile prefixes)
    optimizer_state                   the optimizer's state dict
    grad_scaler_state                 the AMP grad scaler's state dict, or None
    logging                           the training log's values (nnU-Net's logger checkpoint)
    _best_ema                         the best EMA pseudo-Dice so far, or None
    current_epoch                     the epoch to resume at (= epochs completed)
    init_args                         plans, configuration, fold, dataset_json, device
    trainer_name                      the trainer's class name (the predictor reads it, informatively)
    inference_allowed_mirroring_axes  the axes test-time mirroring may flip, or None

plus fastseg's own state (sampler and RNG state, the training config) under the one key `fastseg`.
The file is written to a hidden temporary sibling and renamed over the target, so a crash mid-write
leaves the previous checkpoint intact.

Loading is weights-only (`torch.load(weights_only=True)`: tensors, containers, numbers, strings,
torch.device) with numpy scalars, dtypes and arrays allowed besides, since nnU-Net's logs hold numpy
floats; nothing in the file can run code. A checkpoint that needs anything else loads only with
`trusted=True`.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastseg.io.atomic import atomic_path
from fastseg.predict.model import _strip_prefixes

#: nnU-Net's checkpoint keys, in the order its trainer writes them.
NNUNET_KEYS = (
    "network_weights",
    "optimizer_state",
    "grad_scaler_state",
    "logging",
    "_best_ema",
    "current_epoch",
    "init_args",
    "trainer_name",
    "inference_allowed_mirroring_axes",
)
#: the key of fastseg's own state.
FASTSEG_KEY = "fastseg"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or is not a training checkpoint; the message names the file."""


def _numpy_globals() -> list:
    """What numpy scalars, dtypes and arrays unpickle through, under numpy 2's and numpy 1's module names."""
    core = getattr(np, "_core", None) or np.core
    scalar, reconstruct = core.multiarray.scalar, core.multiarray._reconstruct
    allowed: list = [scalar, reconstruct, np.ndarray, np.dtype]
    allowed += [(scalar, "numpy.core.multiarray.scalar"), (reconstruct, "numpy.core.multiarray._reconstruct")]
    allowed += [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"]
    return allowed


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The network under DistributedDataParallel (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if isinstance(network, torch.nn.parallel.DistributedDataParallel):
            network = network.module
        elif hasattr(network, "_orig_mod") and isinstance(network._orig_mod, torch.nn.Module):
            network = network._orig_mod
        else:
            return network


def save_checkpoint(
    path: str | os.PathLike,
    *,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    grad_scaler: Any,
    logging: Mapping[str, Any],
    best_ema: float | None,
    current_epoch: int,
    init_args: Mapping[str, Any],
    trainer_name: str,
    mirror_axes: Sequence[int] | None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Writes a training checkpoint (the layout in the module docstring), atomically.

    Args:
        path: the checkpoint file (`fold_<k>/checkpoint_latest.pth`, ...); its folder must exist.
        network: the network; DDP and torch.compile wrappers are looked through, so the weights'
            names carry no `module.`/`_orig_mod.` prefix.
        optimizer: the optimizer.
        grad_scaler: the AMP grad scaler, or None (no mixed precision).
        logging: the training log's values (lists per quantity, as nnU-Net's logger keeps them).
        best_ema: the best EMA pseudo-Dice so far, or None.
        current_epoch: the epoch training resumes at, i.e. the number of epochs completed (nnU-Net
            writes its current epoch + 1).
        init_args: the trainer's arguments; must name the `configuration` (the predictor reads it).
        trainer_name: the trainer's name.
        mirror_axes: the spatial axes test-time mirroring may flip, or None.
        extra: fastseg's own state, stored under the key "fastseg"; None stores none.

    Returns:
        `path` as a Path.

    Raises:
        ValueError: a negative epoch, init_args without a configuration, or contents a weights-only
            load would refuse (e.g. a Path or a dataclass instance; nothing is written then).
        fastseg.io.atomic.DiskFullError: no space for the file (the previous one stays).
    """
    if int(current_epoch) < 0:
        raise ValueError(f"current_epoch must be >= 0, got {current_epoch}")
    if not init_args.get("configuration"):
        raise ValueError(f"init_args must name the configuration (the predictor reads it), got keys {sorted(init_args)}")
    checkpoint: dict[str, Any] = {
        "network_weights": _unwrap(network).state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": grad_scaler.state_dict() if grad_scaler is not None else None,
        "logging": dict(logging),
        "_best_ema": best_ema,
        "current_epoch": int(current_epoch),
        "init_args": dict(init_args),
        "trainer_name": str(trainer_name),
        "inference_allowed_mirroring_axes": None if mirror_axes is None else tuple(int(a) for a in mirror_axes),
    }
    if extra is not None:
        checkpoint[FASTSEG_KEY] = dict(extra)
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
        unsafe = _unsafe_globals(tmp)
        if unsafe:  # refuse now rather than write a checkpoint that `load_checkpoint` refuses later
            raise ValueError(
                f"cannot write {path}: the checkpoint holds objects a weights-only load refuses ({', '.join(unsafe[:5])}); "
                "store plain values (str for paths, lists, dicts, numbers) in logging, init_args and extra"
            )
    return Path(path)


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu", trusted: bool = False) -> dict[str, Any]:
    """Reads a training checkpoint (nnU-Net's or fastseg's).

    Args:
        path: the checkpoint file.
        map_location: where tensors go (`torch.load`'s map_location); default "cpu".
        trusted: load with full unpickling (`weights_only=False`) -- only for files from a trusted
            source, when the checkpoint holds objects beyond tensors, numbers, strings and numpy values.

    Returns:
        The checkpoint dict; it has at least `network_weights`.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: a truncated or corrupt file, one that is not a training checkpoint, or one
            that needs `trusted=True`; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        if trusted:
            content = torch.load(path, map_location=map_location, weights_only=False)
        else:
            with torch.serialization.safe_globals(_numpy_globals()):
                content = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(path)
        if not unsafe:  # a damaged pickle, not a forbidden object
            detail = str(err).split("WeightsUnpickler error:")[-1].strip().splitlines()
            raise CheckpointError(
                f"{path} is truncated or corrupt and cannot be read as a checkpoint (unpickling failed: "
                f"{detail[0] if detail else type(err).__name__}); resume from another checkpoint or train again"
            ) from None
        raise CheckpointError(
            f"{path} holds objects a weights-only load refuses ({', '.join(unsafe[:5])}); if you trust the file's "
            "source, load it with trusted=True"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        text = str(err).strip()
        detail = f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
        raise CheckpointError(
            f"{path} is truncated or corrupt and cannot be read as a checkpoint ({detail}); "
            "resume from another checkpoint or train again"
        ) from None
    if not isinstance(content, dict) or "network_weights" not in content:
        found = sorted(map(str, content)) if isinstance(content, dict) else type(content).__name__
        raise CheckpointError(f"{path} is not an nnU-Net/fastseg training checkpoint: no 'network_weights' (found {found})")
    return content


def _unsafe_globals(path: Path) -> list[str]:
    """The globals of a checkpoint that a weights-only load (with numpy allowed) refuses; [] when it
    cannot tell (a damaged file)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 -- a damaged file raises whatever its reader meets
        return []
    allowed = {f"{getattr(g, '__module__', '')}.{getattr(g, '__qualname__', '')}" if not isinstance(g, tuple) else g[1]
               for g in _numpy_globals()}
    return [n for n in names if n not in allowed]


def network_state(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's network weights, keys without `module.` (DDP) and `_orig_mod.` (torch.compile)
    prefixes, ready for `network.load_state_dict`.

    Raises:
        CheckpointError: the checkpoint has no `network_weights`.
    """
    weights = checkpoint.get("network_weights")
    if not isinstance(weights, Mapping):
        raise CheckpointError(f"the checkpoint has no 'network_weights' state dict (keys {sorted(map(str, checkpoint))})")
    return _strip_prefixes(weights)
