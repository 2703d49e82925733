"""Scoring segmentations: nnU-Net's overlap metrics and `summary.json`.

`evaluate_folders(pred_dir, ref_dir, dataset_json)` scores a folder of predictions (`fastseg
evaluate`); `metrics` holds the one-pass confusion-matrix counting behind it.
"""

from fastseg.evaluate.folder import evaluate_folders, format_table, to_json
from fastseg.evaluate.metrics import METRICS, confusion_matrix, metrics_from_confusion

__all__ = ["METRICS", "confusion_matrix", "evaluate_folders", "format_table", "metrics_from_confusion", "to_json"]
