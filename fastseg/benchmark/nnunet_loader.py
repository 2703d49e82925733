"""nnU-Net's own training data pipeline, timed: what `nnUNetTrainer.get_dataloaders` builds.

    python -m fastseg.benchmark.nnunet_loader --preprocessed DIR -c CONFIG --workers W --batches N --json OUT

DIR is nnU-Net's preprocessed dataset folder (`nnUNet_preprocessed/<dataset>/`, with the plans
file, dataset.json and the configuration's data folder made by `nnUNetv2_preprocess`). Built as the
trainer builds it, with nnU-Net's classes unchanged: the dataset class nnU-Net infers for the folder,
`nnUNetDataLoader` with the initial (larger) patch size from the trainer's rotation / dummy-2D rule,
the trainer's `get_training_transforms` with deep supervision scales from the plans' pooling, and a
`NonDetMultiThreadedAugmenter` of W processes caching max(6, W // 2) batches. A few batches warm the
workers up; then N batches are timed. Writes samples/s and the batch shapes as JSON. Needs nnunetv2.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from fastseg.benchmark.measure import tree_cpu_seconds

WARMUP_BATCHES = 3


def _plans(folder: Path, plans_name: str | None) -> tuple[dict, str]:
    names = [plans_name] if plans_name else ["nnUNetPlans"] + sorted(
        p.stem for p in folder.glob("*.json") if p.stem not in ("dataset", "dataset_fingerprint", "nnUNetPlans", "splits_final")
    )
    for name in names:
        path = folder / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text()), name
    raise FileNotFoundError(f"no plans file in {folder}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preprocessed", required=True)
    parser.add_argument("-c", "--configuration", required=True)
    parser.add_argument("--plans-name", default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    torch.set_num_threads(1)  # as nnU-Net's augmentation workers run
    folder = Path(args.preprocessed)
    plans, _ = _plans(folder, args.plans_name)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    manager = PlansManager(plans)
    config = manager.get_configuration(args.configuration)
    labels = manager.get_label_manager(dataset_json)
    data_folder = folder / config.data_identifier
    dataset_class = infer_dataset_class(str(data_folder))
    dataset = dataset_class(str(data_folder))
    patch_size = config.patch_size

    trainer = nnUNetTrainer.__new__(nnUNetTrainer)  # only for its rotation / initial patch size rule
    trainer.configuration_manager = config
    trainer.print_to_log_file = lambda *a, **k: None
    rotation, dummy_2d, initial_patch_size, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    scales = list(list(i) for i in 1 / np.cumprod(np.vstack(config.pool_op_kernel_sizes), axis=0))[:-1]
    transforms = nnUNetTrainer.get_training_transforms(
        patch_size, rotation, scales, mirror_axes, dummy_2d,
        use_mask_for_norm=config.use_mask_for_norm, is_cascaded=False,
        foreground_labels=labels.foreground_labels,
        regions=labels.foreground_regions if labels.has_regions else None,
        ignore_label=labels.ignore_label,
    )
    loader = nnUNetDataLoader(dataset, config.batch_size, initial_patch_size, patch_size, labels,
                              oversample_foreground_percent=0.33, transforms=transforms)
    augmenter = NonDetMultiThreadedAugmenter(loader, None, args.workers, max(6, args.workers // 2), None, False, 0.002)
    try:
        for _ in range(WARMUP_BATCHES):
            batch = next(augmenter)
        cpu_start, start = tree_cpu_seconds(os.getpid()), time.perf_counter()
        for _ in range(args.batches):
            batch = next(augmenter)
        seconds = time.perf_counter() - start
        cpu_seconds = tree_cpu_seconds(os.getpid()) - cpu_start
    finally:
        augmenter._finish()
    data, target = batch["data"], batch["target"]
    result = {
        "batches": args.batches,
        "batch_size": int(config.batch_size),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "samples_per_second": args.batches * config.batch_size / seconds,
        "data_shape": list(data.shape),
        "target_shapes": [list(t.shape) for t in (target if isinstance(target, list) else [target])],
        "workers": args.workers,
        "pid": os.getpid(),
    }
    Path(args.json).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
