"""Shared test setup. Real human data comes from ALIGN_DATA_DIR (default ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("ALIGN_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))

# Fixture modules of the service tests (real redis-server, real Ray Serve), registered
# here so that each lives in its own file.
pytest_plugins = ["tests.services.redis_fixtures", "tests.services.serve_fixtures"]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real human data folder; tests that need it skip, saying why, when absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"real data folder not found at {DATA_DIR} (set ALIGN_DATA_DIR)")
    return DATA_DIR


@pytest.fixture(autouse=True, scope="session")
def _few_threads() -> None:
    # 2 cores on CI, shared with Ray and Redis: one torch thread avoids oversubscription.
    try:
        import torch
    except ImportError:  # the science core runs without torch
        return
    torch.set_num_threads(1)
