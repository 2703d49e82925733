"""Training batches for a trainer: sampling, augmentation, targets, on the training device.

    loader = make_training_loader("work/Dataset001", "3d_fullres", case_ids, device="cuda")
    for step, (data, targets) in zip(range(250), loader):
        ...                       # data (B, C, *patch) float32; targets: one tensor per output scale
    print(loader.stats.wait_fraction)
    loader.close()

Three stages, each its own module:

1. `fastseg.data.sampling.PatchSampler` places nnU-Net's patches (foreground oversampling, the
   larger region that rotation and scaling need, padding) in the memory-mapped preprocessed cases.
   It is the source of the batches, called from the consumer's thread, each batch seeded by
   (seed, batch index), so a run is reproducible whatever the number of workers. On the CPU it also
   applies every augmentation (`workers` threads, each a share of the batch): the spatial transform
   and the noise while reading (`fastseg.data.spatial`: one native pass from the memory map into the
   final patch), then the rest (`fastseg.data.intensity`: one native pass over the batch); for CUDA
   it reads the larger initial patch and leaves all of them to DALI.
2. `fastseg.data.augment` is a DALI pipeline with nnU-Net's augmentations, on the GPU when the
   device is CUDA (the patches move there right after reading). The CPU path has no DALI graph: its
   batches leave the source finished, and a pass-through graph only added copies (measured: ~1.5 ms
   of a 2d batch's ~13 ms).
3. `fastseg.data.targets` turns the segmentation into the loss's targets on the device: regions for
   region-based datasets, then one target per deep-supervision output.

The loader is an endless iterator (a trainer counts its own iterations). It times how long its
consumer waits for each batch (`stats`): the wait fraction is what tells whether the data pipeline
keeps up with the network.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


class LoaderError(ValueError):
    """The loader cannot be built: a configuration that was not preprocessed, unknown cases, bad sizes."""


@dataclass
class LoaderStats:
    """How the consumer fared: batches delivered, seconds spent waiting for them, seconds in all
    (from the first request to the last delivery)."""

    batches: int = 0
    wait_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def wait_fraction(self) -> float:
        """Waiting time over the whole time (0: never waited; 1: only waited)."""
        return self.wait_seconds / self.total_seconds if self.total_seconds > 0 else 0.0


class _BatchSource:
    """The source of the batches (the DALI pipeline's external source on a GPU): one sampled batch per
    call, seeded by (seed, epoch, iteration). Picklable; the sampler (open memory maps) is made in the
    worker on first use."""

    def __init__(self, folder: str, case_ids: Sequence[str], patch_size: tuple, final_patch_size: tuple, batch_size: int,
                 seed: int, two_d: bool, oversample_foreground_percent: float, spec=None, threads: int = 1) -> None:
        self.folder, self.case_ids, self.patch_size = folder, list(case_ids), tuple(patch_size)
        self.final_patch_size = tuple(final_patch_size)
        self.batch_size, self.seed, self.two_d = batch_size, seed, two_d
        self.oversample = oversample_foreground_percent
        self.spec = spec  # an AugmentSpec with source_spatial: final patches (fastseg.data.spatial, .intensity)
        self.threads = threads  # that transform the samples (fastseg.data.spatial)
        self._sampler = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_sampler": None}

    def close(self) -> None:
        """Stops the sampler's threads."""
        if self._sampler is not None:
            self._sampler.close()

    def __call__(self, info) -> tuple[list[np.ndarray], list[np.ndarray]]:
        data, seg = self.batch(info)
        return list(data), list(seg)

    def batch(self, info) -> tuple[np.ndarray, np.ndarray]:
        """The batch of iteration `info` (DALI's BatchInfo or the iteration number): data (B, C, *patch)
        float32 and seg (B, 1, *patch) int16."""
        from fastseg.data.sampling import PatchSampler

        if self._sampler is None:
            self._sampler = PatchSampler(
                self.folder, self.case_ids, self.patch_size, self.batch_size, final_patch_size=self.final_patch_size,
                oversample_foreground_percent=self.oversample, seed=self.seed, two_d=self.two_d,
            )
        iteration = int(getattr(info, "iteration", info))  # DALI passes a BatchInfo or the iteration number
        rng = np.random.default_rng([self.seed, int(getattr(info, "epoch_idx", 0)), iteration])
        if self.spec is not None:
            batch = self._sampler.sample_transformed_batch(self.spec, rng, workers=self.threads)
        else:
            batch = self._sampler.sample_batch(rng)
        return batch.data, batch.seg


class _SourceBatches:
    """The CPU path's batches: the source's, finished (every augmentation ran in it), one per `run()`,
    numbered as DALI numbers its iterations. Made on demand in the consumer's thread."""

    def __init__(self, source: _BatchSource) -> None:
        self._source = source
        self._iteration = 0

    def run(self) -> tuple[np.ndarray, np.ndarray]:
        batch = self._source.batch(self._iteration)
        self._iteration += 1
        return batch


def _configuration(work_dir: Path, configuration: str) -> tuple[dict, dict, dict]:
    """(plans, resolved configuration, dataset.json) of a work folder."""
    from fastseg.plan.plans import resolve_configuration

    plans_file = work_dir / "plans.json"
    if not plans_file.is_file():
        raise LoaderError(f"{plans_file} not found; plan the dataset first: fastseg plan RAW -o {work_dir}")
    plans = json.loads(plans_file.read_text())
    try:
        cfg = resolve_configuration(plans, configuration)
    except ValueError as err:
        raise LoaderError(f"{plans_file}: {err}") from None
    dataset_file = work_dir / "dataset.json"
    dataset_json = json.loads(dataset_file.read_text()) if dataset_file.is_file() else {}
    return plans, cfg, dataset_json


class TrainingLoader:
    """An endless iterator of `(data, targets)` training (or validation) batches; build it with
    `make_training_loader`. Close it (or use it as a context manager) to stop the pipeline and its
    worker processes."""

    def __init__(self, pipeline, *, device: str, scales: list[list[float]] | None, regions: list | None,
                 ignore_label: int | None, batch_size: int, patch_size: tuple, source=None) -> None:
        self._pipeline = pipeline
        self._source = source
        self.device = device
        self.scales = scales
        self.regions = regions
        self.ignore_label = ignore_label
        self.batch_size = batch_size
        self.patch_size = patch_size
        self.stats = LoaderStats()
        self._last: float | None = None

    def __iter__(self) -> TrainingLoader:
        return self

    def __next__(self) -> tuple[Any, list]:
        if self._pipeline is None:
            raise StopIteration
        start = time.perf_counter()
        if self._last is None:
            self._last = start
        data, seg = self._pipeline.run()
        data_t, seg_t = _to_torch(data, self.device), _to_torch(seg, self.device)
        targets = self._targets(seg_t)
        end = time.perf_counter()
        self.stats.batches += 1
        self.stats.wait_seconds += end - start
        self.stats.total_seconds += end - self._last
        self._last = end
        return data_t, targets

    def _targets(self, seg) -> list:
        from fastseg.data.targets import downsample_targets, to_regions

        target = to_regions(seg, self.regions, self.ignore_label) if self.regions else seg
        return downsample_targets(target, self.scales) if self.scales else [target]

    def close(self) -> None:
        """Stops the pipeline and its worker processes (idempotent)."""
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            del pipeline
        source, self._source = getattr(self, "_source", None), None
        if source is not None:
            source.close()

    def __enter__(self) -> TrainingLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def _to_torch(tensor_list, device: str):
    """A dense DALI batch (or a numpy batch) as a torch tensor on `device` (GPU outputs stay on the GPU:
    no copy to host)."""
    import torch

    if isinstance(tensor_list, np.ndarray):
        out = torch.from_numpy(tensor_list)
        return out if device == "cpu" else out.to(device, non_blocking=True)

    if hasattr(tensor_list, "as_tensor") and type(tensor_list).__name__.endswith("GPU"):
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = tensor_list.as_tensor()
        out = torch.empty(dense.shape(), dtype=_TORCH_DTYPES[str(dense.dtype)], device=device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream())
        return out
    array = tensor_list.as_array()
    out = torch.from_numpy(np.ascontiguousarray(array))
    return out if device == "cpu" else out.to(device, non_blocking=True)


_TORCH_DTYPES: dict[str, Any] = {}


def _fill_dtypes() -> None:
    import torch

    _TORCH_DTYPES.update({"DALIDataType.FLOAT": torch.float32, "DALIDataType.INT16": torch.int16,
                          "DALIDataType.INT32": torch.int32, "DALIDataType.UINT8": torch.uint8,
                          "DALIDataType.INT8": torch.int8, "DALIDataType.INT64": torch.int64})


def make_training_loader(
    work_dir: str | Path,
    configuration: str,
    case_ids: Sequence[str],
    *,
    device: str = "cpu",
    workers: int = 2,
    seed: int = 0,
    augment: bool = True,
    batch_size: int | None = None,
    patch_size: Sequence[int] | None = None,
    deep_supervision: bool = True,
    oversample_foreground_percent: float = 0.33,
    prefetch: int = 2,
) -> TrainingLoader:
    """Training (or, with `augment=False`, validation) batches of preprocessed cases.

    Args:
        work_dir: the work folder of `fastseg plan` / `fastseg preprocess` (plans.json, dataset.json,
            `<data_identifier>/` of the configuration).
        configuration: "3d_fullres", "2d", ... (must have been preprocessed).
        case_ids: the cases to draw from (a fold's training cases).
        device: "cpu" or "cuda[:k]": where the batches are delivered and, on CUDA, augmented.
        workers: threads that sample and augment a batch on the CPU; DALI CPU threads on a GPU (default 2).
        seed: the batches are a function of the seed and their index (default 0).
        augment: nnU-Net's training augmentations (default True); False gives validation batches
            (sampling with foreground oversampling, no augmentation).
        batch_size, patch_size: default: the plans'.
        deep_supervision: one target per network output scale (default True), else one target.
        oversample_foreground_percent: nnU-Net's 0.33 by default.
        prefetch: batches DALI prepares ahead on a GPU (default 2; the CPU path makes each batch when asked).

    Returns:
        A `TrainingLoader`: an endless iterator of (data (B, C, *patch) float32, [target per scale]).

    Raises:
        LoaderError: no plans, a configuration that was not preprocessed (naming the command to
            run), unknown case ids, a bad batch or patch size or worker count.
    """
    from fastseg.data.augment import AugmentSpec, build_augmentation_pipeline
    from fastseg.data.sampling import augmentation_setup
    from fastseg.data.targets import deep_supervision_scales
    from fastseg.io.labels import LabelSpec
    from fastseg.preprocess.storage import case_identifiers

    _fill_dtypes()
    work_dir = Path(work_dir)
    if workers < 1:
        raise LoaderError(f"workers must be >= 1, got {workers}")
    _, cfg, dataset_json = _configuration(work_dir, configuration)
    folder = work_dir / cfg["data_identifier"]
    available = set(case_identifiers(folder)) if folder.is_dir() else set()
    if not available:
        raise LoaderError(f"{configuration} of {work_dir} is not preprocessed ({folder} holds no cases); "
                          f"run: fastseg preprocess {work_dir} -c {configuration}")
    case_ids = list(case_ids)
    missing = [c for c in case_ids if c not in available]
    if not case_ids or missing:
        raise LoaderError(f"cases not preprocessed in {folder}: {', '.join(missing[:10]) or '(none given)'}")
    patch = tuple(int(p) for p in (patch_size or cfg["patch_size"]))
    batch = int(batch_size or cfg["batch_size"])
    if batch < 1 or any(p < 1 for p in patch):
        raise LoaderError(f"batch size and patch size must be positive, got {batch} and {patch}")
    setup = augmentation_setup(patch)
    read_patch = tuple(setup.initial_patch_size) if augment else patch
    device_id = None
    if device.startswith("cuda"):
        device_id = int(device.partition(":")[2] or 0)
    # On the CPU the source applies every augmentation natively: the spatial transform and the noise
    # (fastseg.data.spatial, reading only the final patch's voxels), then the rest (fastseg.data.intensity);
    # on a GPU DALI does, from the initial patch.
    source_spatial = device_id is None
    spec = AugmentSpec(patch_size=patch, rotation=tuple(setup.rotation), dummy_2d=setup.dummy_2d,
                       mirror_axes=tuple(setup.mirror_axes), augment=augment, source_spatial=source_spatial,
                       source_intensity=source_spatial)
    source = _BatchSource(str(folder), case_ids, read_patch, patch, batch, seed, len(patch) == 2, oversample_foreground_percent,
                          spec if source_spatial else None, threads=workers)
    if source_spatial:
        pipeline = _SourceBatches(source)
    else:
        pipeline = build_augmentation_pipeline(source, spec, batch, num_threads=workers, device_id=device_id, seed=seed,
                                               prefetch_queue_depth=prefetch)
    spec_labels = LabelSpec.from_json(dataset_json.get("labels", {}), dataset_json.get("regions_class_order")) if dataset_json else None
    regions = list(spec_labels.regions) if spec_labels is not None and spec_labels.has_regions else None
    ignore = spec_labels.ignore_label if spec_labels is not None else None
    scales = deep_supervision_scales(cfg) if deep_supervision else None
    logger.debug("loader: %s, batch %d, patch %s (reading %s), device %s", configuration, batch, patch, read_patch, device)
    return TrainingLoader(pipeline, device=device, scales=scales, regions=regions, ignore_label=ignore if regions else None,
                          batch_size=batch, patch_size=patch, source=source)
