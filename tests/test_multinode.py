"""`torchrun --nnodes 2 ... -m fastseg train`: training across machines, as far as one machine allows.

Two torchrun agents on localhost stand for two nodes, each with one gloo process (`--node-rank`,
`--master-addr`: torchrun's static rendezvous, which has no heartbeats that a loaded 2-core machine
could miss). The reference is the same training as one node with two processes: the same
ranks, the same per-rank batches, so the same weights. A node is lost mid-run (its agent and
worker killed); the other node's run stops with an error instead of hanging, and both restarted with
`--resume` finish from the last checkpoint_latest.pth with the uninterrupted run's weights and losses.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import planned_dataset

from fastseg.train.checkpoint import load_checkpoint, network_state

pytestmark = pytest.mark.slow  # three short DDP trainings: about a minute on an idle 2-core machine

MODEL = "nnUNetTrainer__nnUNetPlans__3d_fullres"
EPOCHS = 4
ARGS = ["-c", "3d_fullres", "-f", "all", "--epochs", str(EPOCHS), "--save-every", "1", "--no-final-validation",
        "--iterations-per-epoch", "3", "--val-iterations", "0", "--workers", "1", "--no-compile"]
from fastseg.runtime.workers import child_import_environment  # noqa: E402

# `python -m fastseg` started from the repository root imports the installed package, not the source folder
ENV = child_import_environment({**os.environ, "OMP_NUM_THREADS": "1"})


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(work: Path, node_rank: int, port: int, *extra: str) -> subprocess.Popen:
    """One node's agent: 1 process, node rank `node_rank`, the head (node 0) at 127.0.0.1:port."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--node-rank", str(node_rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
           "-m", "fastseg", "train", str(work), *ARGS, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
                            errors="replace", env=ENV)


def _start_nodes(work: Path, *extra: str) -> list[subprocess.Popen]:
    """Node 0, then (once its agent serves the rendezvous endpoint, as a head node does) node 1."""
    import socket

    port = _free_port()
    first = _node(work, 0, port, *extra)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    return [first, _node(work, 1, port, *extra)]


def _descendants(pid: int) -> list[int]:
    """The processes below `pid` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rfind(")") + 2:].split()[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_node(node: subprocess.Popen) -> None:
    """A node is lost: its torchrun agent and every process it started, at once."""
    for pid in [*_descendants(node.pid), node.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    node.wait()


def _stop(nodes: list[subprocess.Popen]) -> None:
    for n in nodes:
        if n.poll() is None:
            _kill_node(n)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return planned_dataset(tmp_path_factory.mktemp("multinode"), preprocess_3d_fullres=True)[1]


def _copy(work: Path, dest: Path) -> Path:
    shutil.copytree(work, dest, ignore=shutil.ignore_patterns("results"))
    return dest


def test_two_nodes_lose_one_and_resume_to_the_one_node_result(work, tmp_path):
    one_node = _copy(work, tmp_path / "one_node")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "fastseg", "train", str(one_node), *ARGS], capture_output=True, text=True,
                         encoding="utf-8", errors="replace", env=ENV, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]

    two = _copy(work, tmp_path / "two_nodes")
    fold = two / "results" / MODEL / "fold_all"
    latest = fold / "checkpoint_latest.pth"
    nodes = _start_nodes(two)
    try:
        deadline = time.monotonic() + 300
        while not latest.is_file() and time.monotonic() < deadline and all(n.poll() is None for n in nodes):
            time.sleep(0.01)
        _kill_node(nodes[1])  # node 1 is lost: its agent and its worker
        try:
            out0, _ = nodes[0].communicate(timeout=180)
        except subprocess.TimeoutExpired:
            pytest.fail("node 0 still runs 180 s after node 1 was lost")
    finally:
        _stop(nodes)
    assert latest.is_file(), f"the run ended before its first checkpoint_latest.pth:\n{out0[-3000:]}"
    assert not (fold / "checkpoint_final.pth").exists(), "node 1 was killed after the run had finished"
    assert nodes[0].returncode != 0, out0[-3000:]
    epoch = int(load_checkpoint(latest)["current_epoch"])
    assert 1 <= epoch < EPOCHS

    nodes = _start_nodes(two, "--resume")
    try:
        outputs = [n.communicate(timeout=600)[0] for n in nodes]
    finally:
        _stop(nodes)
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(o[-2000:] for o in outputs)

    a = load_checkpoint(one_node / "results" / MODEL / "fold_all" / "checkpoint_final.pth")
    b = load_checkpoint(fold / "checkpoint_final.pth")
    assert b["current_epoch"] == EPOCHS and not latest.exists()
    assert a["logging"]["train_losses"] == b["logging"]["train_losses"]
    wa, wb = network_state(a), network_state(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    log = (fold / "training_log.txt").read_text()
    assert log.count("training done") == 1 and "2 processes" in log  # rank 0 alone writes the log
