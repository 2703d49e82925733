"""Postprocessing decided on cross-validation: keep only the largest component of labels or regions.

Two file forms describe the same steps:
- nnU-Net's `postprocessing.pkl`: a pickled `(functions, kwargs)` pair of lists, each function
  nnU-Net's `remove_all_but_largest_component_from_segmentation` and each kwargs dict its
  `labels_or_regions` (and `background_label`). It is read without importing nnU-Net: the function
  reference is only checked by name.
- fastseg's JSON twin: `{"steps": [{"remove_all_but_largest_component": {"labels_or_regions": ...,
  "background_label": 0}}]}` (regions as lists).

Steps run in order with the native `fastseg.ops.remove_all_but_largest_component`.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_FUNCTION = "remove_all_but_largest_component_from_segmentation"
_STEP = "remove_all_but_largest_component"


class _FunctionName:
    """Stands in for a pickled function reference; keeps its name."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("nnunetv2") or name == _FUNCTION:
            return _FunctionName(module, name)
        if (module, name) in {("builtins", "tuple"), ("builtins", "list"), ("builtins", "dict"), ("builtins", "int")}:
            return super().find_class(module, name)
        if module.startswith("numpy"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")


def _as_labels(value: Any) -> int | tuple | list:
    if isinstance(value, (list, tuple)) and value and any(isinstance(v, (list, tuple)) for v in value):
        return [tuple(int(x) for x in v) if isinstance(v, (list, tuple)) else int(v) for v in value]
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return int(value)


def load_postprocessing(path: str | Path) -> list[dict]:
    """The steps of a `postprocessing.pkl` (nnU-Net) or `.json` (fastseg) file.

    Returns:
        A list of {"labels_or_regions": int | tuple | list, "background_label": int}.

    Raises:
        ValueError: a file that is neither form, or a step other than remove-all-but-largest.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"postprocessing file {path} not found")
    if path.suffix == ".json":
        try:
            content = json.loads(path.read_text())
            raw = [s[_STEP] for s in content["steps"]]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a fastseg postprocessing file ({type(err).__name__}: {err})") from None
    else:
        try:
            with open(path, "rb") as f:
                fns, kwargs = _Unpickler(f).load()
        except (pickle.UnpicklingError, ValueError, TypeError, EOFError) as err:
            raise ValueError(f"{path}: not an nnU-Net postprocessing.pkl ({err})") from None
        for fn in fns:
            if getattr(fn, "name", None) != _FUNCTION:
                raise ValueError(f"{path}: unsupported postprocessing step {getattr(fn, 'name', fn)!r} (only {_FUNCTION})")
        raw = list(kwargs)
    return [
        {"labels_or_regions": _as_labels(k["labels_or_regions"]), "background_label": int(k.get("background_label", 0))}
        for k in raw
    ]


def steps_as_json(steps: Sequence[dict]) -> dict:
    """The JSON form of `steps`: {"steps": [...]} (regions as lists)."""

    def plain(v):
        return [plain(x) for x in v] if isinstance(v, (list, tuple)) else int(v)

    return {"steps": [{_STEP: {"labels_or_regions": plain(s["labels_or_regions"]), "background_label": int(s["background_label"])}}
                      for s in steps]}


def save_postprocessing_json(steps: Sequence[dict], path: str | Path) -> None:
    """Writes the JSON form of `steps`, atomically."""
    from fastseg.io.atomic import write_json_atomic

    write_json_atomic(steps_as_json(steps), path)


def apply_postprocessing(seg: np.ndarray, steps: Sequence[dict]) -> np.ndarray:
    """`seg` with every step applied in order (a new array when any step runs)."""
    from fastseg.ops import remove_all_but_largest_component

    for step in steps:
        seg = remove_all_but_largest_component(seg, step["labels_or_regions"], step["background_label"])
    return seg
