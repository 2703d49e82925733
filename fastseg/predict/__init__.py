"""Prediction with trained nnU-Net v2 or fastseg model folders.

- `fastseg.predict.model`: the model folder, checkpoints, networks built from the plans.
- `fastseg.predict.inputs`: which input files make which case.
- `fastseg.predict.sliding`: sliding window with batched tiles, mirror TTA, fp32 accumulation.
- `fastseg.predict.export`: logits -> labels (probabilities) on the input's grid.
- `fastseg.predict.predictor`: `Predictor`, the stages joined into a pipeline over cases.

Names are imported lazily, so `import fastseg.predict` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Predictor": "fastseg.predict.predictor",
    "PredictionReport": "fastseg.predict.predictor",
    "ModelFolder": "fastseg.predict.model",
    "ModelFolderError": "fastseg.predict.model",
    "load_model_folder": "fastseg.predict.model",
    "find_cases": "fastseg.predict.inputs",
    "ensemble_folders": "fastseg.predict.ensemble",
    "EnsembleReport": "fastseg.predict.ensemble",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fastseg.predict' has no attribute {name!r}")
