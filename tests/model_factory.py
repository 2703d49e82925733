"""Small trained models in nnU-Net v2's model-folder layout, for the predictor tests.

A synthetic dataset is planned and preprocessed by fastseg (whose plans equal nnU-Net's planner's),
the configuration's network is built from the plans with dynamic-network-architectures and trained
for a few dozen iterations by a plain torch loop (cross-entropy, or BCE for region-based datasets)
on random patches, so that its predictions are not trivial. The checkpoint has nnU-Net's keys, so
nnU-Net's own predictor loads the folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

TRAINER = "nnUNetTrainer"


def _random_patch(data: np.ndarray, seg: np.ndarray, patch: tuple[int, ...], rng: np.random.Generator):
    """A random patch (C, *patch) of a (C, z, y, x) case; 2D patches come from one slice."""
    if len(patch) == 2:
        z = rng.integers(data.shape[1])
        data, seg = data[:, z], seg[:, z]
    pads = [(0, 0)] + [(0, max(0, p - s)) for p, s in zip(patch, data.shape[1:])]
    data = np.pad(data, pads)
    seg = np.pad(seg, pads)
    starts = [rng.integers(0, s - p + 1) for s, p in zip(data.shape[1:], patch)]
    sl = (slice(None),) + tuple(slice(a, a + p) for a, p in zip(starts, patch))
    return data[sl], seg[sl]


def train_model_folder(
    raw: Path,
    work: Path,
    model_dir: Path,
    configuration: str,
    *,
    iterations: int = 40,
    trainer_name: str = TRAINER,
    seed: int = 0,
    width_divisor: int = 8,
) -> Path:
    """Plans, preprocesses and trains `configuration` of the raw dataset; writes the model folder.

    The model's plans are the planner's with `width_divisor` times fewer features per stage (a
    narrower network of the same topology, so tests run fast); preprocessing does not depend on it.

    Returns:
        `model_dir` (`<model_dir>/fold_0/checkpoint_final.pth`, plans.json, dataset.json).
    """
    import torch

    from fastseg.io.labels import LabelSpec
    from fastseg.predict.model import ModelFolder, build_network
    from fastseg.workflow import prepare_dataset

    if not (work / "plans.json").is_file():
        prepare_dataset(raw, work, configurations=(configuration,), num_processes=1, progress=False)
    plans = json.loads((work / "plans.json").read_text())
    dataset_json = json.loads((work / "dataset.json").read_text())
    cfg = plans["configurations"][configuration]
    arch = cfg["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [max(4, int(f) // width_divisor) for f in arch["features_per_stage"]]
    folder = work / cfg["data_identifier"]
    if not any(folder.glob("*.npy")):
        prepare_dataset(raw, work, configurations=(configuration,), num_processes=1, progress=False)
    cases = sorted(p.name[: -len(".json")] for p in folder.glob("*.json"))
    data = [np.load(folder / f"{c}.npy") for c in cases]
    segs = [np.load(folder / f"{c}_seg.npy") for c in cases]

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ModelFolder(model_dir, plans, dataset_json, configuration, trainer_name, [], [], ())
    net = build_network(model)
    spec = LabelSpec.from_json(dataset_json["labels"], dataset_json.get("regions_class_order"))
    regions = spec.regions if spec.has_regions else None
    patch = tuple(int(p) for p in cfg["patch_size"])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(iterations):
        picks = rng.integers(len(cases), size=2)
        pairs = [_random_patch(data[i], segs[i], patch, rng) for i in picks]
        x = torch.from_numpy(np.stack([p[0] for p in pairs]).astype(np.float32))
        y = np.stack([p[1][0] for p in pairs]).astype(np.int64)
        y[y < 0] = 0
        out = net(x)
        if regions is None:
            loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(y))
        else:
            target = np.stack([np.isin(y, r if isinstance(r, tuple) else (r,)) for r in regions], axis=1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out, torch.from_numpy(target.astype(np.float32)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()

    fold = model_dir / "fold_0"
    fold.mkdir(parents=True, exist_ok=True)
    (model_dir / "plans.json").write_text(json.dumps(plans, indent=4))
    shutil.copyfile(work / "dataset.json", model_dir / "dataset.json")
    checkpoint = {
        "network_weights": net.state_dict(),
        "optimizer_state": opt.state_dict(),
        "grad_scaler_state": None,
        "logging": {},
        "_best_ema": None,
        "current_epoch": 1,
        "init_args": {"plans": plans, "configuration": configuration, "fold": 0, "dataset_json": dataset_json},
        "trainer_name": trainer_name,
        "inference_allowed_mirroring_axes": tuple(range(len(patch))),
    }
    torch.save(checkpoint, fold / "checkpoint_final.pth")
    return model_dir


def copy_with_trainer_name(model_dir: Path, out: Path, trainer_name: str) -> Path:
    """The model folder under another trainer name (in the folder name and the checkpoints)."""
    import torch

    shutil.copytree(model_dir, out)
    for ckpt in out.glob("fold_*/checkpoint_*.pth"):
        content = torch.load(ckpt, map_location="cpu", weights_only=False)
        content["trainer_name"] = trainer_name
        torch.save(content, ckpt)
    return out
