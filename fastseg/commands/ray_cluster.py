"""`--ray [ADDRESS]` on `fastseg preprocess`, `predict` and `evaluate`: their options and dispatch.

Ray is imported only when the flag is given (`fastseg.distributed`); without Ray installed the
flag fails with a message that says how to install it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from fastseg.commands.plan import positive_int

#: `--ray` given without an address: start a local cluster.
LOCAL = "local"
_ADDRESS = re.compile(r"^(auto|(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d+)$")


def _address(text: str) -> str:
    if text == LOCAL or _ADDRESS.match(text):
        return text
    raise argparse.ArgumentTypeError(
        f"the Ray cluster address must be 'auto' or HOST:PORT, got {text!r}; to start a local cluster give --ray "
        "without an address, after the positional arguments (or as --ray=auto to join the running one)"
    )


def _retries(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"retries must be >= 0, got {value}")
    return value


def add_ray_options(p: argparse.ArgumentParser, *, cpus_per_worker: int) -> None:
    """`--ray [ADDRESS]`, `--ray-retries N` and `--ray-cpus-per-worker N` (default `cpus_per_worker`)."""
    p.add_argument(
        "--ray", nargs="?", const=LOCAL, default=None, type=_address, metavar="ADDRESS",
        help="run the cases on a Ray cluster (pip install \"fastseg[ray]\"): 'auto' joins the cluster `ray start` "
        "runs here, HOST:PORT the one whose head listens there, no address starts a local one. Input and output "
        "folders must be at the same path on every node",
    )
    p.add_argument("--ray-retries", type=_retries, default=2, metavar="N",
                   help="with --ray: tries again for a failed case, on another worker (default: 2)")
    p.add_argument("--ray-cpus-per-worker", type=positive_int, default=cpus_per_worker, metavar="N",
                   help=f"with --ray: CPU cores per worker (default: {cpus_per_worker}; a node with fewer cores gets "
                   "one worker with all of them; with --device cuda one worker per GPU)")


def _join(args: argparse.Namespace):
    from fastseg.distributed.cluster import join

    return join(None if args.ray == LOCAL else args.ray)


def _print_summary(cluster) -> None:
    for line in cluster.summary_lines():
        print(line)


def preprocess_runner(args: argparse.Namespace):
    """The case runner of `fastseg preprocess --ray` (None without the flag)."""
    if args.ray is None:
        return None
    from fastseg.distributed.preprocess import ClusterJobs

    return ClusterJobs(_join(args), cpus_per_worker=args.ray_cpus_per_worker, retries=args.ray_retries)


def report_runner(runner) -> None:
    """The cluster summary of a `preprocess_runner` / `evaluate_mapper` after the run (nothing without --ray)."""
    for report in getattr(runner, "reports", ()):
        _print_summary(report)


def evaluate_mapper(args: argparse.Namespace):
    """The case map of `fastseg evaluate --ray` (None without the flag)."""
    if args.ray is None:
        return None
    from fastseg.distributed.evaluate import ClusterMap

    return ClusterMap(_join(args), cpus_per_worker=args.ray_cpus_per_worker, retries=args.ray_retries)


def predict_on_ray(args: argparse.Namespace, model_dir: Path, folds, cases_and_outputs) -> int:
    """`fastseg predict --ray`: the model folder checked here, the cases predicted by the cluster's workers
    (`cases_and_outputs(args, model)` finds the cases and names their output files as `fastseg predict`
    does: (cases, outputs, problems))."""
    from fastseg.predict.model import ModelFolderError, load_model_folder

    from fastseg.commands.predict_slide import slide_inputs

    if slide_inputs(args.input, getattr(args, "slide", False)):
        raise ValueError("--ray predicts volumes, one case per worker; whole-slide images are predicted on one machine "
                         "(leave --ray out)")
    try:
        model = load_model_folder(model_dir, folds, args.checkpoint)
    except ModelFolderError as err:
        raise ValueError(str(err)) from None
    ray = _join(args)
    from fastseg.distributed.predict import predict_on_cluster

    cases, outputs, problems = cases_and_outputs(args, model)
    print(
        f"{len(cases)} case(s), model {model.path.name} ({model.configuration}, folds "
        f"{', '.join(p.parent.name for p in model.checkpoints)}, {model.trainer_name}), device {args.device}, "
        f"on Ray ({args.ray if args.ray != LOCAL else 'a local cluster'})"
    )
    options = {"checkpoint": args.checkpoint, "step_size": args.step_size, "tta": not args.no_tta,
               "batch_size": args.batch_size, "postprocessing": args.postprocessing, "compile": args.compile,
               "memory_budget_gb": getattr(args, "memory_budget_gb", None)}
    report, cluster = predict_on_cluster(
        ray, model.path, folds, cases, outputs, device=args.device, options=options,
        save_probabilities=args.save_probabilities, skip_existing=args.continue_,
        cpus_per_worker=args.ray_cpus_per_worker, retries=args.ray_retries,
    )
    s = report.seconds
    print(
        f"{len(report.written)} written, {len(report.skipped)} already there, {len(report.failed) + len(problems)} failed; "
        f"time summed over workers: read+preprocess {s['read']:.2f} s, network {s['network']:.2f} s, export+write "
        f"{s['write']:.2f} s; wall {s['total']:.2f} s"
    )
    _print_summary(cluster)
    for identifier, error in report.failed.items():
        print(f"error: case {identifier} (after {cluster.attempts.get(identifier, 1)} attempt(s)): {error}", file=sys.stderr)
    return 1 if report.failed or problems else 0
