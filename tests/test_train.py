"""`fastseg train` end to end on a tiny synthetic dataset: loss goes down, exact resume after a kill,
nnU-Net's predictor runs the model folder, DDP with 2 gloo processes, clear errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import fastseg_script, planned_dataset, requires_cuda

from fastseg.train.checkpoint import load_checkpoint, network_state

SMALL = ["--iterations-per-epoch", "3", "--val-iterations", "2", "--workers", "1", "--no-compile"]
MODEL = "nnUNetTrainer__nnUNetPlans__3d_fullres"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    raw, work = planned_dataset(tmp_path_factory.mktemp("train"), preprocess_3d_fullres=True)
    return raw, work


def _train(work: Path, *args, env=None, check=True):
    run = subprocess.run([fastseg_script(), "train", str(work), "-c", "3d_fullres", *args], capture_output=True,
                         text=True, env=env, timeout=600)
    if check:
        assert run.returncode == 0, run.stderr[-3000:]
    return run


def _copy(work: Path, dest: Path) -> Path:
    shutil.copytree(work, dest, ignore=shutil.ignore_patterns("results"))
    source = json.loads((dest / "source.json").read_text())
    (dest / "source.json").write_text(json.dumps(source))
    return dest


def test_training_lowers_the_loss_and_writes_an_nnunet_model_folder(work, tmp_path):
    raw, work = work
    w = _copy(work, tmp_path / "w")
    _train(w, "-f", "all", "--epochs", "4", *SMALL)
    folder = w / "results" / MODEL
    fold = folder / "fold_all"
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        assert (folder / name).is_file()
    assert {p.name for p in fold.iterdir()} >= {"checkpoint_final.pth", "checkpoint_best.pth", "progress.png", "training_log.txt",
                                                  "validation"}
    assert not (fold / "checkpoint_latest.pth").exists()
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert {"network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema", "current_epoch", "init_args",
            "trainer_name", "inference_allowed_mirroring_axes"} <= set(ckpt)
    assert ckpt["current_epoch"] == 4 and ckpt["trainer_name"] == "nnUNetTrainer"
    losses = ckpt["logging"]["train_losses"]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 3

    # nnU-Net's own predictor loads the folder (it imports the trainer class by name) and predicts
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, device=torch.device("cpu"),
                                verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), ("all",), "checkpoint_final.pth")
    out = tmp_path / "nnunet_pred"
    predictor.predict_from_files(str(raw / "imagesTr"), str(out), save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=1, num_processes_segmentation_export=1)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(p.name for p in (raw / "labelsTr").glob("*.nii.gz"))


def test_resume_after_a_kill_equals_the_uninterrupted_run(work, tmp_path):
    _, work = work
    args = ["-f", "all", "--epochs", "6", "--save-every", "2", "--no-final-validation", *SMALL]
    whole = _copy(work, tmp_path / "whole")
    _train(whole, *args)

    broken = _copy(work, tmp_path / "broken")
    latest = broken / "results" / MODEL / "fold_all" / "checkpoint_latest.pth"
    proc = subprocess.Popen([fastseg_script(), "train", str(broken), "-c", "3d_fullres", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not latest.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert latest.exists(), "the run ended before its first checkpoint_latest.pth"
    assert not (latest.parent / "checkpoint_final.pth").exists()
    _train(broken, *args, "--resume")

    a = load_checkpoint(whole / "results" / MODEL / "fold_all" / "checkpoint_final.pth")
    b = load_checkpoint(broken / "results" / MODEL / "fold_all" / "checkpoint_final.pth")
    wa, wb = network_state(a), network_state(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    for sa, sb in zip(a["optimizer_state"]["state"].values(), b["optimizer_state"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert a["logging"]["train_losses"] == b["logging"]["train_losses"]


def test_ddp_with_two_gloo_processes_follows_the_single_process_run(work, tmp_path):
    _, work = work
    args = ["-f", "all", "--epochs", "2", "--no-final-validation", *SMALL]
    single = _copy(work, tmp_path / "single")
    _train(single, *args)
    ddp = _copy(work, tmp_path / "ddp")
    from fastseg.runtime.workers import child_import_environment

    env = child_import_environment({**os.environ, "OMP_NUM_THREADS": "1"})  # `-m` from the repository root
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                          "-m", "fastseg.cli", "train", str(ddp), "-c", "3d_fullres", *args], capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    a = load_checkpoint(single / "results" / MODEL / "fold_all" / "checkpoint_final.pth")
    b = load_checkpoint(ddp / "results" / MODEL / "fold_all" / "checkpoint_final.pth")
    la, lb = np.array(a["logging"]["train_losses"]), np.array(b["logging"]["train_losses"])
    assert lb[-1] < lb[0]
    np.testing.assert_allclose(lb, la, rtol=0.1)  # other batches (per-rank seeds), the same recipe


def test_bad_input_is_a_clear_error_and_nothing_is_overwritten(work, tmp_path):
    _, work = work
    w = _copy(work, tmp_path / "bad")
    run = subprocess.run([fastseg_script(), "train", str(w), "-c", "2d", "-f", "all"], capture_output=True, text=True)
    assert run.returncode != 0 and "fastseg preprocess" in run.stderr and "Traceback" not in run.stderr
    cases = ["case_0000", "case_0001", "case_0002"]
    (w / "splits_final.json").write_text(json.dumps([{"train": cases[:2], "val": cases[2:]}, {"train": cases[1:], "val": cases[:1]}]))
    run = _train(w, "-f", "3", "--epochs", "1", check=False)
    assert run.returncode != 0 and "got 3" in run.stderr and "splits_final.json" in run.stderr and "Traceback" not in run.stderr, run.stderr
    fold = w / "results" / MODEL / "fold_all"
    fold.mkdir(parents=True)
    (fold / "checkpoint_latest.pth").write_bytes(b"not a checkpoint")
    run = _train(w, "-f", "all", "--epochs", "1", "--resume", check=False)
    assert run.returncode != 0 and "checkpoint_latest.pth" in run.stderr and "Traceback" not in run.stderr
    assert (fold / "checkpoint_latest.pth").read_bytes() == b"not a checkpoint"
    assert sorted(p.name for p in fold.iterdir()) == ["checkpoint_latest.pth"]


def test_training_continues_from_a_checkpoint_that_nnunet_wrote(work, tmp_path):
    """nnU-Net's own trainer (`nnUNetv2_train`'s entry point, 2 epochs of 2 iterations) writes
    checkpoint_final.pth; `fastseg train --resume` takes it as nnU-Net's `--c` would: the weights,
    optimizer and logging carry over unchanged, and training goes on at epoch 2 with the poly LR."""
    from fastseg.benchmark.loader import nnunet_reference

    _, work = work
    from fastseg.runtime.workers import child_import_environment

    env = child_import_environment({**os.environ, "OMP_NUM_THREADS": "1", "nnUNet_n_proc_DA": "0", "nnUNet_compile": "false"})
    pre = nnunet_reference(work, "3d_fullres", 1, env)
    results = tmp_path / "nnUNet_results"
    run = subprocess.run([sys.executable, "-m", "fastseg.benchmark.nnunet_train", "--preprocessed", str(pre), "--results",
                          str(results), "-c", "3d_fullres", "-f", "all", "--epochs", "2", "--iterations", "2",
                          "--val-iterations", "1", "--threads", "1", "--json", str(tmp_path / "record.json")],
                         capture_output=True, text=True, encoding="utf-8", errors="replace", env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (theirs_file,) = results.rglob("fold_all/checkpoint_final.pth")
    theirs = load_checkpoint(theirs_file)
    assert theirs["current_epoch"] == 2 and "fastseg" not in theirs

    def continued(name: str, epochs: int, as_name: str) -> dict:
        w = folders[name] = _copy(work, tmp_path / name)
        fold = w / "results" / MODEL / "fold_all"
        fold.mkdir(parents=True)
        shutil.copy(theirs_file, fold / as_name)
        _train(w, "-f", "all", "--resume", "--epochs", str(epochs), "--no-final-validation", *SMALL)
        return load_checkpoint(fold / "checkpoint_final.pth")

    folders: dict[str, Path] = {}
    # as checkpoint_latest.pth with nothing left to train: it comes back out as it went in
    same = continued("same", 2, "checkpoint_latest.pth")
    for k, v in network_state(theirs).items():
        assert torch.equal(network_state(same)[k], v), k
    for sa, sb in zip(theirs["optimizer_state"]["state"].values(), same["optimizer_state"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    # one more epoch: nnU-Net's two epochs of logging, then fastseg's, at the poly LR of epoch 2 of 3
    more = continued("more", 3, "checkpoint_final.pth")
    logging = more["logging"]
    assert more["current_epoch"] == 3 and len(logging["train_losses"]) == 3
    for key in ("train_losses", "lrs", "epoch_start_timestamps"):
        np.testing.assert_array_equal(np.asarray(logging[key][:2], dtype=float), np.asarray(theirs["logging"][key], dtype=float))
    assert logging["lrs"][2] == pytest.approx(1e-2 * (1 - 2 / 3) ** 0.9)
    assert np.isfinite(logging["train_losses"][2])
    assert any(not torch.equal(network_state(more)[k], v) for k, v in network_state(theirs).items())
    # a finished run asked for no more epochs: a clear error, the checkpoint untouched
    final = folders["more"] / "results" / MODEL / "fold_all" / "checkpoint_final.pth"
    before = final.read_bytes()
    run = _train(folders["more"], "-f", "all", "--resume", "--epochs", "3", *SMALL, check=False)
    assert run.returncode != 0 and "finished epoch 3 of 3" in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert final.read_bytes() == before


def test_training_benchmark_runs_both_trainers_for_the_asked_length_into_scratch_folders(work):
    from fastseg.benchmark.train import benchmark_train, format_report

    _, work = work
    before = sorted(p.relative_to(work) for p in work.rglob("*") if ".nnunet_reference" not in p.parts)
    result = benchmark_train(work, "3d_fullres", epochs=2, iterations=2, val_iterations=1, workers=1, threads=1, compile=False)
    for run in (result.fastseg, result.nnunet):
        assert len(run.train_losses) == 2 and len(run.epoch_seconds) == 2 and all(np.isfinite(run.train_losses))
        assert run.iterations_per_second > 0 and 0 <= run.wait_fraction <= 1
    assert result.ratio == pytest.approx(result.fastseg.iterations_per_second / result.nnunet.iterations_per_second)
    assert "fastseg / nnU-Net" in format_report(result) and json.dumps(result.as_json())
    # the user's work folder gains nothing but nnU-Net's reference preprocessing
    assert sorted(p.relative_to(work) for p in work.rglob("*") if ".nnunet_reference" not in p.parts) == before


def test_compiled_channels_last_training_follows_the_eager_run(work, tmp_path):
    """The default run (torch.compile; channels-last on the CPU) takes the same steps as the eager
    one: the same losses to float rounding, weights that load into nnU-Net's network as they are."""
    _, work = work
    args = ["-f", "all", "--epochs", "2", "--no-final-validation", "--iterations-per-epoch", "3", "--val-iterations", "1",
            "--workers", "1", "--cpu-precision", "fp32"]
    eager, compiled = _copy(work, tmp_path / "eager"), _copy(work, tmp_path / "compiled")
    _train(eager, *args, "--no-compile")
    _train(compiled, *args)
    a = load_checkpoint(eager / "results" / MODEL / "fold_all" / "checkpoint_final.pth")
    b = load_checkpoint(compiled / "results" / MODEL / "fold_all" / "checkpoint_final.pth")
    assert b["fastseg"]["config"]["compile"] and not a["fastseg"]["config"]["compile"]
    np.testing.assert_allclose(b["logging"]["train_losses"], a["logging"]["train_losses"], rtol=1e-4)
    wa, wb = network_state(a), network_state(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_allclose(wb[k].numpy(), wa[k].numpy(), rtol=1e-3, atol=1e-4, err_msg=k)  # fused float sums through momentum 0.99: ~3e-5 seen


def test_bf16_autocast_training_follows_the_fp32_run(work, tmp_path):
    """--cpu-precision bf16 (the default on CPUs with AMX tiles) changes the arithmetic, not the recipe:
    the same batches give losses within bfloat16's rounding of the float32 run's, and the weights move
    the same way."""
    _, work = work
    args = ["-f", "all", "--epochs", "2", "--no-final-validation", *SMALL]
    runs = {}
    for precision in ("fp32", "bf16"):
        folder = _copy(work, tmp_path / precision)
        run = _train(folder, *args, "--cpu-precision", precision)
        assert ("bf16 autocast" in run.stderr) == (precision == "bf16"), run.stderr[-2000:]
        runs[precision] = load_checkpoint(folder / "results" / MODEL / "fold_all" / "checkpoint_final.pth")
    a, b = (np.array(runs[p]["logging"]["train_losses"]) for p in ("fp32", "bf16"))
    np.testing.assert_allclose(b, a, rtol=0.05, atol=0.01)
    assert not np.array_equal(a, b), "bf16 autocast did not change the arithmetic"
    # the run's initial weights: the trainer seeds torch with the run's seed (0) and builds the network
    from fastseg.train.network import build_network

    plans, dataset = (json.loads((work / n).read_text()) for n in ("plans.json", "dataset.json"))
    torch.manual_seed(0)
    initial = build_network(plans, plans["configurations"]["3d_fullres"], len(dataset["channel_names"]),
                            len(dataset["labels"]), deep_supervision=True).state_dict()
    np.testing.assert_allclose(network_state(runs["fp32"])["decoder.seg_layers.0.bias"].numpy(),
                               initial["decoder.seg_layers.0.bias"].numpy(), atol=0.05)  # the same start
    wa, wb = network_state(runs["fp32"]), network_state(runs["bf16"])
    last_seg = max((k for k in wa if k.startswith("decoder.seg_layers.") and k.endswith(".weight")),
                   key=lambda k: int(k.split(".")[2]))  # full resolution (the coarsest output weighs 0)
    for k in ("encoder.stages.0.0.convs.0.conv.weight", last_seg):
        step_a, step_b = (wa[k] - initial[k]).flatten(), (wb[k] - initial[k]).flatten()
        assert float(torch.nn.functional.cosine_similarity(step_a, step_b, dim=0)) > 0.9, k


@requires_cuda
def test_cuda_training_with_amp_and_dali_gpu_batches_lowers_the_loss(work, tmp_path):
    """The GPU path: DALI's GPU operators, fp16 autocast with the grad scaler, torch.compile."""
    _, work = work
    w = _copy(work, tmp_path / "cuda")
    _train(w, "-f", "all", "--epochs", "3", "--iterations-per-epoch", "5", "--val-iterations", "1", "--workers", "1",
           "--device", "cuda", "--no-final-validation")
    ckpt = load_checkpoint(w / "results" / MODEL / "fold_all" / "checkpoint_final.pth")
    losses = ckpt["logging"]["train_losses"]
    assert ckpt["grad_scaler_state"] is not None and np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
