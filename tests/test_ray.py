"""`--ray` on `fastseg preprocess`, `predict` and `evaluate` against the single-machine runs.

One local Ray cluster (2 CPUs, no dashboard) serves the module; the commands run as a user runs
them (the installed `fastseg` script) and join it by its address. References: the same per-case
code on one machine in this process (Predictor.predict_cases, the preprocessing the model factory
ran with one process, evaluate_folders with one process): outputs must be identical, file for file.
Faults: a worker process killed mid-run (SIGKILL to an actor's pid) and a corrupt input that fails
on every worker.
"""

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
import SimpleITK as sitk
from helpers import fastseg_script
from model_factory import train_model_folder

TEST_SHAPE = (12, 64, 64)


def _fastseg(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([fastseg_script(), *map(str, args)], capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=timeout)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with 2 CPUs for the module; yields its address."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small trained 2d model, its raw dataset and work folder, and 6 test cases with labels."""
    from fastseg.datasets.synthetic import SyntheticConfig, write_synthetic_dataset

    root = tmp_path_factory.mktemp("ray")
    raw = root / "Dataset953_Ray"
    write_synthetic_dataset(raw, SyntheticConfig(num_cases=4, shape=(20, 48, 48), ct=True, name="Ray"), num_processes=1)
    model = root / "models" / "nnUNetTrainer__nnUNetPlans__2d"
    train_model_folder(raw, root / "work", model, "2d", iterations=20)
    test = root / "test"
    write_synthetic_dataset(test, SyntheticConfig(num_cases=6, shape=TEST_SHAPE, ct=True, seed=11), num_processes=1)
    return {"raw": raw, "work": root / "work", "model": model, "images": test / "imagesTr", "labels": test / "labelsTr",
            "dataset_json": test / "dataset.json"}


@pytest.fixture(scope="module")
def single_machine(setup, tmp_path_factory):
    """The predictions of Predictor.predict_cases in this process (one thread, as each Ray worker has)."""
    from fastseg.predict import Predictor
    from fastseg.predict.inputs import find_cases

    out = tmp_path_factory.mktemp("single")
    predictor = Predictor.from_model_folder(setup["model"], threads=1)
    cases, problems = find_cases([setup["images"]], 1, ".nii.gz")
    assert not problems and len(cases) == 6
    report = predictor.predict_cases(cases, [out / f"{c.identifier}.nii.gz" for c in cases], progress=False)
    assert not report.failed and len(report.written) == 6
    return out


@pytest.fixture(scope="module")
def ray_predictions(setup, cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray_pred") / "pred"
    run = _fastseg("predict", "-m", setup["model"], "-i", setup["images"], "-o", out, "--ray", cluster,
                   "--ray-cpus-per-worker", "1")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out, run


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_predict_on_ray_equals_the_single_machine_run(setup, single_machine, ray_predictions):
    out, run = ray_predictions
    assert "6 written, 0 already there, 0 failed" in run.stdout
    assert "on 2 worker(s)" in run.stdout and "cases/hour" in run.stdout, run.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(_visible(single_machine) + ["dataset.json", "plans.json"])
    for ref in sorted(single_machine.glob("*.nii.gz")):
        ours = out / ref.name
        a, b = sitk.ReadImage(str(ref)), sitk.ReadImage(str(ours))
        labels = sitk.GetArrayFromImage(a)
        assert len(np.unique(labels)) > 1, "the model predicts one label only: the comparison would say little"
        assert np.array_equal(labels, sitk.GetArrayFromImage(b))
        assert ref.read_bytes() == ours.read_bytes(), ref.name


def test_continue_on_ray_predicts_nothing_twice(setup, cluster, ray_predictions):
    out, _ = ray_predictions
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    run = _fastseg("predict", "-m", setup["model"], "-i", setup["images"], "-o", out, "--ray", cluster, "--continue")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "0 written, 6 already there, 0 failed" in run.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_preprocess_on_ray_equals_the_single_machine_run(setup, cluster, tmp_path):
    reference = setup["work"]  # the model factory preprocessed it with one process
    work = tmp_path / "work"
    work.mkdir()
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json", "source.json"):
        shutil.copy(reference / name, work / name)
    run = _fastseg("preprocess", work, "-c", "2d", "--ray", cluster)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "4 cases preprocessed" in run.stdout and "cluster: 4 case(s) done, 0 failed" in run.stdout, run.stdout
    identifier = json.loads((reference / "plans.json").read_text())["configurations"]["2d"]["data_identifier"]
    ours, theirs = work / identifier, reference / identifier
    assert _visible(ours) == _visible(theirs) and len(_visible(ours)) == 12
    for f in sorted(theirs.iterdir()):
        if f.name.endswith(".npy"):
            a, b = np.load(f), np.load(ours / f.name)
            assert a.dtype == b.dtype and np.array_equal(a, b), f.name
        elif f.name.endswith(".json"):
            assert json.loads(f.read_text()) == json.loads((ours / f.name).read_text()), f.name


def test_evaluate_on_ray_equals_the_single_machine_run(setup, cluster, ray_predictions, tmp_path):
    from fastseg.evaluate import evaluate_folders
    from fastseg.evaluate.folder import load_dataset_json

    pred, _ = ray_predictions
    dataset_json = load_dataset_json(setup["dataset_json"])
    evaluate_folders(pred, setup["labels"], dataset_json, output=tmp_path / "single.json", num_processes=1)
    run = _fastseg("evaluate", pred, setup["labels"], "--dataset-json", setup["dataset_json"], "-o", tmp_path / "ray.json",
                   "--ray", cluster)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "cluster: 6 case(s) done" in run.stdout
    single, ours = (json.loads((tmp_path / n).read_text()) for n in ("single.json", "ray.json"))
    assert len(ours["metric_per_case"]) == 6
    assert json.dumps(ours, sort_keys=True) == json.dumps(single, sort_keys=True)


def _actor_pids() -> list[int]:
    """The pids of the running prediction workers (Ray names an actor's process after its class)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"ray::_CaseWorker"):
            found.append(int(entry))
    return found


def test_a_killed_worker_and_a_corrupt_case_are_reported_and_the_rest_written_once(setup, cluster, tmp_path):
    inputs = tmp_path / "in"
    shutil.copytree(setup["images"], inputs)
    good = sorted(p.name.replace("_0000.nii.gz", ".nii.gz") for p in inputs.glob("*.nii.gz"))
    (inputs / "broken_0000.nii.gz").write_bytes((setup["images"] / "case_0000_0000.nii.gz").read_bytes()[:3000])
    out = tmp_path / "out"
    before = set(_actor_pids())
    proc = subprocess.Popen(
        [fastseg_script(), "predict", "-m", str(setup["model"]), "-i", str(inputs), "-o", str(out), "--ray", cluster,
         "--ray-cpus-per-worker", "1", "--ray-retries", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
    )
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        written = [p for p in out.glob("*.nii.gz") if not p.name.startswith(".")] if out.is_dir() else []
        actors = [pid for pid in _actor_pids() if pid not in before]
        if written and actors:  # mid-run: a case is done, others are not
            killed = actors[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=300)
    assert killed is not None, f"the run ended before a worker could be killed:\n{stdout}\n{stderr[-2000:]}"
    assert len(written) < 6, "the worker was killed after the last case: nothing was left to reschedule"
    assert proc.returncode == 1, stdout + stderr[-3000:]
    assert "6 written, 0 already there, 1 failed" in stdout, stdout
    assert "1 worker(s) lost" in stdout and "-- lost" in stdout, stdout
    assert "error: case broken (after 3 attempt(s)):" in stderr, stderr[-3000:]
    failing = [line for line in stdout.splitlines() if line.startswith("  worker") and " 0 failed" not in line]
    assert len(failing) >= 2, f"the corrupt case was not retried on another worker:\n{stdout}"
    assert "Traceback" not in stderr
    assert _visible(out) == sorted(good + ["dataset.json", "plans.json"])
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "a temporary file was left behind"
    for name in good:  # whole files, on the input's grid
        image = sitk.ReadImage(str(inputs / name.replace(".nii.gz", "_0000.nii.gz")))
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(out / name))).shape == sitk.GetArrayFromImage(image).shape


def test_ray_flag_without_ray_says_how_to_install_it(setup, tmp_path):
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from fastseg.cli import main\n"
        "codes = [main(a.split('|')) for a in sys.argv[1:]]\n"
        "print('codes', codes)\n"
    )
    commands = [
        f"predict|-m|{setup['model']}|-i|{setup['images']}|-o|{tmp_path / 'pred'}|--ray",
        f"preprocess|{setup['work']}|-c|2d|--ray|auto",
        f"evaluate|{setup['labels']}|{setup['labels']}|--dataset-json|{setup['dataset_json']}|-o|{tmp_path / 's.json'}|--ray",
    ]
    run = subprocess.run([sys.executable, "-c", code, *commands], capture_output=True, text=True, encoding="utf-8",
                         errors="replace", timeout=300, cwd=tmp_path)
    assert "codes [1, 1, 1]" in run.stdout, run.stdout + run.stderr[-3000:]
    assert run.stderr.count('--ray needs Ray, which is not installed') == 3, run.stderr[-3000:]
    assert run.stderr.count('pip install "fastseg[ray]"') == 3
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "pred").exists() and not (tmp_path / "s.json").exists()


def test_another_machines_temporaries_are_left_alone(tmp_path):
    """On a shared filesystem a writer on another machine cannot be checked: its temporaries stay; a
    dead writer's on this machine go."""
    from fastseg.io.atomic import remove_abandoned_temporaries
    from fastseg.runtime.locking import machine_tag, owner_alive

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    other = "0badf00d" if machine_tag() != "0badf00d" else "0badf00e"
    mine = tmp_path / f".tmp-{dead.pid}.1@{machine_tag()}-0badc0de-a.nii.gz"
    theirs = tmp_path / f".tmp-{dead.pid}.1@{other}-0badc0de-b.nii.gz"
    for p in (mine, theirs):
        p.write_bytes(b"half")
    assert owner_alive(f"{dead.pid}.1@{other}") and not owner_alive(f"{dead.pid}.1@{machine_tag()}")
    assert remove_abandoned_temporaries(tmp_path) == 1
    assert not mine.exists() and theirs.exists()
