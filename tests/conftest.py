"""Shared fixtures: prepared data directories (session-scoped, made once per test run)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from components import config
from components.data.prepare import prepare

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A synthetic data directory (experiment synthetic_tiny: 300 users, 800 pins, ~9k events)."""
    out = tmp_path_factory.mktemp("data") / "synthetic_tiny"
    prepare(config.load("synthetic_tiny"), out)
    return out


@pytest.fixture(scope="session")
def ml100k_data(tmp_path_factory) -> Path:
    """ML-100k mapped into the event schema (about 20 s, once per session)."""
    out = tmp_path_factory.mktemp("data") / "ml100k"
    prepare(config.load("ml100k"), out)
    return out
