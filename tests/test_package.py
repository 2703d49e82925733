"""The installed package: native modules, CLI entry point, build report."""

from __future__ import annotations

import subprocess
import sys

import pytest

import fastseg
from fastseg import _native


def test_cpu_module_imports_and_reports_threads():
    info = _native.build_info()
    assert info["cpu_threads"] >= 1
    assert isinstance(info["cuda_kernels_compiled"], bool)


def test_cuda_module_imports_without_a_driver():
    """When the CUDA kernels were built, importing them must not need a GPU or a driver."""
    mod = _native.cuda_module()
    if mod is None:
        pytest.skip("fastseg._C_cuda not compiled (no nvcc at build time)")
    assert mod.device_count() >= 0


def test_cli_version_and_help():
    out = subprocess.run([sys.executable, "-m", "fastseg.cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"fastseg {fastseg.__version__}"
    out = subprocess.run([sys.executable, "-m", "fastseg.cli", "--help"], capture_output=True, text=True, check=True)
    assert "info" in out.stdout


def test_cli_info_is_json(tmp_path):
    import json

    # Run outside the repository: from its root, `python -m` would import the source folder, which has
    # no compiled module, instead of the installed package.
    out = subprocess.run(
        [sys.executable, "-m", "fastseg.cli", "info"], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert json.loads(out.stdout)["fastseg"] == fastseg.__version__
