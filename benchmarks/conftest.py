"""Side-by-side timing for the benchmarks: fastseg and its reference, timed the same way, at the same
pinned thread count, in one process.

How a benchmark is timed (the `bench` fixture):
  * both sides through pytest-benchmark's pedantic mode with the same `rounds`, one warm-up round and
    one iteration per round; the table shows medians of the timed rounds (warm-up excluded);
  * an optional `setup` (untimed, before every round) builds the call's arguments; the two sides of
    a row get the same setup;
  * nothing else runs inside a timed call: memory is measured by the tests in a separate, untimed call.

How threads are pinned (the `threads` fixture, one value per test):
  * fastseg: its kernels use the OpenMP runtime (libgomp) that fastseg._C links. fastseg._C has no
    thread setter of its own (only `max_threads()`), so the limit goes through threadpoolctl's
    `threadpool_limits(limits=n)`, which calls omp_set_num_threads on every OpenMP runtime loaded
    (torch's libgomp and fastseg's are one runtime in one process: the same soname is loaded once);
  * the reference: the same `threadpool_limits` covers the BLAS libraries numpy and scipy load
    (OpenBLAS) and OpenMP; torch's intra-op pool is set with torch.set_num_threads(n). scipy.ndimage,
    scikit-image, cc3d and nnU-Net's numpy code are single-threaded whatever n is.
  * the pin is checked before the test (fastseg._C.max_threads(), torch.get_num_threads() and
    threadpoolctl's report must all equal n, or the test fails) and during it: the warm-up round of
    every benchmark counts the OS threads of this process that ran on a CPU during the call
    (/proc/self/task/*/schedstat); in THREAD_SWEEP modules a call that ran on more threads than
    pinned fails its test, and the summary lists the thread counts seen at each pin. (Benchmarks that
    work in worker processes, like the synthetic dataset writer, are pinned in this process only.)

Modules that set `THREAD_SWEEP = True` run each benchmark at 1 thread and at all cores (the CPUs this
process may run on); others run at all cores. Options: `--bench-threads 1,2` picks the counts,
`--bench-rounds N` sets the timed rounds of every benchmark (both sides alike; for smoke runs).

Each benchmark records in `benchmark.extra_info`: `op`, `shape`, `dtype`, `impl` ("fastseg" or the
reference's name), `threads` and, where it means something, `bytes` (bytes read plus written by one
call) and `peak_extra_bytes` (memory, measured by the test in a separate untimed call). At the end of
the run this file prints, per thread count, one row per op and reference:
op | shape | dtype | fastseg | reference | ratio | GB/s (ratio = reference time / fastseg time; GB/s =
fastseg's bytes per second), then the 1-thread ratio beside the all-cores ratio, with a header naming
the CPU, the threads and the versions.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable, Iterator

import pytest

ALL_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
WARMUP_ROUNDS = 1


def pytest_addoption(parser):
    group = parser.getgroup("fastseg benchmarks")
    group.addoption(
        "--bench-threads",
        default=None,
        help=f"comma-separated thread counts for THREAD_SWEEP modules (default: 1,{ALL_CORES})",
    )
    group.addoption(
        "--bench-rounds",
        type=int,
        default=None,
        help="timed rounds of every benchmark, the same on both sides (default: each benchmark's own)",
    )


def _thread_counts(config) -> list[int]:
    raw = config.getoption("--bench-threads")
    if raw is None:
        return sorted({1, ALL_CORES})
    try:
        counts = sorted({int(v) for v in raw.split(",") if v.strip()})
    except ValueError:
        raise pytest.UsageError(f"--bench-threads takes comma-separated integers like 1,{ALL_CORES}; got {raw!r}")
    if not counts or counts[0] < 1:
        raise pytest.UsageError(f"--bench-threads needs counts >= 1; got {raw!r}")
    return counts


def pytest_generate_tests(metafunc):
    if "threads" in metafunc.fixturenames and getattr(metafunc.module, "THREAD_SWEEP", False):
        counts = _thread_counts(metafunc.config)
        metafunc.parametrize("threads", counts, indirect=True, ids=[f"threads={n}" for n in counts])


# --- thread pinning -------------------------------------------------------------------------------


@contextlib.contextmanager
def pinned_threads(n: int) -> Iterator[None]:
    """Limits fastseg's OpenMP threads and the reference's torch, OpenMP and BLAS threads to n; checks
    that each took effect and restores the previous settings on exit."""
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from fastseg import _native

    old_torch = torch.get_num_threads()
    with threadpool_limits(limits=n):
        torch.set_num_threads(n)
        try:
            seen = {
                "fastseg._C max_threads": _native.cpu().max_threads(),
                "torch.get_num_threads": torch.get_num_threads(),
                **{f"{i['internal_api']} {os.path.basename(i['filepath'])}": i["num_threads"] for i in threadpool_info()},
            }
            wrong = {k: v for k, v in seen.items() if v != n}
            if wrong:
                pytest.fail(f"could not pin threads to {n}: {wrong} (all seen: {seen})")
            yield
        finally:
            torch.set_num_threads(old_torch)


@pytest.fixture
def threads(request) -> Iterator[int]:
    """The thread count this test is pinned to, on both sides (see the module docstring)."""
    n = getattr(request, "param", ALL_CORES)
    with pinned_threads(n):
        yield n


def _checks_threads(request) -> bool:
    """Whether the test's calls must run on at most the pinned threads: true in THREAD_SWEEP modules,
    whose benchmarks run in this process; others (worker processes) only report what they saw."""
    return bool(getattr(request.module, "THREAD_SWEEP", False))


def _thread_cpu_ns() -> dict[str, int] | None:
    """CPU time so far of each OS thread of this process, in ns (None where /proc has no schedstat)."""
    out = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                out[tid] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return out or None


def busy_threads(before: dict[str, int] | None, after: dict[str, int] | None) -> int | None:
    """Threads that ran for at least 5 % of the busiest thread's CPU time between two snapshots."""
    if before is None or after is None:
        return None
    deltas = [after[t] - before.get(t, 0) for t in after]
    top = max(deltas, default=0)
    return sum(d >= 0.05 * top for d in deltas) if top > 0 else 0


# --- timing ----------------------------------------------------------------------------------------


@pytest.fixture
def bench(benchmark, threads, request):
    """bench(fn, *, rounds, setup=None, op, shape, dtype, impl, bytes=None, **extra) -> fn's last result.

    Times fn with pytest-benchmark's pedantic mode: `rounds` timed rounds (or --bench-rounds) after
    one warm-up round, one call per round. `setup`, when given, returns fn's positional arguments as a
    tuple and runs untimed before every round (warm-up included). Use the same rounds and setup for
    both sides of a row. Before each round the previous round's result is freed (untimed). The
    warm-up round also counts the threads the call ran on. `bench.extra_info` is the benchmark's;
    its "calls" holds how many times fn ran (warm-up included) once bench returns."""
    override = request.config.getoption("--bench-rounds")

    def _bench(fn: Callable, *, rounds: int, setup: Callable[[], tuple] | None = None, **info):
        rounds = override or rounds
        benchmark.extra_info.update(info, threads=threads, rounds=rounds, warmup_rounds=WARMUP_ROUNDS)
        benchmark.group = f"{info['op']} | {info['shape']} | {info['dtype']} | threads={threads}"
        last: dict = {}
        calls = 0

        def arguments() -> tuple[tuple, dict]:
            # Frees the previous round's result here, untimed, so that no call runs while the last
            # one's output is still alive (pytest-benchmark would otherwise hold it until the next
            # call returns), then builds this round's arguments.
            last.clear()
            return (tuple(setup()) if setup is not None else ()), {}

        def call(*args) -> None:
            nonlocal calls
            calls += 1
            if calls > 1:
                last["result"] = fn(*args)
                return
            before = _thread_cpu_ns()  # the warm-up round: its time is discarded
            last["result"] = fn(*args)
            benchmark.extra_info["busy_threads"] = busy_threads(before, _thread_cpu_ns())

        benchmark.pedantic(call, setup=arguments, rounds=rounds, iterations=1, warmup_rounds=WARMUP_ROUNDS)
        benchmark.extra_info["calls"] = calls  # warm-up included
        busy = benchmark.extra_info.get("busy_threads")
        benchmark.extra_info["thread_check"] = _checks_threads(request)
        if benchmark.extra_info["thread_check"] and busy is not None and busy > threads:
            pytest.fail(f"{info['impl']} ran on {busy} threads during the warm-up call; pinned to {threads}")
        return last.get("result")

    _bench.extra_info = benchmark.extra_info
    return _bench


# --- the side-by-side table ------------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _source_commit(rootdir) -> str:
    """The commit of the checkout the run starts from (the installed fastseg should be built from it)."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "-C", str(rootdir), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    dists = {
        "fastseg": "fastseg",
        "nnunetv2": "nnunetv2",
        "scipy": "scipy",
        "cc3d": "connected-components-3d",
        "numpy": "numpy",
        "torch": "torch",
        "scikit-image": "scikit-image",
        "threadpoolctl": "threadpoolctl",
    }
    parts = []
    for name, dist in dists.items():
        try:
            parts.append(f"{name} {version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


def _runtimes() -> str:
    try:
        from threadpoolctl import threadpool_info

        import fastseg._C  # noqa: F401  (loads fastseg's OpenMP runtime)
        import torch  # noqa: F401
    except ImportError:
        return "unknown"
    return "; ".join(f"{i['internal_api']} ({os.path.basename(i['filepath'])})" for i in threadpool_info())


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.2f} s"


def _collect(session) -> dict[tuple, dict]:
    """{(op, shape, dtype, threads): {"info": extra_info, "impls": {impl: median s}, "busy": {impl: threads},
    "peak": {impl: bytes}}}"""
    rows: dict[tuple, dict] = {}
    for bm in session.benchmarks:
        info = bm.extra_info
        if "impl" not in info or bm.has_error or bm.stats is None or not bm.stats.data:
            continue
        key = (info["op"], info["shape"], info["dtype"], info.get("threads"))
        row = rows.setdefault(key, {"info": info, "impls": {}, "busy": {}, "peak": {}})
        row["impls"][info["impl"]] = bm.stats.median
        if info.get("thread_check"):
            row["busy"][info["impl"]] = info.get("busy_threads")
        if info.get("peak_extra_bytes") is not None:
            row["peak"][info["impl"]] = info["peak_extra_bytes"]
        if info.get("bytes"):
            row["info"] = {**row["info"], "bytes": info["bytes"]}
    return rows


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    rows = _collect(session)
    if not rows:
        return
    tr = terminalreporter
    tr.write_sep("=", "fastseg vs reference: medians after warm-up")
    thread_values = sorted({k[3] for k in rows if k[3] is not None})
    tr.write_line(f"CPU: {_cpu_name()}, {os.cpu_count()} logical CPUs, {ALL_CORES} usable by this process")
    tr.write_line(
        f"Versions: {_versions()}; Python {platform.python_version()}; checkout {_source_commit(config.rootpath)}"
    )
    tr.write_line(f"Threads: {', '.join(map(str, thread_values))}, pinned on both sides per table; runtimes: {_runtimes()}")
    tr.write_line(
        "Pinning: fastseg OpenMP and reference OpenMP/BLAS via threadpoolctl.threadpool_limits(n), torch via "
        "torch.set_num_threads(n); scipy.ndimage, scikit-image, cc3d and nnU-Net's numpy code are single-threaded."
    )
    rounds = sorted({bm.extra_info.get("rounds") for bm in session.benchmarks if "rounds" in bm.extra_info})
    tr.write_line(
        f"Timing: pytest-benchmark pedantic mode, {WARMUP_ROUNDS} warm-up round + the same timed rounds on both "
        f"sides of a row ({'/'.join(map(str, rounds))} by op), 1 call per round, untimed setup; medians"
    )
    tr.write_line("ratio = reference / fastseg (above 1: fastseg is faster); GB/s = fastseg's bytes read + written per second")

    ratios: dict[tuple, dict[int, float]] = {}
    unpinned = [None] if any(k[3] is None for k in rows) else []
    for n in thread_values + unpinned:
        tr.write_line("")
        if n is None:
            tr.write_line("threads not pinned by this conftest (benchmarks of whole processes):")
        else:
            tr.write_line(f"{n} thread{'s' if n > 1 else ''} (fastseg and reference):")
        tr.write_line("| op | shape | dtype | fastseg | reference | ratio | GB/s |")
        tr.write_line("|---|---|---|---|---|---|---|")
        for (op, shape, dtype, threads), row in rows.items():
            if threads != n:
                continue
            info, impls = row["info"], row["impls"]
            ours = impls.get("fastseg")
            refs = [(k, v) for k, v in impls.items() if k != "fastseg"] or [(None, None)]
            gbs = f"{info['bytes'] / ours / 1e9:.1f}" if ours and info.get("bytes") else "-"
            for ref_name, ref in refs:
                ratio = f"{ref / ours:.2f}x" if ours and ref else "-"
                if ours and ref and n is not None:
                    ratios.setdefault((op, shape, dtype, ref_name), {})[n] = ref / ours
                ours_s = _ms(ours) if ours else "-"
                ref_s = f"{ref_name} {_ms(ref)}" if ref else "-"
                tr.write_line(f"| {op} | {shape} | {dtype} | {ours_s} | {ref_s} | {ratio} | {gbs} |")

    if len(thread_values) > 1:
        tr.write_line("")
        tr.write_line("ratio at each thread count:")
        head = " | ".join(f"ratio, {n} thread{'s' if n > 1 else ''}" for n in thread_values)
        tr.write_line(f"| op | shape | dtype | reference | {head} |")
        tr.write_line("|---|---|---|---|" + "---|" * len(thread_values))
        for (op, shape, dtype, ref_name), by_n in ratios.items():
            cells = " | ".join(f"{by_n[n]:.2f}x" if n in by_n else "-" for n in thread_values)
            tr.write_line(f"| {op} | {shape} | {dtype} | {ref_name} | {cells} |")

    for (op, shape, dtype, threads), row in rows.items():
        if row["peak"]:
            cells = ", ".join(f"{impl} {b / 2**20:.1f} MiB" for impl, b in row["peak"].items())
            tr.write_line(f"peak extra memory (separate untimed call), {op} | {shape} | threads={threads}: {cells}")

    over = [
        f"{op} {shape} [{impl}]: {busy} threads busy at threads={threads}"
        for (op, shape, dtype, threads), row in rows.items()
        for impl, busy in row["busy"].items()
        if busy is not None and threads is not None and busy > threads
    ]
    checked = sum(b is not None for row in rows.values() for b in row["busy"].values())
    tr.write_line("")
    for n in thread_values:
        seen: dict[str, set] = {"fastseg": set(), "reference": set()}
        for (_, _, _, threads), row in rows.items():
            if threads == n:
                for impl, busy in row["busy"].items():
                    if busy is not None:
                        seen["fastseg" if impl == "fastseg" else "reference"].add(busy)
        tr.write_line(
            f"threads={n}: threads busy during one call (warm-up round): fastseg {sorted(seen['fastseg'])}, "
            f"references {sorted(seen['reference'])}"
        )
    if over:
        tr.write_line(f"PINNING CHECK FAILED for {len(over)} of {checked} benchmarks (threads busy in the warm-up call):")
        for line in over:
            tr.write_line(f"  {line}")
    else:
        tr.write_line(f"Pinning check: none of {checked} benchmarks ran on more threads than pinned (warm-up call, /proc schedstat)")
