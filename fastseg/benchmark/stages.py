"""`fastseg benchmark RAW_DATASET --against nnunet`: fastseg beside nnU-Net on one raw dataset,
stage by stage, in one table.

Each stage runs with fastseg and with nnunetv2 (the installed one) on the same data and plans with
the same worker count, each tool as its own process tree, measured the same way
(`fastseg.benchmark.measure`: wall time, peak summed PSS of the process tree). Then their outputs are
compared (`fastseg.benchmark.agreement`):

- plan: `fastseg plan RAW -o WORK -j W` (it verifies the dataset) beside
  `nnUNetv2_plan_and_preprocess -d ID --verify_dataset_integrity --no_pp -npfp W --clean`;
  plans.json and dataset_fingerprint.json compared key by key.
- preprocess: `fastseg preprocess WORK -c CONFIG -j W --overwrite` beside `nnUNetv2_preprocess -d ID
  -c CONFIG -np W` on fastseg's plans (copied in); the arrays compared case by case.
- loader: `fastseg.benchmark.loader.benchmark_loader` (fastseg's training batches beside nnU-Net's
  trainer loader and augmentations); batch and target shapes compared.
- train: `fastseg.benchmark.train.benchmark_train` (`fastseg train` beside `nnUNetv2_train`, a few
  epochs each on the same plans, data and splits).
- predict: `fastseg.benchmark.predict.benchmark_predict` with the model folder given (`fastseg
  predict` beside `nnUNetv2_predict_from_modelfolder`); voxels equal and Dice per label between the
  two tools' segmentations.
- evaluate: `fastseg evaluate PRED REF -j W` beside `nnUNetv2_evaluate_folder REF PRED -np W` on
  the predict stage's segmentations, or, without them, on the reference labels and a deterministic
  perturbation of them (`perturb`); every metric compared to 1e-6.

Throughput is cases per second (plan, preprocess, predict, evaluate: the cases the stage handles
over its wall time), samples per second (loader) or iterations per second (train); the ratios are
fastseg / nnU-Net, of throughput (above 1: fastseg is faster) and of peak memory (below 1: fastseg
needs less). Stages always run in the order above; a stage that needs an earlier stage's output
which this run does not produce makes it first with fastseg, untimed, or reuses it from an
earlier run into the same folder (the table says so).

Everything goes under the output folder DIR:

    DIR/nnUNet_raw/DatasetXXX_Name/    the raw dataset, as links to its files and folders: both tools
                                       read it from here, so both name the dataset alike. nnU-Net
                                       needs a DatasetXXX_Name folder; a raw folder named otherwise
                                       is benchmarked as Dataset999_<its name>.
    DIR/fastseg/                       fastseg's work folder (plan, preprocess)
    DIR/fastseg/.nnunet_reference/     nnU-Net's preprocessing of fastseg's plans (where
                                       `fastseg benchmark loader` looks for it, so the loader
                                       stage reuses it)
    DIR/nnunet/nnUNet_preprocessed/    nnU-Net's own fingerprint and plans (plan stage)
    DIR/predict/                       the images predicted and both tools' segmentations
    DIR/evaluate/                      the folders scored and both summaries
    DIR/benchmark.json, DIR/benchmark.png
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastseg.benchmark.measure import Measured, run_measured
from fastseg.benchmark.report import BenchmarkReport, StageResult, ToolResult, format_report

logger = logging.getLogger(__name__)

__all__ = ["STAGES", "BenchmarkError", "BenchmarkOptions", "BenchmarkReport", "StageResult", "ToolResult", "format_report",
           "nnunet_dataset_name", "parse_stages", "perturb", "run_benchmark"]

#: The stages, in the order they run.
STAGES = ("plan", "preprocess", "loader", "train", "predict", "evaluate")
#: The dataset id a raw folder not named DatasetXXX_Name is benchmarked under.
FALLBACK_DATASET_ID = 999
#: The functions nnU-Net's console scripts run (`python -c` calls them with the script's arguments).
_NNUNET_ENTRIES = {
    "nnUNetv2_plan_and_preprocess": ("nnunetv2.experiment_planning.plan_and_preprocess_entrypoints", "plan_and_preprocess_entry"),
    "nnUNetv2_preprocess": ("nnunetv2.experiment_planning.plan_and_preprocess_entrypoints", "preprocess_entry"),
    "nnUNetv2_evaluate_folder": ("nnunetv2.evaluation.evaluate_predictions", "evaluate_folder_entry_point"),
}
#: Training cases predicted when the dataset has no imagesTs and no case count is given.
DEFAULT_TRAINING_CASES = 5
#: Fraction of voxels the evaluate stage's perturbation relabels.
PERTURBED_FRACTION = 0.02


class BenchmarkError(RuntimeError):
    """A tool failed or is missing; the message says which and shows the end of its output."""


def parse_stages(text: str) -> tuple[str, ...]:
    """'plan,preprocess' -> ("plan", "preprocess"), in the order the stages run.

    Raises:
        ValueError: an unknown stage (with the nearest name), or none.
    """
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise ValueError(f"no stage given; choose from {','.join(STAGES)}")
    for name in names:
        if name not in STAGES:
            near = difflib.get_close_matches(name, STAGES, n=1)
            raise ValueError(f"unknown stage {name!r}" + (f"; did you mean {near[0]!r}?" if near else "")
                             + f" (stages: {','.join(STAGES)})")
    return tuple(s for s in STAGES if s in names)


@dataclass(frozen=True)
class BenchmarkOptions:
    """What `run_benchmark` runs.

    Attributes:
        stages: stages to run (default: all); they run in `STAGES` order whatever the order here.
        against_nnunet: also run nnU-Net (default True); False times fastseg alone.
        configuration: the configuration preprocessed, loaded, trained (default: 3d_fullres, or 2d
            where the plans have no 3d_fullres).
        workers: worker processes of each tool (default: the CPUs this process may use).
        threads: torch threads of each tool in train and predict (default: those CPUs).
        batches: timed loader batches (default 20).
        iterations: training iterations per epoch of the train stage (default: the training benchmark's).
        model: model folder for the predict stage (fastseg's or nnU-Net's); None skips predict.
        folds: its folds (default: fold 0).
        cases: cases predicted and scored (default: every imagesTs case, or the first
            `DEFAULT_TRAINING_CASES` training cases when there is no imagesTs).
        timeout: seconds one tool's run may take (default: no limit).
    """

    stages: tuple[str, ...] = STAGES
    against_nnunet: bool = True
    configuration: str | None = None
    workers: int | None = None
    threads: int | None = None
    batches: int = 20
    iterations: int | None = None
    model: str | os.PathLike | None = None
    folds: tuple[str, ...] = ("0",)
    cases: int | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", parse_stages(",".join(self.stages)))
        for name in ("workers", "threads", "cases", "batches", "iterations"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")


# --- the dataset as both tools see it ------------------------------------------------------------


def nnunet_dataset_name(raw: Path) -> tuple[int, str]:
    """(dataset id, folder name) nnU-Net knows the raw folder by: its own name when that is
    DatasetXXX_Name, else Dataset999_<name> (characters other than letters, digits, '_', '-', '.'
    become '_')."""
    found = re.fullmatch(r"Dataset(\d{3})_(.+)", raw.name)
    if found:
        return int(found[1]), raw.name
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", raw.name).strip("_") or "Dataset"
    return FALLBACK_DATASET_ID, f"Dataset{FALLBACK_DATASET_ID:03d}_{safe}"


def link_raw_dataset(raw: Path, target: Path) -> Path:
    """`target`, a folder of links to every entry of `raw` (dataset.json, imagesTr, ...), made
    anew; a folder rather than one link, so that both tools take its name as the dataset's."""
    if target.is_symlink() or target.is_file():
        target.unlink()
    if target.is_dir():
        for entry in target.iterdir():
            if not entry.is_symlink():
                raise BenchmarkError(f"{target} holds {entry.name}, which is not a link; it is not a folder this "
                                     "benchmark made: choose another output folder (-o)")
            entry.unlink()
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(raw.iterdir()):
        if not entry.name.startswith("."):
            (target / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    return target


def _check_raw(raw: Path) -> None:
    if not raw.exists():
        raise FileNotFoundError(f"RAW_DATASET {raw} not found; give an nnU-Net v2 raw dataset folder "
                                "(dataset.json, imagesTr, labelsTr)")
    if not raw.is_dir():
        raise NotADirectoryError(f"RAW_DATASET {raw} is not a folder; give an nnU-Net v2 raw dataset folder "
                                 "(dataset.json, imagesTr, labelsTr)")
    if not (raw / "dataset.json").is_file():
        raise FileNotFoundError(f"{raw / 'dataset.json'} not found: RAW_DATASET must be an nnU-Net v2 raw dataset "
                                "folder (dataset.json, imagesTr, labelsTr)")


def nnunet_version() -> str:
    """The installed nnunetv2's version.

    Raises:
        BenchmarkError: nnunetv2 cannot be imported.
    """
    try:
        import nnunetv2  # noqa: F401
    except ImportError as err:
        raise BenchmarkError(
            f"--against nnunet runs nnU-Net v2, and this Python ({sys.executable}) cannot import it ({err}); "
            "install it with `pip install nnunetv2`, or leave out --against to time fastseg alone"
        ) from None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nnunetv2")
    except PackageNotFoundError:
        return "unknown"


def _machine() -> dict:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return {"cpu": model, "usable_cpus": cpus, "python": platform.python_version(), "system": platform.platform()}


def _fastseg_cli(*args: Any) -> list[str]:
    """`fastseg ARGS`: the console script next to this Python, as a user runs it."""
    script = Path(sys.executable).with_name("fastseg")
    start = [str(script)] if script.is_file() else [sys.executable, "-m", "fastseg.cli"]
    return [*start, *map(str, args)]


def _nnunet_cli(script: str, *args: Any) -> list[str]:
    """nnU-Net's console script `script` with ARGS, as this Python runs its entry function."""
    module, function = _NNUNET_ENTRIES[script]
    argv = [script, *map(str, args)]
    return [sys.executable, "-c", f"import sys; from {module} import {function} as main; sys.argv = {argv!r}; sys.exit(main())"]


def _tail(measured: Measured) -> str:
    return (measured.stdout[-1500:] + "\n" + measured.stderr[-2500:]).strip()


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchmarkError(f"{path} was not written") from None


# --- the stages ------------------------------------------------------------------------------------


class _Benchmark:
    """The state one run of the stages shares: folders, environments, the case count."""

    def __init__(self, raw: Path, out: Path, options: BenchmarkOptions, env: Mapping[str, str]) -> None:
        from fastseg import io as fio

        self.options = options
        self.out = out
        self.dataset_id, self.name = nnunet_dataset_name(raw)
        self.raw = link_raw_dataset(raw, out / "nnUNet_raw" / self.name)
        self.dataset = fio.load_raw_dataset(self.raw, env=dict(env))
        self.work = out / "fastseg"
        cpus = _machine()["usable_cpus"]
        self.workers = options.workers or cpus
        self.threads = options.threads or cpus
        # Neither tool may import a source checkout from the folder it runs in.
        self.env = {**env, "PYTHONSAFEPATH": "1"}
        self.predictions: tuple[Path, list[tuple[str, Path]]] | None = None
        self._configuration: str | None = None

    # helpers -------------------------------------------------------------------------------------

    def _nnunet_env(self, preprocessed: Path, raw_root: Path | None = None) -> dict:
        return {**self.env, "nnUNet_raw": str(raw_root or self.raw.parent), "nnUNet_preprocessed": str(preprocessed),
                "nnUNet_results": str(self.out / "nnunet" / "nnUNet_results")}

    def _run(self, stage: str, tool: str, command: list[str], env: Mapping[str, str]) -> Measured:
        logger.info("%s: %s", stage, tool)
        try:
            measured = run_measured(command, cwd=self.out, env=env, timeout=self.options.timeout)
        except subprocess.TimeoutExpired:
            raise BenchmarkError(f"{stage}: {tool} ran past the time limit ({self.options.timeout} s)") from None
        except OSError as err:
            raise BenchmarkError(f"{stage}: {tool} could not start: {err}") from None
        if measured.returncode != 0:
            raise BenchmarkError(f"{stage}: {tool} failed (exit status {measured.returncode}):\n{_tail(measured)}")
        return measured

    @staticmethod
    def _per_case(measured: Measured, cases: int) -> ToolResult:
        return ToolResult(measured.wall_s, cases / measured.wall_s, "cases/s", measured.peak_pss_bytes)

    def _plans(self) -> dict:
        return _load_json(self.work / "plans.json")

    def configuration(self) -> str:
        if self._configuration is None:
            from fastseg.plan.plans import resolve_configuration

            plans = self._plans()
            name = self.options.configuration or ("3d_fullres" if "3d_fullres" in plans["configurations"] else "2d")
            resolve_configuration(plans, name)  # a configuration the plans lack: a ValueError naming those they have
            self._configuration = name
        return self._configuration

    def _data_identifier(self) -> str:
        from fastseg.plan.plans import resolve_configuration

        return resolve_configuration(self._plans(), self.configuration())["data_identifier"]

    def _ensure_planned(self, result: StageResult) -> None:
        if (self.work / "plans.json").is_file():
            if "plan" not in self.options.stages:
                result.notes.append(f"reused the plans in {self.work} from an earlier run")
            return
        self._run(result.name, "fastseg plan (preparing, untimed)",
                  _fastseg_cli("plan", self.raw, "-o", self.work, "-j", self.workers), self.env)
        result.notes.append("planned first with `fastseg plan` (untimed)")

    def _ensure_preprocessed(self, result: StageResult) -> None:
        from fastseg.preprocess.storage import case_identifiers

        self._ensure_planned(result)
        folder = self.work / self._data_identifier()
        if folder.is_dir() and len(case_identifiers(folder)) >= len(self.dataset.cases):
            if "preprocess" not in self.options.stages:
                result.notes.append(f"reused fastseg's preprocessing in {folder} from an earlier run")
            return
        self._run(result.name, "fastseg preprocess (preparing, untimed)",
                  _fastseg_cli("preprocess", self.work, "-c", self.configuration(), "-j", self.workers), self.env)
        result.notes.append(f"preprocessed {self.configuration()} first with `fastseg preprocess` (untimed)")

    # stages ---------------------------------------------------------------------------------------

    def plan(self) -> StageResult:
        from fastseg.benchmark.agreement import compare_plans

        result = StageResult("plan")
        cases = len(self.dataset.cases)
        shutil.rmtree(self.work, ignore_errors=True)  # a cold run into a new work folder, as nnU-Net's
        self._configuration = None
        ours = self._run("plan", "fastseg", _fastseg_cli("plan", self.raw, "-o", self.work, "-j", self.workers), self.env)
        result.fastseg = self._per_case(ours, cases)
        if self.options.against_nnunet:
            root = self.out / "nnunet" / "nnUNet_preprocessed"
            shutil.rmtree(root / self.name, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
            command = _nnunet_cli("nnUNetv2_plan_and_preprocess", "-d", self.dataset_id, "-npfp", self.workers,
                                  "--verify_dataset_integrity", "--no_pp", "--clean", "--no_pbar")
            theirs = self._run("plan", "nnU-Net", command, self._nnunet_env(root))
            result.nnunet = self._per_case(theirs, cases)
            plans = compare_plans(self._plans(), _load_json(root / self.name / "nnUNetPlans.json"), "plans")
            fingerprint = compare_plans(_load_json(self.work / "dataset_fingerprint.json"),
                                        _load_json(root / self.name / "dataset_fingerprint.json"), "fingerprint")
            result.agreement = {
                "ok": plans.ok and fingerprint.ok, "summary": plans.summary(), "plans": plans.as_json(),
                "fingerprint": fingerprint.as_json(),
            }
            for d in plans.differences:
                result.notes.append(f"{d.path}: fastseg {d.fastseg!r}, nnU-Net {d.nnunet!r}"
                                    + (f" ({d.documented})" if d.documented else " (undocumented)"))
            result.notes.append(fingerprint.summary())
        return result

    def preprocess(self) -> StageResult:
        from fastseg.benchmark.agreement import compare_preprocessed

        result = StageResult("preprocess")
        self._ensure_planned(result)
        configuration, data_identifier = self.configuration(), self._data_identifier()
        cases = len(self.dataset.cases)
        command = _fastseg_cli("preprocess", self.work, "-c", configuration, "-j", self.workers, "--overwrite")
        result.fastseg = self._per_case(self._run("preprocess", "fastseg", command, self.env), cases)
        result.notes.append(f"configuration {configuration}, {cases} training case(s)")
        if self.options.against_nnunet:
            reference = self.work / ".nnunet_reference"  # fastseg.benchmark.loader.nnunet_reference's folder
            raw_link = reference / "nnUNet_raw" / self.name
            raw_link.parent.mkdir(parents=True, exist_ok=True)
            if not raw_link.exists():
                raw_link.symlink_to(self.raw.resolve(), target_is_directory=True)
            pre = reference / "nnUNet_preprocessed" / self.name
            pre.mkdir(parents=True, exist_ok=True)
            plans = self._plans()
            plans_name = plans.get("plans_name", "nnUNetPlans")
            shutil.copyfile(self.work / "plans.json", pre / f"{plans_name}.json")
            for name in ("dataset.json", "dataset_fingerprint.json"):
                shutil.copyfile(self.work / name, pre / name)
            done = pre / f".{data_identifier}.done"  # the marker the loader benchmark looks for
            done.unlink(missing_ok=True)
            shutil.rmtree(pre / data_identifier, ignore_errors=True)
            command = _nnunet_cli("nnUNetv2_preprocess", "-d", self.dataset_id, "-plans_name", plans_name,
                                  "-c", configuration, "-np", self.workers, "--no_pbar")
            theirs = self._run("preprocess", "nnU-Net", command, self._nnunet_env(pre.parent, raw_link.parent))
            done.write_text("")
            result.nnunet = self._per_case(theirs, cases)
            agreement = compare_preprocessed(self.work / data_identifier, pre / data_identifier)
            result.agreement = agreement.as_json()
            result.notes.append("nnU-Net preprocessed with fastseg's plans (copied in as "
                                f"{plans_name}.json); arrays read from its .b2nd files")
        return result

    def loader(self) -> StageResult:
        from fastseg.benchmark.loader import BenchmarkError as LoaderError
        from fastseg.benchmark.loader import benchmark_loader

        result = StageResult("loader")
        self._ensure_preprocessed(result)
        try:
            bench = benchmark_loader(self.work, self.configuration(), workers=self.workers, batches=self.options.batches,
                                     against_nnunet=self.options.against_nnunet, env=self.env,
                                     timeout=self.options.timeout or 3600)
        except LoaderError as err:
            raise BenchmarkError(f"loader: {err}") from None

        def tool(run) -> ToolResult:
            return ToolResult(self.options.batches * run.batch_size / run.samples_per_second, run.samples_per_second,
                              "samples/s", run.peak_pss_bytes)

        result.fastseg = tool(bench.fastseg)
        result.notes.append(f"{self.options.batches} batches of {bench.fastseg.batch_size} timed after warm-up, "
                            f"{self.workers} worker(s) each")
        result.details = {"fastseg": vars(bench.fastseg), "nnunet": vars(bench.nnunet) if bench.nnunet else None}
        if bench.nnunet:
            result.nnunet = tool(bench.nnunet)
            same = (bench.fastseg.data_shape == bench.nnunet.data_shape
                    and bench.fastseg.target_shapes == bench.nnunet.target_shapes)
            result.agreement = {
                "ok": same, "summary": f"batch shapes {'equal' if same else 'differ'}: data {bench.fastseg.data_shape}"
                + ("" if same else f" vs {bench.nnunet.data_shape}"),
                "data_shapes": [bench.fastseg.data_shape, bench.nnunet.data_shape],
                "target_shapes": [bench.fastseg.target_shapes, bench.nnunet.target_shapes],
            }
        return result

    def train(self) -> StageResult:
        from fastseg.benchmark.train import benchmark_train

        result = StageResult("train")
        self._ensure_preprocessed(result)
        extra = {} if self.options.iterations is None else {"iterations": self.options.iterations}
        try:
            bench = benchmark_train(self.work, self.configuration(), workers=self.workers, threads=self.threads,
                                    against_nnunet=self.options.against_nnunet, env=self.env,
                                    timeout=self.options.timeout or 3600, **extra)
        except RuntimeError as err:  # the training benchmark's own BenchmarkError
            raise BenchmarkError(f"train: {err}") from None

        def tool(run) -> ToolResult:
            return ToolResult(run.wall_seconds, run.iterations_per_second, "iterations/s", run.peak_pss_bytes)

        result.fastseg = tool(bench.fastseg)
        result.details = bench.as_json()
        waits = [f"fastseg waits {bench.fastseg.wait_fraction:.0%} of the loop for batches"] if bench.fastseg.wait_fraction is not None else []
        if bench.nnunet is not None:
            result.nnunet = tool(bench.nnunet)
            if bench.nnunet.wait_fraction is not None:
                waits.append(f"nnU-Net {bench.nnunet.wait_fraction:.0%}")
        result.notes.append("wall time: the whole training command; throughput: the steady training iterations per "
                            "second after the first epoch" + (f"; {', '.join(waits)}" if waits else ""))
        return result

    def _cases_to_predict(self) -> tuple[list[tuple[str, list[Path], Path | None]], str]:
        """[(case, image files, label or None)] and where they come from."""
        ending = self.dataset.dataset_json.get("file_ending", ".nii.gz")
        if self.dataset.test_cases:
            n = self.options.cases or len(self.dataset.test_cases)
            chosen = list(self.dataset.test_cases.values())[:n]
            labels = [self.raw / "labelsTs" / f"{c.identifier}{ending}" for c in chosen]
            return [(c.identifier, c.images, lab if lab.is_file() else None) for c, lab in zip(chosen, labels)], "imagesTs"
        n = self.options.cases or DEFAULT_TRAINING_CASES
        chosen = list(self.dataset.cases.values())[:n]
        return [(c.identifier, c.images, c.label) for c in chosen], "imagesTr"

    def predict(self) -> StageResult:
        from fastseg.benchmark.agreement import label_dice
        from fastseg.benchmark.predict import BenchmarkError as PredictError
        from fastseg.benchmark.predict import benchmark_predict

        result = StageResult("predict")
        if self.options.model is None:
            result.skipped = "no model: give -m MODEL_DIR (a fastseg or nnU-Net model folder) to benchmark prediction"
            return result
        model = Path(self.options.model)
        chosen, source = self._cases_to_predict()
        images = self.out / "predict" / "images"
        shutil.rmtree(images, ignore_errors=True)
        images.mkdir(parents=True)
        for _, files, _ in chosen:
            for f in files:
                (images / f.name).symlink_to(f.resolve())
        try:
            bench = benchmark_predict(model, images, folds=self.options.folds, against_nnunet=self.options.against_nnunet,
                                      threads=self.threads, processes=self.workers, work_dir=self.out / "predict",
                                      timeout=self.options.timeout)
        except PredictError as err:
            raise BenchmarkError(f"predict: {err}") from None
        n = len(chosen)
        result.fastseg = ToolResult(bench.fastseg.wall_s, n / bench.fastseg.wall_s, "cases/s", bench.fastseg.peak_pss_bytes)
        result.details = bench.as_json()
        result.notes.append(f"{n} case(s) of {source}, folds {' '.join(self.options.folds)}, {self.threads} torch thread(s) each")
        self.predictions = (bench.fastseg.output_dir, [(case, label) for case, _, label in chosen if label is not None])
        if bench.nnunet is not None and bench.agreement is not None:
            result.nnunet = ToolResult(bench.nnunet.wall_s, n / bench.nnunet.wall_s, "cases/s", bench.nnunet.peak_pss_bytes)
            ag = bench.agreement
            ending = _load_json(model / "dataset.json").get("file_ending", ".nii.gz")
            dice = label_dice(bench.fastseg.output_dir, bench.nnunet.output_dir, ending) if ag.cases else {}
            mean_dice = sum(dice.values()) / len(dice) if dice else float("nan")
            result.agreement = {
                "ok": not ag.missing and not ag.geometry_mismatches and ag.cases > 0,
                "summary": f"{ag.equal_fraction * 100:.3f} % voxels equal, mean Dice {mean_dice:.4f}"
                + (f"; geometry differs in {len(ag.geometry_mismatches)}" if ag.geometry_mismatches else "")
                + (f"; one-sided: {', '.join(ag.missing)}" if ag.missing else ""),
                "equal_fraction": ag.equal_fraction, "cases": ag.cases, "voxels": ag.voxels,
                "dice_per_label": {str(k): v for k, v in dice.items()}, "mean_dice": mean_dice,
                "geometry_mismatches": ag.geometry_mismatches, "missing": ag.missing,
            }
        return result

    def _evaluation_inputs(self, result: StageResult, reference: Path, prediction: Path) -> None:
        """Fills the two folders the evaluate stage scores (links, or perturbed copies)."""
        from fastseg import io as fio

        ending = self.dataset.dataset_json.get("file_ending", ".nii.gz")
        if self.predictions is not None and self.predictions[1]:
            folder, labelled = self.predictions
            for case, label in labelled:
                (prediction / f"{case}{ending}").symlink_to((folder / f"{case}{ending}").resolve())
                (reference / f"{case}{ending}").symlink_to(label.resolve())
            result.notes.append(f"scored fastseg's predictions of the predict stage ({len(labelled)} case(s)) against "
                                "their reference labels")
            return
        why = ("the predicted cases have no reference labels" if self.predictions is not None
               else "no predictions in this run")
        chosen = [(case, label) for case, _, label in self._cases_to_predict()[0] if label is not None]
        if not chosen:  # imagesTs without labelsTs: the training labels
            n = self.options.cases or DEFAULT_TRAINING_CASES
            chosen = [(c.identifier, c.label) for c in list(self.dataset.cases.values())[:n] if c.label is not None]
        if not chosen:
            raise BenchmarkError(f"evaluate: {self.raw} has no reference labels to score (labelsTr, labelsTs)")
        labels_spec = self.dataset.dataset_json.get("labels", {})
        ignore = labels_spec.get("ignore")
        values = sorted({v for value in labels_spec.values() for v in (value if isinstance(value, list) else [value])} - {ignore})
        for seed, (case, label) in enumerate(chosen):
            seg, props = fio.read_seg(label)
            fio.write_seg(perturb(seg[0], values, ignore, seed), prediction / f"{case}{ending}", props)
            (reference / f"{case}{ending}").symlink_to(label.resolve())
        result.notes.append(
            f"{why}: scored the reference labels of {len(chosen)} case(s) against a deterministic "
            f"perturbation of them (shifted one voxel along the last axis, {PERTURBED_FRACTION:.0%} of voxels relabelled; "
            f"{prediction})")

    def evaluate(self) -> StageResult:
        from fastseg.benchmark.agreement import compare_summaries

        result = StageResult("evaluate")
        folder = self.out / "evaluate"
        shutil.rmtree(folder, ignore_errors=True)
        reference, prediction = folder / "reference", folder / "prediction"
        reference.mkdir(parents=True)
        prediction.mkdir()
        self._evaluation_inputs(result, reference, prediction)
        cases = len(list(reference.iterdir()))
        dataset_json = self.raw / "dataset.json"
        ours_file, theirs_file = folder / "fastseg_summary.json", folder / "nnunet_summary.json"
        command = _fastseg_cli("evaluate", prediction, reference, "--dataset-json", dataset_json, "-o", ours_file, "-j", self.workers)
        result.fastseg = self._per_case(self._run("evaluate", "fastseg", command, self.env), cases)
        if self.options.against_nnunet:
            if (self.work / "plans.json").is_file():
                plans = self.work / "plans.json"
            elif self.options.model is not None and (Path(self.options.model) / "plans.json").is_file():
                plans = Path(self.options.model) / "plans.json"
            else:
                self._ensure_planned(result)
                plans = self.work / "plans.json"
            command = _nnunet_cli("nnUNetv2_evaluate_folder", reference, prediction, "-djfile", dataset_json,
                                  "-pfile", plans, "-o", theirs_file, "-np", self.workers)
            theirs = self._run("evaluate", "nnU-Net", command, self._nnunet_env(self.out / "nnunet" / "nnUNet_preprocessed"))
            result.nnunet = self._per_case(theirs, cases)
            result.agreement = compare_summaries(_load_json(ours_file), _load_json(theirs_file)).as_json()
        return result


def perturb(seg, labels: Sequence[int], ignore: int | None, seed: int):
    """A deterministic imperfect prediction of the label map `seg`: shifted one voxel along its last
    axis (wrapping around), then `PERTURBED_FRACTION` of the voxels set to labels drawn from
    `labels` (numpy Generator seeded with `seed`); the ignore label becomes background."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = np.roll(np.asarray(seg), 1, axis=-1)
    flip = rng.random(out.shape) < PERTURBED_FRACTION
    out[flip] = rng.choice(np.asarray(labels, dtype=out.dtype), int(flip.sum()))
    if ignore is not None:
        out[out == ignore] = 0
    return out


def run_benchmark(
    raw_dataset: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    options: BenchmarkOptions | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> BenchmarkReport:
    """Runs the chosen stages with fastseg (and nnU-Net) and writes benchmark.json and benchmark.png.

    Args:
        raw_dataset: an nnU-Net v2 raw dataset folder.
        output_dir: where everything goes (default: fastseg_benchmark/<raw folder name> in the
            working folder); created.
        options: what to run (default: every stage against nnU-Net).
        env: the tools' environment (default: this process's).

    Returns:
        The BenchmarkReport. A stage that fails ends the run: its `error` says why, the stages
        after it do not run, and the files hold the stages done so far.

    Raises:
        FileNotFoundError, NotADirectoryError: no raw dataset there.
        fastseg.io.DatasetError: its dataset.json or files are unusable.
        BenchmarkError: nnunetv2 is needed and not installed; the output folder is not one this
            benchmark made.
        fastseg.runtime.locking.FolderInUseError: another benchmark writes into the output folder.
    """
    from fastseg.io.atomic import write_json_atomic
    from fastseg.runtime.locking import folder_lock

    options = options or BenchmarkOptions()
    raw = Path(raw_dataset).absolute()
    _check_raw(raw)
    versions = {"fastseg": _fastseg_version()}
    if options.against_nnunet:
        versions["nnunetv2"] = nnunet_version()
    out = Path(output_dir) if output_dir is not None else Path("fastseg_benchmark") / raw.name
    out = out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, "fastseg benchmark"):
        bench = _Benchmark(raw, out, options, dict(env if env is not None else os.environ))
        stages: list[StageResult] = []
        for name in options.stages:
            try:
                stages.append(getattr(bench, name)())
            except (BenchmarkError, ValueError, OSError) as err:
                logger.debug("details", exc_info=True)
                stages.append(StageResult(name, error=str(err)))
                break
        configuration = None
        with contextlib.suppress(BenchmarkError, ValueError, OSError, KeyError):
            configuration = bench.configuration()
        settings = {
            "raw_dataset": str(raw), "nnunet_dataset": bench.name, "nnunet_dataset_id": bench.dataset_id,
            "training_cases": len(bench.dataset.cases), "configuration": configuration, "workers": bench.workers,
            "threads": bench.threads, "stages": list(options.stages), "against": "nnunet" if options.against_nnunet else None,
            "versions": versions, "machine": _machine(), "output_dir": str(out),
        }
        report = BenchmarkReport(settings, stages)
        report.json_path = write_json_atomic(report.as_json(), out / "benchmark.json")
        ran = [s for s in stages if s.fastseg is not None]
        if ran:
            from fastseg.benchmark.chart import plot_ratios

            title = f"{bench.name}, {configuration or '-'}, {bench.workers} worker(s) each"
            rows = [(s.name, s.throughput_ratio, s.memory_ratio, s.fastseg.wall_s) for s in ran]
            report.chart_path = plot_ratios(rows, out / "benchmark.png", title)
    return report


def _fastseg_version() -> str:
    import fastseg

    return fastseg.__version__
