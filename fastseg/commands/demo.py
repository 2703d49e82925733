"""`fastseg demo`: the whole job on a generated dataset, with the time of each stage.

generate a synthetic CT-like dataset (training cases and held-out test cases) -> verify ->
fingerprint -> plan -> preprocess -> train one configuration -> predict the held-out cases ->
evaluate (Dice, HD95, NSD) -> overlay pictures; then a table of the held-out scores per label, the
stage times and where everything is. A rerun with the same settings reuses the dataset, the
preprocessed cases, the trained model and its predictions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

from fastseg.commands.plan import positive_int, reports_errors

logger = logging.getLogger(__name__)

DATASET_NAME = "Dataset900_FastsegDemo"


@dataclasses.dataclass(frozen=True)
class DemoBudget:
    """The dataset and training budget of a demo run."""

    cases: int
    test_cases: int
    shape: tuple[int, int, int]
    configuration: str
    epochs: int
    iterations: int
    val_iterations: int
    batch_size: int | None = None  # None: the plans'
    compile: bool = False  # torch.compile: its ~1 minute of compiling is not paid back by 600 small 2D steps


#: Lesions larger than the generator's default: a few minutes of training learn them.
LESION_SCALE = 1.8
#: The default: learnable, not trivial, < 10 minutes on two CPU cores.
DEFAULT = DemoBudget(cases=12, test_cases=4, shape=(32, 96, 96), configuration="2d", epochs=10, iterations=60, val_iterations=5,
                     batch_size=10)
#: --quick: a smaller budget for CI (a minute or two).
QUICK = DemoBudget(cases=6, test_cases=2, shape=(24, 64, 64), configuration="2d", epochs=2, iterations=10, val_iterations=2)


def _same_dataset(raw: Path, config) -> bool:
    """True when `raw` already holds the dataset `config` generates."""
    try:
        with open(raw / "dataset.json") as f:
            stored = json.load(f).get("synthetic_config")
    except (OSError, ValueError):
        return False
    return stored == json.loads(json.dumps(dataclasses.asdict(config)))


def _stamp(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible; use --device cpu (or auto)")
    return choice


@reports_errors
def run(args: argparse.Namespace) -> int:
    from fastseg.datasets.synthetic import SyntheticConfig, write_synthetic_dataset
    from fastseg.evaluate import evaluate_folders, format_table
    from fastseg.evaluate.plots import overlay_folder
    from fastseg.io.atomic import write_json_atomic
    from fastseg.plan.planner import PlannerOptions
    from fastseg.predict.inputs import find_cases
    from fastseg.predict.predictor import Predictor
    from fastseg.runtime.workers import default_num_workers
    from fastseg.train.trainer import TrainConfig, model_folder_name, train
    from fastseg.workflow import prepare_dataset

    budget = QUICK if args.quick else DEFAULT
    budget = dataclasses.replace(budget, **{k: v for k, v in (
        ("cases", args.cases), ("test_cases", args.test_cases), ("shape", tuple(args.shape) if args.shape else None),
        ("configuration", args.configuration), ("epochs", args.epochs), ("iterations", args.iterations)) if v is not None})
    device = _device(args.device)
    out = Path(args.output).resolve()
    raw, work = out / "raw" / DATASET_NAME, out / "work" / DATASET_NAME
    workers = args.num_processes or default_num_workers()
    config = SyntheticConfig(num_cases=budget.cases, num_test_cases=budget.test_cases, shape=budget.shape, ct=True,
                             seed=args.seed, name="FastsegDemo", lesion_scale=LESION_SCALE)
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    if _same_dataset(raw, config):
        print(f"reusing the generated dataset in {raw}")
    else:
        print(f"generating {config.num_cases} training and {config.num_test_cases} held-out CT-like cases of about "
              f"{'x'.join(map(str, config.shape))} voxels in {raw}")
        write_synthetic_dataset(raw, config, num_processes=workers, overwrite=True)
    seconds["generate"] = time.perf_counter() - t

    result, reports = prepare_dataset(raw, work, PlannerOptions(planner=args.planner), num_processes=workers,
                                      configurations=(budget.configuration,))
    seconds.update(result.seconds)
    cfg = result.plans["configurations"][budget.configuration]
    print(f"planned {budget.configuration}: patch {cfg['patch_size']}, batch {cfg['batch_size']}, spacing "
          f"{[round(s, 3) for s in cfg['spacing']]}; preprocessed {sum(len(r.processed) for r in reports)} case(s), "
          f"reused {sum(len(r.skipped) for r in reports)}")

    # train (or reuse the model trained with the same settings)
    model_folder = work / "results" / model_folder_name(result.plans, budget.configuration)
    fold_folder = model_folder / "fold_all"
    stamp = json.loads(json.dumps(  # as it reads back from JSON (tuples become lists)
        {"budget": dataclasses.asdict(budget), "seed": args.seed, "planner": args.planner, "device": device}))
    t = time.perf_counter()
    if (fold_folder / "checkpoint_final.pth").is_file() and _stamp(out / "demo_model.json") == stamp:
        print(f"reusing the trained model in {model_folder}")
    else:
        shutil.rmtree(out / "predictions", ignore_errors=True)
        print(f"training {budget.configuration} on {budget.cases} cases: {budget.epochs} epochs x {budget.iterations} "
              f"iterations on {device}")
        tc = TrainConfig(epochs=budget.epochs, iterations_per_epoch=budget.iterations, val_iterations=budget.val_iterations,
                         save_every=max(1, budget.epochs // 2), device=device, workers=workers, seed=args.seed,
                         final_validation=False, batch_size=budget.batch_size, compile=budget.compile)
        train(work, budget.configuration, "all", tc)
        write_json_atomic(stamp, out / "demo_model.json")
    seconds["train"] = time.perf_counter() - t

    # predict the held-out cases
    t = time.perf_counter()
    dataset_json = json.loads((raw / "dataset.json").read_text())
    ending = dataset_json.get("file_ending", ".nii.gz")
    predictor = Predictor.from_model_folder(model_folder, ("all",), device)
    cases, problems = find_cases([str(raw / "imagesTs")], predictor.model.num_input_channels, ending)
    if problems:
        raise ValueError(f"held-out images: {problems}")
    pred_dir = out / "predictions"
    report = predictor.predict_cases(cases, [pred_dir / f"{c.identifier}{ending}" for c in cases], skip_existing=True)
    if report.failed:
        raise ValueError(f"prediction failed: {report.failed}")
    seconds["predict"] = time.perf_counter() - t

    t = time.perf_counter()
    summary = evaluate_folders(pred_dir, raw / "labelsTs", dataset_json, output=pred_dir / "summary.json",
                               num_processes=workers, nsd_tolerance_mm=2.0)
    seconds["evaluate"] = time.perf_counter() - t
    t = time.perf_counter()
    overlays = out / "overlays"
    overlay_folder(pred_dir, raw / "imagesTs", overlays, dataset_json=dataset_json, num_processes=workers)
    seconds["overlay"] = time.perf_counter() - t

    names = {v: k for k, v in dataset_json["labels"].items() if not isinstance(v, list)}
    print()
    print(f"held-out scores ({len(cases)} cases, {budget.configuration}):")
    print(format_table(summary, names))
    print()
    width = max(len(k) for k in seconds)
    for stage, s in seconds.items():
        print(f"{stage.ljust(width)}  {s:7.2f} s")
    print(f"{'total'.ljust(width)}  {sum(seconds.values()):7.2f} s  ({workers} worker processes, device {device})")
    print()
    print(f"model:        {model_folder}  (progress.png and training_log.txt in fold_all/)")
    print(f"predictions:  {pred_dir}  (summary.json)")
    print(f"overlays:     {overlays}")
    print(f"foreground mean Dice on the held-out cases: {summary['foreground_mean']['Dice']:.3f}")
    return 0


def _shape(text: str) -> int:
    value = positive_int(text)
    if value < 8:
        raise argparse.ArgumentTypeError(f"each size must be at least 8 voxels, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    from fastseg.plan.presets import PLANNERS

    p = sub.add_parser(
        "demo",
        help="the whole job on a synthetic dataset: plan, preprocess, train, predict, evaluate, with stage times",
        description=(
            "Generates a synthetic CT-like dataset (organ, lesion, neighbour and tube labels; training and held-out "
            "cases) in nnU-Net v2 raw layout, verifies, plans and preprocesses it with nnU-Net's rules, trains one "
            "configuration with nnU-Net's recipe, predicts the held-out cases, scores them (Dice, HD95, NSD) and draws "
            "overlay pictures; then prints the scores per label, the time of each stage and where the model, "
            "predictions and pictures are. The default takes a few minutes on two CPU cores (--quick: about one); "
            "rerunning reuses what is already there."
        ),
        epilog="Examples:\n  fastseg demo\n  fastseg demo --quick -o /tmp/demo\n  fastseg demo --device cuda --epochs 20",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-o", "--output", default="fastseg_demo", metavar="DIR", help="folder for everything (default: ./fastseg_demo)")
    p.add_argument("--quick", action="store_true", help="a small dataset and budget (CI)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to train and predict (default: auto)")
    p.add_argument("--cases", type=positive_int, default=None, metavar="N", help=f"training cases (default: {DEFAULT.cases})")
    p.add_argument("--test-cases", type=positive_int, default=None, metavar="N", help=f"held-out cases (default: {DEFAULT.test_cases})")
    p.add_argument("--shape", type=_shape, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help=f"nominal case shape (default: {' '.join(map(str, DEFAULT.shape))})")
    p.add_argument("-c", "--configuration", default=None, metavar="CONFIG", help=f"configuration to train (default: {DEFAULT.configuration})")
    p.add_argument("--epochs", type=positive_int, default=None, metavar="N", help=f"training epochs (default: {DEFAULT.epochs})")
    p.add_argument("--iterations", type=positive_int, default=None, metavar="N", help=f"iterations per epoch (default: {DEFAULT.iterations})")
    p.add_argument("--planner", choices=PLANNERS, default="classic", help="planner preset (default: classic)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated dataset and the training (default: 0)")
    p.add_argument("-j", "--num-processes", type=positive_int, default=None, metavar="N", help="worker processes (default: all cores)")
    p.set_defaults(func=run)
