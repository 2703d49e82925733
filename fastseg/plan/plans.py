"""Reading nnU-Net-format plans: configuration inheritance, the list of configurations that own
preprocessed data, and a one-line-per-configuration summary."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from typing import Any


def load_plans(path: str | os.PathLike) -> dict:
    with open(path) as f:
        return json.load(f)


def resolve_configuration(plans: Mapping[str, Any], name: str) -> dict:
    """A configuration with `inherits_from` resolved (the child's keys win), as nnU-Net's
    PlansManager resolves it.

    Raises:
        ValueError: unknown configuration or circular inheritance.
    """
    configurations = plans.get("configurations", {})
    chain: list[str] = []
    current = name
    while True:
        if current not in configurations:
            raise ValueError(f"configuration {current!r} is not in the plans; available: {sorted(configurations)}")
        if current in chain:
            raise ValueError(f"circular configuration inheritance: {' -> '.join(chain + [current])}")
        chain.append(current)
        parent = configurations[current].get("inherits_from")
        if parent is None:
            break
        current = parent
    resolved: dict = {}
    for link in reversed(chain):
        resolved.update(copy.deepcopy(configurations[link]))
    return resolved


def data_configurations(plans: Mapping[str, Any], requested: list[str] | None = None) -> list[str]:
    """The configurations to preprocess, one per distinct data folder.

    Args:
        plans: the plans.
        requested: configuration names; None means nnU-Net's default set (2d, 3d_fullres,
            3d_lowres, those present).

    Raises:
        ValueError: a requested configuration is not in the plans.
    """
    available = list(plans.get("configurations", {}))
    if requested is None:
        requested = [c for c in ("2d", "3d_fullres", "3d_lowres") if c in available]
    out: list[str] = []
    seen: set[str] = set()
    for name in requested:
        ident = resolve_configuration(plans, name)["data_identifier"]
        if ident not in seen:
            seen.add(ident)
            out.append(name)
    return out


def summarize(plans: Mapping[str, Any]) -> list[dict]:
    """Per configuration: name, spacing, patch size, batch size, network stages, data folder."""
    rows = []
    for name in plans.get("configurations", {}):
        cfg = resolve_configuration(plans, name)
        arch = cfg.get("architecture", {}).get("arch_kwargs", {})
        rows.append(
            {
                "configuration": name,
                "spacing": [round(float(s), 4) for s in cfg.get("spacing", [])],
                "patch_size": list(cfg.get("patch_size", [])),
                "batch_size": cfg.get("batch_size"),
                "stages": arch.get("n_stages"),
                "data_identifier": cfg.get("data_identifier"),
            }
        )
    return rows


def format_summary(plans: Mapping[str, Any]) -> str:
    """The summary as an aligned text table."""
    rows = summarize(plans)
    header = ("configuration", "spacing", "patch", "batch", "stages")
    cells = [
        (r["configuration"], "x".join(f"{s:g}" for s in r["spacing"]), "x".join(str(p) for p in r["patch_size"]), str(r["batch_size"]), str(r["stages"]))
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
