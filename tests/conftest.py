"""Fixtures shared by all tests."""

from __future__ import annotations

import os

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def outside_the_source_tree(tmp_path_factory):
    """Runs the session from a scratch directory.

    Subprocesses (`python -m fastseg.cli`, the fork server of the worker pools) put their working
    directory first on sys.path; from the repository root that would import the source package,
    which has no compiled fastseg._C, instead of the installed one.
    """
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
