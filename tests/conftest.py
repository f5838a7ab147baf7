"""Shared fixtures: a fresh workspace, small generated images, the ../shared data path."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from data.workspace import Workspace, WorkspaceConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_REAL = SHARED / "data" / "real"

os.environ.setdefault("OMP_NUM_THREADS", "2")
# Page tests save labels; the Label page would then start a real background head refit.
# Tests of the two-speed loop switch it back on (tests/test_app_refit.py, tests/test_browser.py).
os.environ.setdefault("CARGROUP_AUTO_REFIT", "0")


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """An initialised workspace with a 64 px cache (tests keep images small)."""
    return Workspace(tmp_path / "ws").init(WorkspaceConfig(cache_size=64))


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread (small models; parallel overhead only slows them)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def require_shared_real() -> Path:
    """Skip the calling test when ../shared/data/real is not beside the checkout."""
    if not SHARED_REAL.is_dir():
        pytest.skip(f"real data not available at {SHARED_REAL}")
    return SHARED_REAL
