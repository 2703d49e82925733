"""Dataset fingerprint and experiment planning, nnU-Net v2 compatible.

- `fastseg.plan.fingerprint`: per-case crop, shapes, spacings, foreground intensity statistics.
- `fastseg.plan.planner`: fingerprint + dataset.json + options -> plans (nnU-Net's planners' rules).
- `fastseg.plan.topology`, `fastseg.plan.vram`: the U-Net topology and memory-proxy rules.
- `fastseg.plan.plans`: reading plans (inheritance, summaries).
- `fastseg.plan.workdir`: the work folder's file names.

`fastseg.workflow` (what `fastseg plan` runs: verify -> fingerprint -> plan) sits above this package
and `fastseg.preprocess`; this package imports neither. Names are imported lazily, so
`import fastseg.plan` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PlannerOptions": "fastseg.plan.planner",
    "PLANNERS": "fastseg.plan.presets",
    "plan_experiment": "fastseg.plan.planner",
    "extract_fingerprint": "fastseg.plan.fingerprint",
    "save_fingerprint": "fastseg.plan.fingerprint",
    "load_fingerprint": "fastseg.plan.fingerprint",
    "load_plans": "fastseg.plan.plans",
    "resolve_configuration": "fastseg.plan.plans",
    "format_summary": "fastseg.plan.plans",
}

__all__ = [
    "PLANNERS",
    "PlannerOptions",
    "extract_fingerprint",
    "format_summary",
    "load_fingerprint",
    "load_plans",
    "plan_experiment",
    "resolve_configuration",
    "save_fingerprint",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fastseg.plan' has no attribute {name!r}")
