"""Joining a Ray cluster, and how many workers each of its nodes holds.

`connect(address)`: None starts a local cluster (this machine's cores, no dashboard) and stops it
again at the end; "auto" joins the cluster `ray start` runs on this machine (or the one
`RAY_ADDRESS` names, as Ray reads it); "HOST:PORT" joins that head node. A process that has
already called `ray.init` keeps its cluster.

`worker_slots`: one worker per GPU when the network runs on GPUs, else one per `cpus_per_worker`
cores of each node (a node with fewer cores gets one worker with all of them).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "fastseg[ray]"'


class RayMissingError(ValueError):
    """`--ray` was given and Ray cannot be imported."""


class ClusterError(ValueError):
    """The cluster cannot be joined, or has no room for a worker (the message says what to do)."""


def require_ray():
    """The `ray` module.

    Raises:
        RayMissingError: Ray is not installed (the message says how to install it).
    """
    try:
        import ray
    except ImportError as err:
        raise RayMissingError(
            f"--ray needs Ray, which is not installed ({err}); install it with: {INSTALL_HINT} "
            "(or pip install \"ray>=2.9\"), or run without --ray on this machine alone"
        ) from None
    return ray


def join(address: str | None):
    """Joins (or starts) the cluster for the rest of the process; returns the `ray` module. Ray stops
    a local cluster it started when the process exits.

    Args:
        address: None: start a local cluster with this machine's cores; "auto": the running cluster
            on this machine (`ray start --head` / `ray start --address`); "HOST:PORT" (or
            "ray://HOST:PORT"): the cluster whose head node listens there.

    Raises:
        RayMissingError: Ray is not installed.
        ClusterError: no cluster at `address`.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    kwargs = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
    try:
        # Ray puts the driver's working directory first on its workers' import path: run from a
        # source checkout (the repository root), they would import its uncompiled fastseg/ folder
        # instead of the installed package. So the driver stands in the folder that holds the
        # installed package while it joins; each worker then moves to the driver's working
        # directory (fastseg.distributed.scheduler), where relative paths mean what they mean here.
        with contextlib.chdir(_installed_package_parent()):
            if address is None:
                ray.init(**kwargs)
            else:
                ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = "on this machine" if address in (None, "auto") else f"at {address}"
        raise ClusterError(
            f"cannot join a Ray cluster {where}: {err}; start one with `ray start --head` (and `ray start "
            "--address HEAD:6379` on the other nodes), or give --ray without an address for a local one"
        ) from None
    return ray


def _installed_package_parent() -> str:
    """The folder that holds the fastseg package this process runs (site-packages, for an install)."""
    import fastseg

    return os.path.dirname(os.path.dirname(os.path.abspath(fastseg.__file__)))


@contextlib.contextmanager
def connect(address: str | None) -> Iterator[object]:
    """`join` for the block: a cluster this call started or joined is left again after it (a process
    that had already called `ray.init` keeps its cluster). Yields the `ray` module."""
    ray = require_ray()
    joined = not ray.is_initialized()
    join(address)
    try:
        yield ray
    finally:
        if joined:
            ray.shutdown()


@dataclass(frozen=True)
class Slot:
    """Room for one worker: the node it goes to and the resources it holds there."""

    node_id: str
    host: str
    cpus: float
    gpus: float


def worker_slots(ray, *, cpus_per_worker: int, gpu: bool) -> list[Slot]:
    """The workers the cluster's alive nodes hold.

    Args:
        ray: the `ray` module, connected.
        cpus_per_worker: CPU cores per worker (>= 1); on GPU nodes the CPUs that go with each GPU
            (at most the node's cores divided by its GPUs).
        gpu: one worker per GPU (nodes without GPUs get none).

    Raises:
        ClusterError: no node has room for a worker.
    """
    if cpus_per_worker < 1:
        raise ValueError(f"cpus_per_worker must be >= 1, got {cpus_per_worker}")
    slots = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        cpus, gpus = float(resources.get("CPU", 0)), int(resources.get("GPU", 0))
        host = node.get("NodeManagerHostname") or node.get("NodeManagerAddress", "?")
        if gpu:
            each = min(float(cpus_per_worker), cpus / gpus) if gpus else 0.0
            slots += [Slot(node["NodeID"], host, each, 1.0) for _ in range(gpus)]
        elif cpus >= 1:
            n = max(1, int(cpus // cpus_per_worker))
            slots += [Slot(node["NodeID"], host, min(float(cpus_per_worker), cpus), 0.0) for _ in range(n)]
    if not slots:
        what = "a GPU" if gpu else "a CPU"
        raise ClusterError(f"no node of the Ray cluster has {what} for a worker; add nodes (`ray start --address ...`)"
                           + (", or predict with --device cpu" if gpu else ""))
    return slots
