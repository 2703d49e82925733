"""The installed package: native modules, CLI entry point, build report."""

from __future__ import annotations

import subprocess

import pytest
from helpers import fastseg_script

import fastseg
from fastseg import _native
from fastseg.threads import get_num_threads, num_threads, set_num_threads


def test_cpu_module_imports_and_reports_threads():
    info = _native.build_info()
    assert info["cpu_threads"] >= 1
    assert isinstance(info["cuda_kernels_compiled"], bool)


def test_thread_count_is_set_and_restored():
    before = get_num_threads()
    with num_threads(1):
        assert get_num_threads() == 1 == _native.build_info()["cpu_threads"]
        with num_threads(3):
            assert get_num_threads() == 3 == _native.cpu().max_threads()
        assert get_num_threads() == 1
    assert get_num_threads() == before
    with pytest.raises(ValueError, match="at least 1, got 0"):
        set_num_threads(0)
    with pytest.raises(TypeError, match="integer, got float 2.0"):
        set_num_threads(2.0)
    with pytest.raises(ValueError, match="at least 1, got -2"):
        _native.cpu().set_num_threads(-2)  # the binding's own check
    assert get_num_threads() == before


def test_cli_version_and_help():
    out = subprocess.run([fastseg_script(), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"fastseg {fastseg.__version__}"
    out = subprocess.run([fastseg_script(), "--help"], capture_output=True, text=True, check=True)
    assert "info" in out.stdout


def test_cli_info_is_json():
    import json

    out = subprocess.run([fastseg_script(), "info"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["fastseg"] == fastseg.__version__
