"""The work folder `fastseg plan` writes and `fastseg preprocess` (and training) reads.

    <work>/dataset.json               byte copy of the raw dataset's dataset.json
    <work>/dataset_fingerprint.json   nnU-Net's fingerprint schema
    <work>/plans.json                 nnU-Net's plans schema (nnU-Net names it <plans_name>.json)
    <work>/source.json                where the raw dataset is, which planner made the plans
    <work>/<data_identifier>/         preprocessed cases (`fastseg.preprocess.storage`)
"""

from __future__ import annotations

import json
from pathlib import Path

DATASET_JSON = "dataset.json"
FINGERPRINT = "dataset_fingerprint.json"
PLANS = "plans.json"
SOURCE = "source.json"


def read_json(path: str | Path) -> dict:
    """A work-folder JSON file; a missing one says how to make it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `fastseg plan RAW_DATASET_DIR -o {path.parent}` first")
    with open(path) as f:
        return json.load(f)
