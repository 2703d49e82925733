"""Side-by-side reporting for the benchmarks.

Each benchmark records in `benchmark.extra_info`: `op`, `shape`, `dtype`, `impl` ("fastseg" or the
reference's name) and, where it means something, `bytes` (bytes read plus written by one call).
Benchmarks of the same op and shape share a pytest-benchmark group. At the end of the run this file
prints one row per group: op | shape | dtype | fastseg | reference | ratio | GB/s, medians, with
a header naming the CPU, the threads and the versions.
"""

from __future__ import annotations

import os
import platform

import pytest


def run_pedantic(benchmark, fn, *, rounds: int, setup=None, **info):
    """Runs fn `rounds` times after one warm-up call and records the row's fields. `setup`, when
    given, returns fn's positional arguments and runs untimed before every call."""
    benchmark.extra_info.update(info)
    benchmark.group = f"{info['op']} {info['shape']}"
    if setup is None:
        return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    return benchmark.pedantic(fn, setup=lambda: (setup(), {}), rounds=rounds, warmup_rounds=1)


@pytest.fixture
def bench(benchmark):
    def _bench(fn, *, rounds: int = 5, setup=None, **info):
        return run_pedantic(benchmark, fn, rounds=rounds, setup=setup, **info)

    return _bench


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for dist in ("fastseg", "nnunetv2", "numpy", "scipy", "scikit-image", "connected-components-3d", "torch"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            pass
    return ", ".join(parts)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, dict] = {}
    for bm in session.benchmarks:
        info = bm.extra_info
        if "impl" not in info:
            continue
        g = groups.setdefault(bm.group, {"info": info, "impls": {}})
        g["impls"][info["impl"]] = bm.stats.median
    from fastseg import _native

    threads = _native.cpu().max_threads()
    tr = terminalreporter
    tr.write_sep("=", "fastseg vs reference (medians)")
    tr.write_line(f"CPU: {_cpu_name()}, {os.cpu_count()} cores, {threads} OpenMP threads; {_versions()}")
    tr.write_line("| op | shape | dtype | fastseg | reference | ratio | GB/s |")
    tr.write_line("|---|---|---|---|---|---|---|")
    for g in groups.values():
        info, impls = g["info"], g["impls"]
        ours = impls.get("fastseg")
        refs = {k: v for k, v in impls.items() if k != "fastseg"}
        for ref_name, ref in refs.items() or [(None, None)]:
            gbs = f"{info['bytes'] / ours / 1e9:.1f}" if ours and info.get("bytes") else "-"
            ratio = f"{ref / ours:.1f}x" if ours and ref else "-"
            ours_s = f"{ours * 1e3:.1f} ms" if ours else "-"
            ref_s = f"{ref_name} {ref * 1e3:.1f} ms" if ref else "-"
            tr.write_line(f"| {info['op']} | {info['shape']} | {info['dtype']} | {ours_s} | {ref_s} | {ratio} | {gbs} |")
