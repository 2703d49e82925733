"""nnU-Net's side of the training benchmark: `nnUNetv2_train`'s own entry point, run in this process
with a trainer that differs from `nnUNetTrainer` only in its run length and in what it records.

The subclass sets the epochs, training iterations and validation iterations per epoch (nnU-Net's
trainer variants change run length the same way), pins torch's threads after the entry point has
set them to every core, skips the final validation (the fastseg side skips it too), and times each
`next()` on the training loader to give the loader wait fraction. The class is handed to the entry
point by replacing its trainer-class lookup, so the arguments are parsed and the trainer is built,
initialised, trained and checkpointed by nnU-Net's code unchanged.

    python -m fastseg.benchmark.nnunet_train --preprocessed PRE/Dataset001_X --results RES \\
        -c 3d_fullres -f 0 --epochs 3 --iterations 20 --val-iterations 5 --threads 2 --json out.json

`--preprocessed` is the dataset folder under nnUNet_preprocessed; the environment variables
nnUNet_raw, nnUNet_preprocessed and nnUNet_results are set from it before nnunetv2 is imported.
The loader worker count is nnU-Net's own setting, the environment variable nnUNet_n_proc_DA.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

TRAINER_NAME = "nnUNetTrainerFastsegBenchmark"


class _TimedLoader:
    """Passes batches through and adds the seconds each `next()` took to `wait_seconds`."""

    def __init__(self, loader) -> None:
        self.loader = loader
        self.wait_seconds = 0.0

    def __next__(self):
        start = time.perf_counter()
        batch = next(self.loader)
        self.wait_seconds += time.perf_counter() - start
        return batch

    def __iter__(self):
        return self

    def __getattr__(self, name):
        return getattr(self.loader, name)


def _trainer_class(epochs: int, iterations: int, val_iterations: int, threads: int, record: dict):
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class Trainer(nnUNetTrainer):
        # nnU-Net records its constructor's arguments by the names in this signature
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cpu")) -> None:
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = epochs
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = val_iterations
            torch.set_num_threads(threads)

        def on_train_start(self) -> None:
            super().on_train_start()
            self.dataloader_train = _TimedLoader(self.dataloader_train)

        def on_train_epoch_start(self) -> None:
            self._epoch_wait_start = self.dataloader_train.wait_seconds
            self._epoch_start = time.perf_counter()
            super().on_train_epoch_start()

        def on_train_epoch_end(self, train_outputs) -> None:
            seconds = time.perf_counter() - self._epoch_start
            record["wait_fractions"].append((self.dataloader_train.wait_seconds - self._epoch_wait_start) / seconds)
            super().on_train_epoch_end(train_outputs)

        def on_train_end(self) -> None:
            if isinstance(self.dataloader_train, _TimedLoader):
                self.dataloader_train = self.dataloader_train.loader
            record["torch_threads"] = torch.get_num_threads()
            super().on_train_end()

        def perform_actual_validation(self, save_probabilities: bool = False) -> None:
            record["output_folder"] = self.output_folder

    Trainer.__name__ = Trainer.__qualname__ = TRAINER_NAME
    return Trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="nnU-Net's side of the training benchmark")
    parser.add_argument("--preprocessed", required=True, help="the dataset folder under nnUNet_preprocessed")
    parser.add_argument("--results", required=True, help="nnUNet_results for this run")
    parser.add_argument("-c", "--configuration", required=True)
    parser.add_argument("-f", "--fold", default="0")
    parser.add_argument("-p", "--plans-name", default="nnUNetPlans")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--val-iterations", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)

    pre = Path(args.preprocessed).resolve()
    os.environ["nnUNet_preprocessed"] = str(pre.parent)
    os.environ.setdefault("nnUNet_raw", str(pre.parent.parent / "nnUNet_raw"))
    os.environ["nnUNet_results"] = str(Path(args.results).resolve())
    import nnunetv2.run.run_training as entry

    record: dict = {"wait_fractions": []}
    trainer = _trainer_class(args.epochs, args.iterations, args.val_iterations, args.threads, record)
    entry.recursive_find_trainer_class_by_name = lambda name: trainer
    sys.argv = ["nnUNetv2_train", pre.name, args.configuration, args.fold, "-tr", TRAINER_NAME, "-p", args.plans_name,
                "-device", "cpu"]
    entry.run_training_entry()
    Path(args.json).write_text(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
