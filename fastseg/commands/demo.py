"""`fastseg demo`: the whole pipeline so far on a generated dataset, with the time per stage.

generate a synthetic CT-like dataset -> verify -> fingerprint -> plan -> preprocess, then print the
plans (per configuration: spacing, patch size, batch size, network stages) and the stage times.
A rerun with the same settings reuses the generated dataset and the finished cases.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

from fastseg.commands.plan import positive_int, reports_errors

logger = logging.getLogger(__name__)

DATASET_NAME = "Dataset900_FastsegDemo"


def _same_dataset(raw: Path, config) -> bool:
    """True when `raw` already holds the dataset `config` generates."""
    try:
        with open(raw / "dataset.json") as f:
            stored = json.load(f).get("synthetic_config")
    except (OSError, ValueError):
        return False
    return stored == json.loads(json.dumps(dataclasses.asdict(config)))


@reports_errors
def run(args: argparse.Namespace) -> int:
    from fastseg.datasets.synthetic import SyntheticConfig, write_synthetic_dataset
    from fastseg.plan.planner import PlannerOptions
    from fastseg.plan.plans import format_summary
    from fastseg.runtime.workers import default_num_workers
    from fastseg.workflow import prepare_dataset

    out = Path(args.output)
    raw, work = out / "raw" / DATASET_NAME, out / "work" / DATASET_NAME
    workers = args.num_processes or default_num_workers()
    config = SyntheticConfig(num_cases=args.cases, shape=tuple(args.shape), ct=True, seed=args.seed, name="FastsegDemo")
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    if _same_dataset(raw, config):
        print(f"reusing the generated dataset in {raw}")
    else:
        print(f"generating {config.num_cases} CT-like cases of about {'x'.join(map(str, config.shape))} voxels in {raw}")
        write_synthetic_dataset(raw, config, num_processes=workers, overwrite=True)
    seconds["generate"] = time.perf_counter() - t

    result, reports = prepare_dataset(raw, work, PlannerOptions(planner=args.planner), num_processes=workers)
    seconds.update(result.seconds)

    print()
    print(f"plans ({args.planner}) for {DATASET_NAME}, {config.num_cases} cases:")
    print(format_summary(result.plans))
    print()
    for report in reports:
        print(f"{report.configuration}: {len(report.processed)} preprocessed, {len(report.skipped)} reused -> {report.folder}")
    print()
    width = max(len(k) for k in seconds)
    for stage, s in seconds.items():
        print(f"{stage.ljust(width)}  {s:7.2f} s")
    print(f"{'total'.ljust(width)}  {sum(seconds.values()):7.2f} s  ({workers} worker processes)")
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
        help="run generate -> verify -> plan -> preprocess on a synthetic dataset and time each stage",
        description=(
            "Generates a synthetic CT-like dataset (organ, lesion, neighbour and tube labels) in nnU-Net v2 raw layout, "
            "verifies it, extracts the fingerprint, plans with nnU-Net's rules and preprocesses every configuration, "
            "then prints the plans (spacing, patch size, batch size, network stages per configuration) and the time "
            "per stage. The default size takes about a minute on two cores; rerunning reuses what is already there."
        ),
        epilog="Examples:\n  fastseg demo\n  fastseg demo --cases 20 --shape 100 256 256 -j 8 -o /tmp/demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-o", "--output", default="fastseg_demo", metavar="DIR", help="folder for the raw and work data (default: ./fastseg_demo)")
    p.add_argument("--cases", type=positive_int, default=8, metavar="N", help="training cases to generate (default: 8)")
    p.add_argument(
        "--shape", type=_shape, nargs=3, default=(64, 128, 128), metavar=("Z", "Y", "X"), help="nominal case shape (default: 64 128 128)"
    )
    p.add_argument("--planner", choices=PLANNERS, default="classic", help="planner preset (default: classic)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated dataset (default: 0)")
    p.add_argument("-j", "--num-processes", type=positive_int, default=None, metavar="N", help="worker processes (default: all cores)")
    p.set_defaults(func=run)
