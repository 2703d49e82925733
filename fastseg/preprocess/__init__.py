"""Preprocessing: transpose -> crop to nonzero -> normalize -> resample, parallel over cases.

- `fastseg.preprocess.caseplan`, `fastseg.preprocess.case`: one configuration's settings (`CasePlan`)
  and one case in memory (`preprocess_case`); `fastseg.preprocess.worker`: one case file to files.
- `fastseg.preprocess.locations`: nnU-Net's class-location rule (cropping is `fastseg.ops.crop`,
  shared with the fingerprint).
- `fastseg.preprocess.storage`: the on-disk case (.npy, _seg.npy, .json), atomic writes, loading.
- `fastseg.preprocess.memory`: the memory estimate the worker pool (`fastseg.runtime.workers`) budgets with.
- `fastseg.preprocess.runner`: `preprocess_dataset`, what `fastseg preprocess` runs.

Names are imported lazily, so `import fastseg.preprocess` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CasePlan": "fastseg.preprocess.caseplan",
    "preprocess_case": "fastseg.preprocess.case",
    "preprocess_case_multi": "fastseg.preprocess.case",
    "crop_to_nonzero": "fastseg.ops.crop",
    "sample_class_locations": "fastseg.preprocess.locations",
    "classes_to_sample": "fastseg.preprocess.locations",
    "load_case": "fastseg.preprocess.storage",
    "load_properties": "fastseg.preprocess.storage",
    "save_case": "fastseg.preprocess.storage",
    "case_identifiers": "fastseg.preprocess.storage",
    "PreprocessOptions": "fastseg.preprocess.runner",
    "preprocess_dataset": "fastseg.preprocess.runner",
}

__all__ = [
    "CasePlan",
    "PreprocessOptions",
    "case_identifiers",
    "classes_to_sample",
    "crop_to_nonzero",
    "load_case",
    "load_properties",
    "preprocess_case",
    "preprocess_case_multi",
    "preprocess_dataset",
    "sample_class_locations",
    "save_case",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fastseg.preprocess' has no attribute {name!r}")
