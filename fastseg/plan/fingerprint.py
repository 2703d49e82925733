"""Dataset fingerprint: what the planner needs to know about a dataset, in nnU-Net v2's schema.

Per training case (in parallel over cases): crop to the nonzero region (`fastseg.ops.crop`:
the bounding box of "any channel != 0"), record the shape after cropping, the spacing and the
fraction of voxels the crop kept, and draw a fixed number of foreground intensities per channel
(foreground = label > 0 inside the crop).

The sampling rule is nnU-Net's, so the statistics come out the same: the dataset contributes 10^8
samples per channel in total, `int(10e7 // n_cases)` per case, drawn with replacement by
`numpy.random.RandomState(1234).choice` -- a fresh generator per case, shared by its channels in
channel order -- and a case without foreground contributes nothing. Over all samples of a channel:
mean, std, min, max, median and the 0.5 / 99.5 percentiles (`fastseg.plan.intensity`: each case
sends its samples as sorted value counts, at most one entry per foreground voxel, instead of 10^8 / n
floats, and the main process merges counts).

`fastseg plan` does the per-case part inside dataset verification instead, on the arrays the
verification workers have just read (`fingerprint_verified_case`, the `analyze` hook of
`fastseg.io.verify_dataset`; `fingerprint_from_cases` merges the results), so each file is read and
decompressed once; `extract_fingerprint` reads the files itself.

`dataset_fingerprint.json` has nnU-Net's keys: spacings, shapes_after_crop (z, y, x per case, in
nnU-Net's case order), foreground_intensity_properties_per_channel ("0", "1", ...) and
median_relative_size_after_cropping.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastseg.io.images import image_voxels
from fastseg.plan.intensity import channel_statistics, draw_samples
from fastseg.ops.crop import bounding_box, box_slices, nonzero_mask
from fastseg.runtime.workers import Job, default_num_workers, run_jobs
from fastseg.io.atomic import write_json_atomic

logger = logging.getLogger(__name__)

#: Foreground intensity samples per channel over the whole dataset (nnU-Net: 10e7).
TOTAL_FOREGROUND_SAMPLES = 10e7
#: Seed of each case's sampling generator (nnU-Net: 1234).
SAMPLING_SEED = 1234


@dataclass(frozen=True)
class CaseFingerprint:
    """What one training case contributes.

    Attributes:
        shape_after_crop: spatial shape (z, y, x) of the nonzero crop.
        spacing: voxel spacing (z, y, x).
        samples: per channel, the sampled foreground intensities as
            `fastseg.plan.intensity.ValueCounts` (a float32 array when a sample is NaN or Inf), or []
            when the case has no foreground.
        relative_size_after_cropping: voxels after the crop / voxels before.
    """

    shape_after_crop: tuple[int, ...]
    spacing: tuple[float, ...]
    samples: list
    relative_size_after_cropping: float


def samples_per_case(num_cases: int, total_samples: float = TOTAL_FOREGROUND_SAMPLES) -> int:
    """Foreground samples per channel each case contributes."""
    if num_cases < 1:
        raise ValueError(f"a fingerprint needs at least one training case, got {num_cases}")
    if total_samples < num_cases:
        raise ValueError(f"total_samples ({total_samples}) must be at least the number of cases ({num_cases})")
    return int(total_samples // num_cases)


def analyze_case(
    data: np.ndarray, seg: np.ndarray, spacing: Sequence[float], num_samples: int, seed: int = SAMPLING_SEED
) -> CaseFingerprint:
    """Fingerprint of one case held in memory.

    Args:
        data: (C, z, y, x) float32 image.
        seg: (1, z, y, x) segmentation with data's spatial shape.
        spacing: (z, y, x) spacing.
        num_samples: foreground samples to draw per channel (`samples_per_case`).
        seed: seed of the sampling generator (default 1234, nnU-Net's).

    Returns:
        The CaseFingerprint.
    """
    if data.ndim != 4 or seg.ndim != 4 or seg.shape[0] != 1:
        raise ValueError(f"data must be (C, z, y, x) and seg (1, z, y, x), got {data.shape} and {seg.shape}")
    if data.shape[1:] != seg.shape[1:]:
        raise ValueError(f"segmentation shape {seg.shape[1:]} does not match image shape {data.shape[1:]}")
    box = bounding_box(nonzero_mask(data))
    sl = box_slices(box)
    cropped = data[(slice(None),) + sl]
    foreground = seg[0][sl] > 0
    rng = np.random.RandomState(seed)
    samples: list = []
    for c in range(data.shape[0]):
        samples.append(draw_samples(cropped[c][foreground], num_samples, rng))
    shape_after = tuple(int(b - a) for a, b in box)
    return CaseFingerprint(
        shape_after_crop=shape_after,
        spacing=tuple(float(s) for s in spacing),
        samples=samples,
        relative_size_after_cropping=math.prod(shape_after) / math.prod(data.shape[1:]),
    )


def aggregate(cases: Sequence[CaseFingerprint], num_channels: int) -> dict:
    """The dataset fingerprint from its cases' fingerprints (in nnU-Net's case order).

    Raises:
        ValueError: no cases, a channel count that does not match, or no foreground in any case.
    """
    if not cases:
        raise ValueError("a fingerprint needs at least one training case")
    for i, case in enumerate(cases):
        if len(case.samples) != num_channels:
            raise ValueError(f"case {i} has {len(case.samples)} channels, dataset.json declares {num_channels}")
    properties = {}
    for c in range(num_channels):
        samples = [case.samples[c] for case in cases]
        if all(isinstance(s, list) and not s for s in samples):
            raise ValueError(
                f"no case has foreground (label > 0 inside the nonzero region) in channel {c}: the intensity "
                "statistics are undefined; check the labels"
            )
        properties[str(c)] = channel_statistics(samples)
    return {
        "foreground_intensity_properties_per_channel": properties,
        "median_relative_size_after_cropping": float(np.median([case.relative_size_after_cropping for case in cases], 0)),
        "shapes_after_crop": [list(case.shape_after_crop) for case in cases],
        "spacings": [list(case.spacing) for case in cases],
    }


# --- from files --------------------------------------------------------------------------------------


def case_order(dataset_json: Mapping[str, Any], identifiers: Sequence[str]) -> list[str]:
    """nnU-Net's case order: dataset.json's "dataset" entries in their order, else sorted identifiers."""
    listed = dataset_json.get("dataset")
    if isinstance(listed, Mapping):
        known = set(identifiers)
        return [k for k in listed if k in known]
    return sorted(identifiers)


def _analyze_files(images: list[str], label: str, num_samples: int) -> CaseFingerprint:
    from fastseg import io as fio

    data, props = fio.read_images([Path(p) for p in images])
    seg, _ = fio.read_seg(Path(label))
    return analyze_case(np.asarray(data, dtype=np.float32), np.asarray(seg), props["spacing"], num_samples)


def fingerprint_verified_case(case: Any, total_samples: float = TOTAL_FOREGROUND_SAMPLES) -> CaseFingerprint:
    """`fastseg.io.verify_dataset`'s `analyze` hook: the fingerprint of a case verification has just
    read (a `fastseg.io.verify.VerifiedCase`) -- what `extract_fingerprint(..., total_samples)`
    computes for it from the files. Bind another `total_samples` with `functools.partial`."""
    num_samples = samples_per_case(case.num_training_cases, total_samples)
    return analyze_case(case.images, case.seg, case.properties["spacing"], num_samples)


def _case_memory(images: Sequence[Path], channels: int) -> int:
    """Peak bytes of analysing a case: the float32 image, the label and its masks."""
    return 4 * image_voxels(images[0]) * (channels + 3)


def _num_channels(dataset_json: Mapping[str, Any]) -> int:
    return len(dataset_json.get("channel_names", dataset_json.get("modality", {})))


def fingerprint_from_cases(dataset: Any, cases: Mapping[str, CaseFingerprint]) -> dict | None:
    """The dataset fingerprint from per-case fingerprints computed elsewhere (by
    `fingerprint_verified_case` during verification), or None when they do not cover exactly the
    dataset's training cases (then `extract_fingerprint` has to read the files).

    Args:
        dataset: a `fastseg.io.RawDataset`.
        cases: identifier -> CaseFingerprint, each made with `samples_per_case(len(dataset.cases))`.
    """
    order = case_order(dataset.dataset_json, list(dataset.cases))
    if len(order) != len(dataset.cases) or set(order) != set(cases):
        return None
    return aggregate([cases[k] for k in order], _num_channels(dataset.dataset_json))


def workers_within_memory(dataset: Any, num_processes: int, memory_budget: int | None = None) -> int:
    """How many of `num_processes` workers may fingerprint cases at once without the largest cases
    together exceeding `memory_budget` (default: 75 % of the available memory); at least 1."""
    from fastseg.runtime.workers import available_memory

    channels = _num_channels(dataset.dataset_json)
    peak = max((_case_memory(c.images, channels) for c in dataset.cases.values() if c.images), default=0)
    budget = memory_budget if memory_budget is not None else int(available_memory() * 0.75)
    if peak <= 0:
        return num_processes
    return max(1, min(num_processes, budget // peak))


def extract_fingerprint(
    dataset: Any,
    num_processes: int | None = None,
    *,
    total_samples: float = TOTAL_FOREGROUND_SAMPLES,
    progress: bool | None = None,
) -> dict:
    """Fingerprint of a raw dataset, in parallel over its training cases.

    Args:
        dataset: a `fastseg.io.RawDataset` (has `.dataset_json` and `.cases`: identifier ->
            CaseFiles with `.images` and `.label`), or the dataset folder.
        num_processes: worker processes (default: the core count).
        total_samples: foreground intensity samples per channel over the dataset (default 10e7,
            nnU-Net's; smaller values trade exactness of the statistics for speed).
        progress: show a progress bar; default only when stderr is a terminal.

    Returns:
        The fingerprint dict (see `save_fingerprint`).
    """
    if not hasattr(dataset, "cases"):
        from fastseg import io as fio

        dataset = fio.load_raw_dataset(Path(dataset))
    dataset_json = dataset.dataset_json
    channels = _num_channels(dataset_json)
    order = case_order(dataset_json, list(dataset.cases))
    unlabeled = [k for k in order if dataset.cases[k].label is None]
    if unlabeled:
        raise ValueError(f"training cases without a label file: {unlabeled[:5]}{' ...' if len(unlabeled) > 5 else ''}")
    n = samples_per_case(len(order), total_samples)
    jobs = [
        Job(
            key=k,
            args=([str(p) for p in dataset.cases[k].images], str(dataset.cases[k].label), n),
            memory_bytes=_case_memory(dataset.cases[k].images, channels) + 12 * n,  # + the sample indices
        )
        for k in order
    ]
    workers = num_processes or default_num_workers()
    results = dict(run_jobs(_analyze_files, jobs, workers, desc="Fingerprint", progress=progress))
    return aggregate([results[k] for k in order], channels)


def save_fingerprint(fingerprint: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Writes dataset_fingerprint.json as nnU-Net does (sorted keys, indent 4), atomically."""
    return write_json_atomic(fingerprint, path, sort_keys=True)


def load_fingerprint(path: str | os.PathLike) -> dict:
    with open(path) as f:
        return json.load(f)

