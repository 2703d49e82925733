"""The training loop: nnU-Net's recipe, read top to bottom.

    model folder  WORK/results/<trainer>__<plans>__<configuration>/   plans.json, dataset.json,
                                                                     dataset_fingerprint.json
                  (TrainConfig.results_dir replaces WORK/results, e.g. by $nnUNet_results/DatasetXXX_Name)
    fold folder   .../fold_<f>/   checkpoint_{latest,best,final}.pth, training_log.txt, progress.png,
                                  validation/ (final validation: predictions and summary.json)

For each epoch: the learning rate is set by the poly schedule; `iterations_per_epoch` batches from
`fastseg.data` go through forward, nnU-Net's loss, backward, gradient clipping at 12 and an SGD step
(with AMP and a gradient scaler on CUDA); then `val_iterations` validation batches (no augmentation)
give the validation loss and nnU-Net's pseudo Dice (global TP/FP/FN per class over the batches) and
its exponential moving average, which picks `checkpoint_best.pth`. `checkpoint_latest.pth` is written
every `save_every` epochs, `checkpoint_final.pth` at the end (latest is then removed), each to a
temporary file renamed into place. Finally the fold's validation cases are predicted at full
resolution (`fastseg.predict`) and scored (`fastseg.evaluate`) into `validation/summary.json`.

Exact resume: each epoch's training and validation batches come from a fresh loader seeded by
(seed, epoch) (and the rank under DDP), so the batches of epoch e do not depend on what ran before;
with the network, optimizer, scaler and logbook restored from `checkpoint_latest.pth`, a resumed run
continues exactly as the uninterrupted one (on the CPU, with the same threads).

Multi-GPU: under `torchrun` (the command passes rank and world size down), each rank trains on its
share of the batch with its own loader (its own seed: sampling is sharded by the seed), gradients are
averaged by DDP, losses and pseudo-Dice counts are gathered, and only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastseg.predict.precision import PRECISIONS, resolve_precision

logger = logging.getLogger(__name__)

#: The trainer name written into checkpoints and the model folder's name: the recipe is nnU-Net's
#: default trainer's, and nnU-Net's predictor imports the class by this name.
TRAINER_NAME = "nnUNetTrainer"


class TrainingError(ValueError):
    """Training cannot start or continue: the message names the file or setting and what to do."""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run (nnU-Net's defaults). Change one with `dataclasses.replace`."""

    epochs: int = 1000
    iterations_per_epoch: int = 250
    val_iterations: int = 50
    save_every: int = 50
    initial_lr: float = 1e-2
    weight_decay: float = 3e-5
    device: str = "cpu"
    workers: int = 2
    seed: int = 0
    compile: bool = True  # torch.compile the network (on the CPU too, in channels-last layout)
    cpu_precision: str = "auto"  # "auto" (bf16 autocast on CPUs with AMX tiles, else fp32), "fp32" or "bf16"
    final_validation: bool = True
    save_probabilities: bool = False  # the final validation's .npz (for ensembles and find-best)
    oversample_foreground_percent: float = 0.33
    batch_size: int | None = None  # None: the plans'
    results_dir: str | None = None  # the model folder's parent; None: WORK/results

    def check(self) -> None:
        for name in ("epochs", "iterations_per_epoch", "save_every", "workers"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.val_iterations < 0:
            raise TrainingError(f"val_iterations must be >= 0, got {self.val_iterations}")
        if self.cpu_precision not in PRECISIONS:
            raise TrainingError(f"cpu_precision must be one of {', '.join(PRECISIONS)}, got {self.cpu_precision!r}")


@dataclass
class Logbook:
    """nnU-Net's training log (its checkpoint's `logging`): one value per epoch and key."""

    values: dict[str, list] = field(default_factory=lambda: {k: [] for k in (
        "mean_fg_dice", "ema_fg_dice", "dice_per_class_or_region", "train_losses", "val_losses", "lrs",
        "epoch_start_timestamps", "epoch_end_timestamps")})
    wait_fractions: list[float] = field(default_factory=list)

    def log(self, key: str, value: Any, epoch: int) -> None:
        series = self.values[key]
        if len(series) > epoch:
            series[epoch] = value
        else:
            series.append(value)
        if key == "mean_fg_dice":  # nnU-Net's moving average, logged with it
            ema = self.values["ema_fg_dice"]
            self.log("ema_fg_dice", ema[epoch - 1] * 0.9 + 0.1 * value if epoch > 0 and len(ema) >= epoch else value, epoch)

    def plot(self, path: Path) -> None:
        """progress.png with nnU-Net's three panels: losses and pseudo Dice, epoch time, learning rate."""
        from matplotlib.figure import Figure

        from fastseg.io.atomic import atomic_path

        v = self.values
        n = min(len(v["train_losses"]), len(v["val_losses"]), len(v["lrs"]))
        if n == 0:
            return
        x = list(range(n))
        fig = Figure(figsize=(12, 14))
        ax1, ax3, ax4 = fig.subplots(3, 1)
        ax1.plot(x, v["train_losses"][:n], color="b", label="loss_tr")
        ax1.plot(x, v["val_losses"][:n], color="r", label="loss_val")
        ax1.set_xlabel("epoch")
        ax1.set_ylabel("loss")
        ax2 = ax1.twinx()
        ax2.plot(x, v["mean_fg_dice"][:n], color="g", ls="dotted", label="pseudo dice")
        ax2.plot(x, v["ema_fg_dice"][:n], color="g", label="pseudo dice (mov. avg.)")
        ax2.set_ylabel("pseudo dice")
        ax1.legend(loc=(0, 1))
        ax2.legend(loc=(0.2, 1))
        durations = [e - s for s, e in zip(v["epoch_start_timestamps"][:n], v["epoch_end_timestamps"][:n])]
        ax3.plot(x[:len(durations)], durations, color="b", label="epoch duration")
        ax3.set_ylabel("time [s]")
        ax3.legend(loc=(0, 1))
        ax4.plot(x, v["lrs"][:n], color="b", label="learning rate")
        ax4.set_ylabel("learning rate")
        ax4.legend(loc=(0, 1))
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")


@dataclass(frozen=True)
class Distributed:
    """Where this process stands under torchrun (rank 0 of 1 without it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def model_folder_name(plans: dict, configuration: str) -> str:
    return f"{TRAINER_NAME}__{plans.get('plans_name', 'nnUNetPlans')}__{configuration}"


def _rank_batch(global_batch: int, oversample: float, dist: Distributed) -> tuple[int, float]:
    """nnU-Net's per-rank batch size and oversampling under DDP (its `_set_batch_size_and_oversample`)."""
    if not dist.active:
        return global_batch, oversample
    if global_batch < dist.world_size:
        raise TrainingError(f"batch size {global_batch} is smaller than the {dist.world_size} processes")
    sizes = [global_batch // dist.world_size] * dist.world_size
    sizes = [s + 1 if s * dist.world_size + i < global_batch else s for i, s in enumerate(sizes)]
    sample_id_low = sum(sizes[: dist.rank])
    sample_id_high = sum(sizes[: dist.rank + 1])
    threshold = global_batch * (1 - oversample)
    if sample_id_high / global_batch < 1 - oversample:
        rank_oversample = 0.0
    elif sample_id_low / global_batch > 1 - oversample:
        rank_oversample = 1.0
    else:
        rank_oversample = 1 - (threshold - sample_id_low) / sizes[dist.rank]
    return sizes[dist.rank], rank_oversample


def _epoch_seed(seed: int, epoch: int, rank: int, stream: int) -> int:
    """A loader seed of (seed, epoch, rank, stream: 0 train / 1 validation)."""
    return int(np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(1)[0] & 0x7FFFFFFF)


def _pseudo_dice_counts(output, target, has_regions: bool, ignore_label: int | None):
    """nnU-Net's validation step counts: TP, FP, FN per class (foreground only for labels)."""
    import torch

    axes = [0] + list(range(2, output.ndim))
    if has_regions:
        predicted = (torch.sigmoid(output) > 0.5).long()
    else:
        predicted = torch.zeros(output.shape, device=output.device, dtype=torch.float32)
        predicted.scatter_(1, output.argmax(1)[:, None], 1)
    mask = None
    if ignore_label is not None:
        if not has_regions:
            mask = (target != ignore_label).float()
            target = torch.where(target == ignore_label, torch.zeros_like(target), target)
        else:
            mask = (~target[:, -1:].bool()).float()
            target = target[:, :-1]
    if has_regions:
        onehot = target.float()
    else:
        onehot = torch.zeros(output.shape, device=output.device, dtype=torch.float32)
        onehot.scatter_(1, target.long(), 1)
    if mask is not None:
        tp = (predicted * onehot * mask).sum(axes)
        fp = (predicted * (1 - onehot) * mask).sum(axes)
        fn = ((1 - predicted) * onehot * mask).sum(axes)
    else:
        tp = (predicted * onehot).sum(axes)
        fp = (predicted * (1 - onehot)).sum(axes)
        fn = ((1 - predicted) * onehot).sum(axes)
    tp, fp, fn = (t.detach().cpu().numpy().astype(np.float64) for t in (tp, fp, fn))
    if not has_regions:
        tp, fp, fn = tp[1:], fp[1:], fn[1:]
    return tp, fp, fn


def train(
    work_dir: str | Path,
    configuration: str,
    fold: int | str,
    config: TrainConfig = TrainConfig(),
    *,
    resume: bool = False,
    pretrained_weights: str | Path | None = None,
    distributed: Distributed = Distributed(),
    progress: bool | None = None,
) -> Path:
    """Trains one fold of a preprocessed configuration (see the module's docstring).

    Args:
        work_dir: the work folder of `fastseg plan` / `fastseg preprocess`.
        configuration: a preprocessed configuration ("3d_fullres", "2d", ...).
        fold: 0..4 (nnU-Net's splits, `WORK/splits_final.json`) or "all".
        config: the run's settings (`TrainConfig`).
        resume: continue from the fold's `checkpoint_latest.pth`.
        pretrained_weights: start from the network weights of an nnU-Net or fastseg checkpoint.
        distributed: rank and world size under torchrun.
        progress: a progress bar per epoch; None: only when stderr is a terminal.

    Returns:
        The fold folder.

    Raises:
        TrainingError: an unpreprocessed configuration, a fold outside the splits, nothing to
            resume, a corrupt checkpoint; nothing is overwritten then.
    """
    import sys

    import torch
    from tqdm import tqdm

    from fastseg.data.loader import LoaderError, make_training_loader
    from fastseg.data.targets import deep_supervision_scales
    from fastseg.io.atomic import write_json_atomic
    from fastseg.io.labels import LabelSpec
    from fastseg.plan.plans import resolve_configuration
    from fastseg.preprocess.storage import case_identifiers
    from fastseg.train.checkpoint import load_checkpoint, network_state, save_checkpoint
    from fastseg.train.loss import build_loss
    from fastseg.train.network import build_network
    from fastseg.train.schedule import PolyLR, make_optimizer
    from fastseg.train.splits import fold_cases, load_or_make_splits

    config.check()
    work_dir = Path(work_dir)
    plans_file = work_dir / "plans.json"
    if not plans_file.is_file():
        raise TrainingError(f"{plans_file} not found; plan and preprocess first: fastseg plan RAW -o {work_dir} --preprocess")
    plans = json.loads(plans_file.read_text())
    dataset_json = json.loads((work_dir / "dataset.json").read_text())
    try:
        cfg = resolve_configuration(plans, configuration)
    except ValueError as err:
        raise TrainingError(f"{plans_file}: {err}") from None
    data_folder = work_dir / cfg["data_identifier"]
    all_cases = case_identifiers(data_folder) if data_folder.is_dir() else []
    if not all_cases:
        raise TrainingError(f"{configuration} is not preprocessed ({data_folder} holds no cases); "
                            f"run: fastseg preprocess {work_dir} -c {configuration}")
    try:
        if fold == "all":  # nnU-Net's fold "all": every case trains and validates
            train_ids, val_ids = list(all_cases), list(all_cases)
        else:
            train_ids, val_ids = fold_cases(load_or_make_splits(work_dir / "splits_final.json", all_cases), fold)
    except ValueError as err:
        raise TrainingError(f"{work_dir / 'splits_final.json'}: {err}") from None
    spec = LabelSpec.from_json(dataset_json["labels"], dataset_json.get("regions_class_order"))
    regions = list(spec.regions) if spec.has_regions else None
    num_outputs = len(regions) if regions else len(spec.all_labels)
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {"0": "image"}
    scales = deep_supervision_scales(cfg)

    device = torch.device(config.device if not config.device.startswith("cuda") or not distributed.active
                          else f"cuda:{distributed.local_rank}")
    if distributed.active and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    is_main = distributed.rank == 0

    model_folder = (Path(config.results_dir) if config.results_dir else work_dir / "results") / model_folder_name(plans, configuration)
    fold_folder = model_folder / f"fold_{fold}"
    latest = fold_folder / "checkpoint_latest.pth"
    checkpoint = None
    if resume:
        # checkpoint_latest.pth of an unfinished run; else, as nnU-Net's --c does, a finished run's
        # checkpoint_final.pth when more epochs are asked for than it trained
        final = fold_folder / "checkpoint_final.pth"
        if latest.is_file():
            checkpoint = load_checkpoint(latest)  # a corrupt file stops here, before anything is written
        elif final.is_file():
            checkpoint = load_checkpoint(final)
            if int(checkpoint["current_epoch"]) >= config.epochs:
                raise TrainingError(f"nothing to resume: {final} finished epoch {checkpoint['current_epoch']} of "
                                    f"{config.epochs}; ask for more epochs (--epochs) to continue it")
        else:
            raise TrainingError(f"nothing to resume: neither {latest} nor {final} exists")
    pretrained = load_checkpoint(Path(pretrained_weights)) if pretrained_weights else None

    torch.manual_seed(config.seed + distributed.rank)
    network = build_network(plans, cfg, len(channels), num_outputs, deep_supervision=True).to(device)
    if pretrained is not None:
        _load_pretrained(network, network_state(pretrained), Path(pretrained_weights))
    optimizer = make_optimizer(network, lr=config.initial_lr, weight_decay=config.weight_decay)
    schedule = PolyLR(optimizer, config.initial_lr, config.epochs)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    loss_fn = build_loss(regions=regions is not None, batch_dice=bool(cfg.get("batch_dice", True)),
                         ignore_label=spec.ignore_label, deep_supervision_outputs=len(scales),
                         coarsest_weight=1e-6 if distributed.active and not config.compile else 0.0)  # as nnU-Net under DDP
    logbook, best_ema, start_epoch = Logbook(), None, 0
    if checkpoint is not None:
        network.load_state_dict(network_state(checkpoint))
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        if scaler is not None and checkpoint.get("grad_scaler_state") is not None:
            scaler.load_state_dict(checkpoint["grad_scaler_state"])
        logbook.values = checkpoint["logging"]
        logbook.wait_fractions = list(checkpoint.get("fastseg", {}).get("wait_fractions", []))
        best_ema, start_epoch = checkpoint["_best_ema"], int(checkpoint["current_epoch"])
    # Compiled on the CPU, the network runs in channels-last layout: the fused graph's convolutions
    # then need no layout conversions (about 1.35x (3D) to 1.5x (2D) the eager fp32 step here).
    layout = None
    if config.compile and device.type == "cpu":
        layout = torch.channels_last if len(cfg["patch_size"]) == 2 else torch.channels_last_3d
        network.to(memory_format=layout)
    model = torch.nn.parallel.DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None) \
        if distributed.active else network
    if config.compile:
        model = torch.compile(model)

    if is_main:
        model_folder.mkdir(parents=True, exist_ok=True)
        fold_folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(plans, model_folder / "plans.json")
        write_json_atomic(dataset_json, model_folder / "dataset.json")
        if (work_dir / "dataset_fingerprint.json").is_file():
            write_json_atomic(json.loads((work_dir / "dataset_fingerprint.json").read_text()), model_folder / "dataset_fingerprint.json")
    log_file = fold_folder / "training_log.txt"

    def note(text: str) -> None:
        if is_main:
            logger.info("%s", text)
            with open(log_file, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {text}\n")

    batch, oversample = _rank_batch(int(config.batch_size or cfg["batch_size"]), config.oversample_foreground_percent, distributed)
    mirror_axes = None
    init_args = {"plans": plans, "configuration": configuration, "fold": fold, "dataset_json": dataset_json,
                 "device": str(device)}
    # CUDA: fp16 autocast with the grad scaler, as nnU-Net; CPU: bf16 autocast where it pays (AMX) or asked
    amp = (True, torch.float16) if device.type == "cuda" else \
        (resolve_precision(config.cpu_precision, device) == "bf16", torch.bfloat16)

    def save(path: Path, epoch: int) -> None:
        if is_main:
            save_checkpoint(path, network=network, optimizer=optimizer, grad_scaler=scaler, logging=logbook.values,
                            best_ema=best_ema, current_epoch=epoch, init_args=init_args, trainer_name=TRAINER_NAME,
                            mirror_axes=mirror_axes,
                            extra={"config": asdict(config), "wait_fractions": logbook.wait_fractions, "fold": str(fold)})

    note(f"training {configuration} fold {fold}: {len(train_ids)} training and {len(val_ids)} validation cases, "
         f"batch {batch}{f' per process ({distributed.world_size} processes)' if distributed.active else ''}, "
         f"patch {cfg['patch_size']}, device {device}{' (bf16 autocast)' if device.type == 'cpu' and amp[0] else ''}, epochs {start_epoch}..{config.epochs - 1}")
    show = sys.stderr.isatty() if progress is None else progress
    for epoch in range(start_epoch, config.epochs):
        logbook.log("epoch_start_timestamps", time.time(), epoch)
        model.train()
        schedule.step(epoch)
        logbook.log("lrs", optimizer.param_groups[0]["lr"], epoch)
        try:
            loader = make_training_loader(work_dir, configuration, train_ids, device=str(device), workers=config.workers,
                                          seed=_epoch_seed(config.seed, epoch, distributed.rank, 0), batch_size=batch,
                                          oversample_foreground_percent=oversample)
        except LoaderError as err:
            raise TrainingError(str(err)) from None
        if mirror_axes is None:
            from fastseg.data.sampling import augmentation_setup

            mirror_axes = tuple(augmentation_setup(tuple(cfg["patch_size"])).mirror_axes)
        losses = []
        with loader:
            bar = tqdm(range(config.iterations_per_epoch), desc=f"epoch {epoch}", disable=not (show and is_main), leave=False)
            for _ in bar:
                data, targets = next(loader)
                if layout is not None:
                    data = data.contiguous(memory_format=layout)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=amp[1], enabled=amp[0]):
                    loss = loss_fn(model(data), targets)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
                    optimizer.step()
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            wait = loader.stats.wait_fraction
        train_loss = _mean_over_ranks(losses, distributed)
        logbook.log("train_losses", train_loss, epoch)

        model.eval()
        val_losses, tp, fp, fn = [], 0.0, 0.0, 0.0
        if config.val_iterations > 0 and val_ids:
            val_loader = make_training_loader(work_dir, configuration, val_ids, device=str(device), workers=config.workers,
                                              seed=_epoch_seed(config.seed, epoch, distributed.rank, 1), batch_size=batch,
                                              augment=False, oversample_foreground_percent=oversample)
            with val_loader, torch.no_grad():
                for _ in range(config.val_iterations):
                    data, targets = next(val_loader)
                    if layout is not None:
                        data = data.contiguous(memory_format=layout)
                    with torch.autocast(device.type, dtype=amp[1], enabled=amp[0]):
                        output = model(data)
                        val_losses.append(float(loss_fn(output, targets)))
                    counts = _pseudo_dice_counts(output[0].float(), targets[0], regions is not None, spec.ignore_label)
                    tp, fp, fn = tp + counts[0], fp + counts[1], fn + counts[2]
            tp, fp, fn = (_sum_over_ranks(np.asarray(a, dtype=np.float64), distributed) for a in (tp, fp, fn))
            dice = [float(2 * a / (2 * a + b + c)) if (2 * a + b + c) > 0 else float("nan") for a, b, c in zip(tp, fp, fn)]
            mean_dice = float(np.nanmean(dice)) if not all(math.isnan(d) for d in dice) else 0.0
            logbook.log("val_losses", _mean_over_ranks(val_losses, distributed), epoch)
            logbook.log("dice_per_class_or_region", dice, epoch)
            logbook.log("mean_fg_dice", mean_dice, epoch)
        else:
            logbook.log("val_losses", float("nan"), epoch)
            logbook.log("dice_per_class_or_region", [], epoch)
            logbook.log("mean_fg_dice", 0.0, epoch)
        logbook.log("epoch_end_timestamps", time.time(), epoch)
        logbook.wait_fractions.append(wait)
        v = logbook.values
        note(f"epoch {epoch}: lr {v['lrs'][epoch]:.5f}, train loss {v['train_losses'][epoch]:.4f}, val loss "
             f"{v['val_losses'][epoch]:.4f}, pseudo dice {[round(d, 4) for d in v['dice_per_class_or_region'][epoch]]}, "
             f"EMA {v['ema_fg_dice'][epoch]:.4f}, {v['epoch_end_timestamps'][epoch] - v['epoch_start_timestamps'][epoch]:.1f} s, "
             f"loader wait {100 * wait:.1f} %")
        if (epoch + 1) % config.save_every == 0 and epoch != config.epochs - 1:
            save(latest, epoch + 1)
        ema = v["ema_fg_dice"][epoch]
        if best_ema is None or ema > best_ema:
            best_ema = ema
            save(fold_folder / "checkpoint_best.pth", epoch + 1)
        if is_main:
            logbook.plot(fold_folder / "progress.png")

    save(fold_folder / "checkpoint_final.pth", config.epochs)
    if is_main and latest.is_file():
        latest.unlink()
    note("training done")
    if distributed.active:
        torch.distributed.barrier()
    if config.final_validation and is_main and val_ids:
        _final_validation(model_folder, fold, val_ids, work_dir, dataset_json, config, note)
    return fold_folder


def _load_pretrained(network, state: dict, path: Path) -> None:
    own = network.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        raise TrainingError(f"{path}: its weights do not fit this configuration's network"
                            f"{'; missing ' + ', '.join(missing[:5]) if missing else ''}"
                            f"{'; other shapes for ' + ', '.join(wrong[:5]) if wrong else ''}")
    network.load_state_dict({k: state[k] for k in own})


def _mean_over_ranks(values: Sequence[float], dist: Distributed) -> float:
    total = np.array([float(np.sum(values)), float(len(values))])
    total = _sum_over_ranks(total, dist)
    return float(total[0] / total[1]) if total[1] else float("nan")


def _sum_over_ranks(array: np.ndarray, dist: Distributed) -> np.ndarray:
    if not dist.active:
        return array
    import torch

    tensor = torch.as_tensor(np.asarray(array, dtype=np.float64))
    torch.distributed.all_reduce(tensor)
    return tensor.numpy()


def _final_validation(model_folder: Path, fold, val_ids: Sequence[str], work_dir: Path, dataset_json: dict,
                      config: TrainConfig, note) -> None:
    """Predicts the fold's validation cases from the raw images and scores them (validation/summary.json)."""
    from fastseg.evaluate import evaluate_folders
    from fastseg.predict.inputs import find_cases
    from fastseg.predict.predictor import Predictor

    source = json.loads((work_dir / "source.json").read_text()) if (work_dir / "source.json").is_file() else {}
    raw = Path(source.get("raw_dataset_dir", ""))
    if not (raw / "imagesTr").is_dir():
        note(f"final validation skipped: the raw dataset ({raw}) is not there")
        return
    predictor = Predictor.from_model_folder(model_folder, (fold,), config.device, checkpoint="final")
    ending = dataset_json.get("file_ending", ".nii.gz")
    cases, problems = find_cases([str(raw / "imagesTr")], predictor.model.num_input_channels, ending)
    wanted = set(val_ids)
    cases = [c for c in cases if c.identifier in wanted]
    out = model_folder / f"fold_{fold}" / "validation"
    outputs = [out / f"{c.identifier}{ending}" for c in cases]
    report = predictor.predict_cases(cases, outputs, save_probabilities=config.save_probabilities)
    if report.failed:
        note(f"final validation: {len(report.failed)} case(s) failed: {report.failed}")
    summary = evaluate_folders(out, raw / "labelsTr", dataset_json, output=out / "summary.json",
                               cases=[c.identifier for c in cases if c.identifier not in report.failed])
    note(f"final validation: {len(cases)} cases, foreground mean Dice {summary['foreground_mean']['Dice']:.4f} "
         f"-> {out / 'summary.json'}")
