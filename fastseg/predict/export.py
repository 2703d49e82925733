"""From accumulated logits to the label map on the input's grid (nnU-Net's export, fused).

    logits at the configuration's spacing (accumulator / weights)
    -> resampled to the cropped shape and labelled in one pass (`fastseg.ops.export_segmentation`:
       per-class linear interpolation with nnU-Net's separate-z rule, then argmax, or sigmoid and
       `regions_class_order` for region-based models)
    -> put back into the uncropped image (background outside the crop)
    -> axes transposed back (plans' `transpose_backward`)

With probabilities requested, the softmax (sigmoid) of the resampled logits comes back too, put
into the uncropped image the way nnU-Net does (background probability 1 outside the crop for
softmax models, 0 for region-based ones), as (C, *image shape).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fastseg.ops import export_segmentation
from fastseg.predict.model import ModelFolder

_RESAMPLING_KEYS = ("order", "order_z", "force_separate_z", "separate_z_anisotropy_threshold")


def _host(x: Any) -> Any:
    """A numpy array of `x` (a numpy array, or a torch tensor on any device); None stays None."""
    if x is None or isinstance(x, np.ndarray):
        return x
    return x.detach().cpu().numpy()


def export_case(
    accumulator: np.ndarray,
    weights: np.ndarray,
    properties: Mapping[str, Any],
    model: ModelFolder,
    return_probabilities: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Labels (and optionally probabilities) of one case on its original grid.

    Args:
        accumulator, weights: from `fastseg.predict.sliding.predict_logits` (numpy arrays, or torch
            tensors on the device that predicted them: the export then runs there too).
        properties: the case's preprocessing properties (spacing, shape_before_cropping,
            bbox_used_for_cropping, shape_after_cropping_and_before_resampling).
        model: the model folder (plans, configuration, labels).
        return_probabilities: also return float32 probabilities (C, *image shape).
    """
    plans, cfg, spec = model.plans, model.config, model.labels
    forward = [int(a) for a in plans["transpose_forward"]]
    backward = [int(a) for a in plans["transpose_backward"]]
    spacing_t = [float(properties["spacing"][a]) for a in forward]
    shape_after = [int(s) for s in properties["shape_after_cropping_and_before_resampling"]]
    current = list(cfg["spacing"]) if len(cfg["spacing"]) == len(shape_after) else [spacing_t[0], *cfg["spacing"]]
    kwargs = {k: v for k, v in cfg.get("resampling_fn_probabilities_kwargs", {}).items() if k in _RESAMPLING_KEYS}
    regions_order = None
    if spec.has_regions:
        regions_order = spec.regions_class_order
        if regions_order is None:
            where = model.path / "dataset.json" if model.path is not None else "the dataset.json"
            raise ValueError(f"{where}: a region-based dataset needs 'regions_class_order'")
    result = export_segmentation(
        accumulator,
        shape_after,
        current,
        spacing_t,
        weights=weights,
        regions_class_order=regions_order,
        return_probabilities=return_probabilities,
        **kwargs,
    )
    labels, probabilities = result if return_probabilities else (result, None)
    labels, probabilities = _host(labels), _host(probabilities)

    box = tuple(slice(int(a), int(b)) for a, b in properties["bbox_used_for_cropping"])
    shape_before = tuple(int(s) for s in properties["shape_before_cropping"])
    dtype = np.uint8 if len(spec.foreground_labels) < 255 else np.uint16
    full = np.zeros(shape_before, dtype=dtype)
    full[box] = labels
    full = full.transpose(backward)
    if probabilities is None:
        return full
    probs = np.zeros((probabilities.shape[0], *shape_before), dtype=np.float32)
    if not spec.has_regions:
        probs[0] = 1
    probs[(slice(None), *box)] = probabilities
    return full, probs.transpose([0] + [a + 1 for a in backward])
