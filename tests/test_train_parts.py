"""fastseg.train's building blocks against nnunetv2's own: losses (values and gradients), the
learning-rate schedule and optimizer, cross-validation splits, networks from the plans (weights under
the same seed) and checkpoints (nnU-Net's keys, atomic writes, damaged files)."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from fastseg.train.checkpoint import (
    FASTSEG_KEY,
    NNUNET_KEYS,
    CheckpointError,
    load_checkpoint,
    network_state,
    save_checkpoint,
)
from fastseg.train.loss import build_loss, deep_supervision_weights
from fastseg.train.network import build_network
from fastseg.train.schedule import PolyLR, make_optimizer, poly_lr
from fastseg.train.splits import SplitsError, fold_cases, load_or_make_splits, make_splits

nnunet_loss = pytest.importorskip("nnunetv2.training.loss.compound_losses", reason="nnunetv2 not installed")


# --- losses -------------------------------------------------------------------------------------


def _nnunet_loss(regions: bool, batch_dice: bool, ignore_label: int | None, outputs: int | None):
    """The loss nnunetv2's `nnUNetTrainer._build_loss` builds (no DDP, no compile)."""
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    if regions:
        loss = DC_and_BCE_loss({}, {"batch_dice": batch_dice, "do_bg": True, "smooth": 1e-5, "ddp": False},
                               use_ignore_label=ignore_label is not None, dice_class=MemoryEfficientSoftDiceLoss)
    else:
        loss = DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                              weight_ce=1, weight_dice=1, ignore_label=ignore_label, dice_class=MemoryEfficientSoftDiceLoss)
    if outputs is None:
        return loss
    weights = np.array([1 / (2**i) for i in range(outputs)])
    weights[-1] = 0
    return DeepSupervisionWrapper(loss, weights / weights.sum())


def _shapes(spatial: tuple[int, ...], outputs: int) -> list[tuple[int, ...]]:
    """Spatial shapes of deep-supervision outputs, halving every axis per scale."""
    return [tuple(max(1, s // 2**i) for s in spatial) for i in range(outputs)]


def _batch(gen: torch.Generator, regions: bool, ignore_label: int | None, spatial: tuple, outputs: int, channels: int = 4,
           batch: int = 2, scale: float = 1.0, target_dtype=torch.int16):
    """Random logits (leaf tensors) and targets at each scale."""
    logits, targets = [], []
    for shape in _shapes(spatial, outputs):
        logits.append((torch.randn((batch, channels, *shape), generator=gen) * scale).requires_grad_())
        if regions:
            t = torch.rand((batch, channels, *shape), generator=gen) < 0.4
            if ignore_label is not None:
                t = torch.cat([t, torch.rand((batch, 1, *shape), generator=gen) < 0.25], 1)
        else:
            t = torch.randint(0, channels, (batch, 1, *shape), generator=gen)
            if ignore_label is not None:
                t[torch.rand(t.shape, generator=gen) < 0.25] = ignore_label
            t = t.to(target_dtype)
        targets.append(t)
    return logits, targets


def _value_and_grads(loss_fn, logits, targets):
    inputs = [x.detach().clone().requires_grad_() for x in logits]
    value = loss_fn(inputs if len(inputs) > 1 else inputs[0], targets if len(targets) > 1 else targets[0])
    value.backward()
    return value.detach(), [x.grad for x in inputs]


def _assert_same(ours, theirs):
    """Values and gradients bit for bit: the same operations run in the same order."""
    (value, grads), (ref_value, ref_grads) = ours, theirs
    torch.testing.assert_close(value, ref_value, rtol=0, atol=0)
    for k, (g, ref) in enumerate(zip(grads, ref_grads)):
        if ref is None:  # the coarsest output has weight 0: nnU-Net never computes its loss
            assert g is None, f"output {k}: gradient where nnU-Net has none"
        else:
            torch.testing.assert_close(g, ref, rtol=0, atol=0, msg=lambda m: f"output {k}: {m}")


@pytest.mark.parametrize("regions", [pytest.param(False, id="labels"), pytest.param(True, id="regions")])
@pytest.mark.parametrize("ignore", [pytest.param(False, id="no-ignore"), pytest.param(True, id="ignore")])
@pytest.mark.parametrize("batch_dice", [pytest.param(True, id="batch-dice"), pytest.param(False, id="sample-dice")])
@pytest.mark.parametrize(
    "spatial, outputs, scale",
    [
        pytest.param((20, 18), 4, 1.0, id="2d-4-outputs"),
        pytest.param((8, 12, 10), 3, 5.0, id="3d-3-outputs-large-logits"),
        pytest.param((9, 7, 6), None, 0.1, id="3d-single-output"),
    ],
)
def test_loss_equals_nnunet(regions, ignore, batch_dice, spatial, outputs, scale):
    ignore_label = 4 if ignore else None
    gen = torch.Generator().manual_seed(hash((regions, ignore, batch_dice, spatial)) % 2**31)
    logits, targets = _batch(gen, regions, ignore_label, spatial, outputs or 1, scale=scale,
                             target_dtype=torch.float32 if len(spatial) == 3 else torch.int16)
    ours = build_loss(regions=regions, batch_dice=batch_dice, ignore_label=ignore_label, deep_supervision_outputs=outputs)
    theirs = _nnunet_loss(regions, batch_dice, ignore_label, outputs)
    _assert_same(_value_and_grads(ours, logits, targets), _value_and_grads(theirs, logits, targets))


@pytest.mark.parametrize("regions", [pytest.param(False, id="labels"), pytest.param(True, id="regions")])
def test_loss_equals_nnunet_when_everything_is_ignored(regions):
    """A patch of ignore label only: no cross-entropy term (labels), an empty mask (regions)."""
    gen = torch.Generator().manual_seed(3)
    logits, targets = _batch(gen, regions, 4, (6, 6, 5), 1)
    if regions:
        targets[0][:, -1] = True
    else:
        targets[0][:] = 4
    ours = build_loss(regions=regions, batch_dice=True, ignore_label=4, deep_supervision_outputs=None)
    theirs = _nnunet_loss(regions, True, 4, None)
    result = _value_and_grads(ours, logits, targets)
    assert torch.isfinite(result[0])
    _assert_same(result, _value_and_grads(theirs, logits, targets))


def test_deep_supervision_weights_are_nnunets():
    assert deep_supervision_weights(4) == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0])
    assert deep_supervision_weights(2) == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"at least 2 network outputs \(the coarsest gets weight 0\), got 1"):
        deep_supervision_weights(1)


def test_loss_rejects_mismatched_inputs():
    loss = build_loss(regions=False, batch_dice=True, ignore_label=None, deep_supervision_outputs=3)
    x = [torch.zeros(1, 3, 4, 4)] * 2
    with pytest.raises(ValueError, match="expects 3 outputs and targets, got 2 outputs"):
        loss(x, [torch.zeros(1, 1, 4, 4)] * 2)
    with pytest.raises(TypeError, match="lists of outputs and targets"):
        loss(x[0], torch.zeros(1, 1, 4, 4))
    plain = build_loss(regions=True, batch_dice=True, ignore_label=2, deep_supervision_outputs=None)
    with pytest.raises(ValueError, match=r"\(B, 4, \*spatial\)"):
        plain(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4, dtype=torch.bool))


# --- schedule and optimizer ---------------------------------------------------------------------


@pytest.mark.parametrize("epochs", [pytest.param(1, id="1-epoch"), pytest.param(7, id="7-epochs"), pytest.param(1000, id="1000-epochs")])
def test_poly_lr_equals_nnunet(epochs):
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

    param = torch.nn.Parameter(torch.zeros(1))
    ours_opt, ref_opt = (torch.optim.SGD([param], lr=1e-2) for _ in range(2))
    ours, ref = PolyLR(ours_opt, 1e-2, epochs), PolyLRScheduler(ref_opt, 1e-2, epochs)
    assert ours_opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"] == 1e-2
    for epoch in list(range(epochs)) + [epochs // 2, 0]:  # stepped by the epoch number, as the trainer does
        ours.step(epoch)
        ref.step(epoch)
        assert ours_opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"], epoch
        assert ours.get_last_lr() == ref.get_last_lr()
    for _ in range(min(epochs, 5)):  # stepped without an epoch: each its own count
        ours.step()
        ref.step()
        assert ours_opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
    with pytest.raises(ValueError, match=rf"epoch must be in \[0, {epochs}\]"):
        ours.step(epochs + 1)
    assert poly_lr(1e-2, epochs, epochs) == 0


def test_make_optimizer_equals_nnunets():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Conv2d(2, 2, 1))
    ref_opt, _ = nnUNetTrainer.configure_optimizers(
        types.SimpleNamespace(network=net, initial_lr=1e-2, weight_decay=3e-5, num_epochs=1000)
    )
    ours = make_optimizer(net)
    PolyLR(ours, 1e-2, 1000)
    assert type(ours) is type(ref_opt)
    assert ours.state_dict()["param_groups"] == ref_opt.state_dict()["param_groups"]
    with pytest.raises(ValueError, match="momentum must be in"):
        make_optimizer(net, momentum=0)


# --- splits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [pytest.param(n, id=f"{n}-cases") for n in (5, 6, 7, 9, 10, 11, 13, 16, 19, 23)])
def test_make_splits_equals_nnunet(n):
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    cases = [f"case{i}" for i in np.random.default_rng(n).permutation(n)]  # unsorted, "case10" < "case2"
    ref = generate_crossval_split(list(np.sort(cases)), seed=12345, n_splits=5)
    ours = make_splits(cases)
    assert ours == [{"train": [str(c) for c in s["train"]], "val": [str(c) for c in s["val"]]} for s in ref]
    assert sorted(c for s in ours for c in s["val"]) == sorted(cases)


def test_make_splits_rejects_too_few_or_repeated_cases():
    with pytest.raises(ValueError, match="cannot split 3 cases into 5 folds"):
        make_splits(["a", "b", "c"])
    with pytest.raises(ValueError, match=r"unique, got \['b'\]"):
        make_splits(["a", "b", "b", "c", "d", "e"])


def test_load_or_make_splits_writes_then_reads(tmp_path):
    cases = [f"c{i:02d}" for i in range(8)]
    path = tmp_path / "splits_final.json"
    made = load_or_make_splits(path, cases)
    assert json.loads(path.read_text()) == made == make_splits(cases)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    custom = [{"train": cases[:6], "val": cases[6:]}]
    path.write_text(json.dumps(custom))
    assert load_or_make_splits(path, cases) == custom  # an existing file is used as it is
    assert fold_cases(custom, 0) == (cases[:6], cases[6:])
    assert fold_cases(custom, "0") == (cases[:6], cases[6:])
    assert fold_cases(custom, "all") == (cases, cases)
    assert fold_cases(custom, "all", case_ids=cases + ["z"]) == (cases + ["z"], cases + ["z"])
    with pytest.raises(SplitsError, match=r"fold must be 'all' or a number in 0\.\.0 .* got 1"):
        fold_cases(custom, 1)
    with pytest.raises(SplitsError, match="got 'last'"):
        fold_cases(custom, "last")

    path.write_text(json.dumps([{"train": cases[:6] + ["ghost"], "val": cases[6:]}]))
    with pytest.raises(SplitsError, match=r"splits_final.json: fold 0 'train' names 1 case\(s\) .*\['ghost'\]"):
        load_or_make_splits(path, cases)
    path.write_text("[{")
    with pytest.raises(SplitsError, match="splits_final.json is not valid JSON"):
        load_or_make_splits(path, cases)
    path.write_text(json.dumps({"train": cases}))
    with pytest.raises(SplitsError, match="must hold a non-empty list"):
        load_or_make_splits(path, cases)


# --- networks -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plans(tmp_path_factory) -> dict:
    from helpers import planned_dataset

    _, work = planned_dataset(tmp_path_factory.mktemp("planned"))
    return json.loads((work / "plans.json").read_text())


def _residual(config: dict) -> dict:
    """The configuration with a ResidualEncoderUNet (nnU-Net's ResEnc presets' class) instead."""
    config = json.loads(json.dumps(config))
    arch = config["architecture"]
    arch["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    arch["arch_kwargs"]["n_blocks_per_stage"] = [1, 2, 2][: arch["arch_kwargs"]["n_stages"]]
    del arch["arch_kwargs"]["n_conv_per_stage"]
    return config


@pytest.mark.parametrize("name", ["2d", "3d_fullres", pytest.param("3d_fullres-residual", id="3d_fullres-residual")])
def test_build_network_equals_nnunet(plans, name):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from fastseg.data.targets import deep_supervision_scales
    from fastseg.plan.plans import resolve_configuration

    config = resolve_configuration(plans, name.split("-")[0])
    if name.endswith("residual"):
        config = _residual(config)
    arch = config["architecture"]
    torch.manual_seed(1234)
    ref = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 2, 5,
                                 allow_init=True, deep_supervision=True)
    torch.manual_seed(1234)
    ours = build_network(plans, config, 2, 5, deep_supervision=True)
    assert type(ours) is type(ref)
    ref_state, our_state = ref.state_dict(), ours.state_dict()
    assert list(our_state) == list(ref_state)
    for key in ref_state:
        assert our_state[key].shape == ref_state[key].shape, key
        assert torch.equal(our_state[key], ref_state[key]), f"{key}: weights differ from nnU-Net's under the same seed"
    convs = [m for m in ours.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d,
                                                         torch.nn.ConvTranspose3d))]
    assert convs and all(m.bias is None or not m.bias.any() for m in convs)  # He init zeroes biases
    big = max(convs, key=lambda m: m.weight.numel()).weight  # He-normal: std = sqrt(2 / (1 + 0.01^2) / fan_in)
    fan_in = big.shape[1] * big[0, 0].numel()
    assert float(big.detach().std()) == pytest.approx((2 / (1 + 1e-4) / fan_in) ** 0.5, rel=0.05)
    if name.endswith("residual"):  # the last norm of every residual block starts at 0
        from dynamic_network_architectures.building_blocks.residual import BasicBlockD

        blocks = [m for m in ours.modules() if isinstance(m, BasicBlockD)]
        assert blocks and all(not b.conv2.norm.weight.any() for b in blocks)
    # training-mode outputs: one per deep-supervision scale, as the loss expects them
    x = torch.zeros((1, 2, *config["patch_size"]))
    with torch.no_grad():
        outputs = ours(x)
    scales = deep_supervision_scales(config)
    assert len(outputs) == len(scales)
    assert [tuple(o.shape[2:]) for o in outputs] == [tuple(round(p * s) for p, s in zip(config["patch_size"], sc)) for sc in scales]
    assert not isinstance(build_network(plans, name.split("-")[0], 2, 5, deep_supervision=False).eval()(x), (list, tuple))


def test_build_network_errors(plans):
    config = json.loads(json.dumps(plans["configurations"]["2d"]))
    with pytest.raises(ValueError, match="num_outputs must be at least 1, got 0"):
        build_network(plans, config, 1, 0)
    config["architecture"]["arch_kwargs"]["norm_op"] = "torch.nn.NoSuchNorm"
    with pytest.raises(ValueError, match="'torch.nn.NoSuchNorm' \\(norm_op\\), which cannot be imported"):
        build_network(plans, config, 1, 2)
    del config["architecture"]
    with pytest.raises(ValueError, match="no 'architecture' entry"):
        build_network(plans, config, 1, 2)


# --- checkpoints --------------------------------------------------------------------------------


def _trained(plans):
    torch.manual_seed(0)
    net = build_network(plans, "2d", 1, 3)
    opt = make_optimizer(net)
    PolyLR(opt, 1e-2, 10).step(3)
    loss = build_loss(regions=False, batch_dice=True, ignore_label=None, deep_supervision_outputs=2)
    outputs = net(torch.randn(2, 1, 28, 24))
    loss(outputs, [torch.randint(0, 3, (2, 1, *o.shape[2:])) for o in outputs]).backward()
    opt.step()
    return net, opt


def test_checkpoint_round_trip(plans, tmp_path):
    net, opt = _trained(plans)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    logging = {"train_losses": [np.float64(-0.25), 0.5], "ema_fg_dice": [np.float64(0.1)], "lrs": [0.01, 0.009]}
    init_args = {"plans": plans, "configuration": "2d", "fold": 0, "dataset_json": {"labels": {"background": 0}},
                 "device": torch.device("cpu")}
    extra = {"rng": {"numpy": np.random.default_rng(1).bit_generator.state, "torch": torch.get_rng_state()},
             "config": {"epochs": 10}, "sampler": np.arange(4, dtype=np.uint32)}
    path = tmp_path / "checkpoint_latest.pth"
    save_checkpoint(path, network=torch.compile(net), optimizer=opt, grad_scaler=scaler, logging=logging,
                    best_ema=np.float64(0.1), current_epoch=4, init_args=init_args, trainer_name="nnUNetTrainer",
                    mirror_axes=[0, 1], extra=extra)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]

    raw = torch.load(path, map_location="cpu", weights_only=False)
    assert list(raw) == list(NNUNET_KEYS) + [FASTSEG_KEY]
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in raw["network_weights"])
    assert raw["current_epoch"] == 4 and raw["inference_allowed_mirroring_axes"] == (0, 1)
    assert raw["grad_scaler_state"]["scale"] == 1024.0

    loaded = load_checkpoint(path)  # weights-only, numpy values allowed
    fresh = build_network(plans, "2d", 1, 3)
    fresh.load_state_dict(network_state(loaded))
    for key, value in net.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    opt2 = make_optimizer(fresh)
    opt2.load_state_dict(loaded["optimizer_state"])
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    assert loaded["logging"]["train_losses"] == logging["train_losses"]
    assert loaded["_best_ema"] == 0.1 and loaded["trainer_name"] == "nnUNetTrainer"
    assert loaded[FASTSEG_KEY]["rng"]["numpy"] == extra["rng"]["numpy"]
    assert np.array_equal(loaded[FASTSEG_KEY]["sampler"], extra["sampler"])

    # fastseg's predictor reads it as a model folder's checkpoint
    from fastseg.predict.model import load_model_folder, load_networks

    model = tmp_path / "model"
    (model / "fold_0").mkdir(parents=True)
    (model / "plans.json").write_text(json.dumps(plans))
    (model / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"},
                                                    "labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii.gz"}))
    path.replace(model / "fold_0" / "checkpoint_final.pth")
    folder = load_model_folder(model, folds=(0,))
    assert folder.configuration == "2d" and folder.mirror_axes == (0, 1)
    assert torch.equal(load_networks(folder)[0].state_dict()["decoder.seg_layers.0.weight"], net.state_dict()["decoder.seg_layers.0.weight"])


def test_network_state_strips_prefixes():
    w = torch.ones(1)
    state = network_state({"network_weights": {"module.a.weight": w, "_orig_mod.b": w, "c": w}})
    assert list(state) == ["a.weight", "b", "c"]
    with pytest.raises(CheckpointError, match="no 'network_weights'"):
        network_state({"optimizer_state": {}})


def test_damaged_checkpoints_name_the_file(plans, tmp_path):
    net, opt = _trained(plans)
    path = tmp_path / "checkpoint_best.pth"
    save_checkpoint(path, network=net, optimizer=opt, grad_scaler=None, logging={}, best_ema=None, current_epoch=1,
                    init_args={"configuration": "2d"}, trainer_name="nnUNetTrainer", mirror_axes=None, extra=None)
    assert FASTSEG_KEY not in load_checkpoint(path)
    whole = path.read_bytes()
    for label, content in [("truncated", whole[: len(whole) // 2]), ("garbage", b"not a checkpoint at all"),
                           ("empty", b"")]:
        bad = tmp_path / f"{label}.pth"
        bad.write_bytes(content)
        with pytest.raises(CheckpointError, match=rf"{bad.name} is truncated or corrupt and cannot be read as a checkpoint"):
            load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="missing.pth not found"):
        load_checkpoint(tmp_path / "missing.pth")
    other = tmp_path / "weights_only.pth"
    torch.save({"state_dict": net.state_dict()}, other)
    with pytest.raises(CheckpointError, match="no 'network_weights'"):
        load_checkpoint(other)


def test_checkpoint_with_other_objects_needs_trust(plans, tmp_path):
    net, opt = _trained(plans)
    path = tmp_path / "checkpoint_final.pth"
    with pytest.raises(ValueError, match="weights-only load refuses .*PosixPath"):
        save_checkpoint(path, network=net, optimizer=opt, grad_scaler=None, logging={}, best_ema=None, current_epoch=1,
                        init_args={"configuration": "2d", "out": Path("/x")}, trainer_name="t", mirror_axes=None)
    assert not list(tmp_path.iterdir())  # nothing written
    torch.save({"network_weights": net.state_dict(), "init_args": {"out": Path("/x")}}, path)  # as another tool might
    with pytest.raises(CheckpointError, match=r"checkpoint_final.pth holds objects .*PosixPath.*trusted=True"):
        load_checkpoint(path)
    assert load_checkpoint(path, trusted=True)["init_args"]["out"] == Path("/x")
