"""Shared fixtures: prepared data directories (session-scoped, made once per test run)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from components import config
from components.data.prepare import prepare

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "tests" / "bench"


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    """Benchmarks run only when tests/bench (or a file in it) is named: `make bench`, never `make test`."""
    if collection_path == BENCH or BENCH in collection_path.parents:
        named = [(config.invocation_params.dir / str(a).split("::")[0]).resolve() for a in config.args]
        if not any(a == BENCH or BENCH in a.parents for a in named):
            return True
    return None


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A synthetic data directory (experiment synthetic_tiny: 300 users, 800 pins, ~9k events)."""
    out = tmp_path_factory.mktemp("data") / "synthetic_tiny"
    prepare(config.load("synthetic_tiny"), out)
    return out


@pytest.fixture(scope="session")
def ml100k_data(tmp_path_factory) -> Path:
    """ML-100k mapped into the event schema (a few seconds, once per session)."""
    out = tmp_path_factory.mktemp("data") / "ml100k"
    prepare(config.load("ml100k"), out)
    return out


@pytest.fixture(scope="session")
def server_stack(tmp_path_factory):
    """The ``server`` stack profile for real, once per session: Valkey (Feast's Redis online store), PostgreSQL
    (Feast's SQL registry), the Milvus standalone server with authorization, and ``feast serve``, each on
    127.0.0.1 and a free port, secrets generated into files (components/stack). Yields the StackConfig
    (``.source`` = its stack.yaml). ``components.stack.add_triton(Path(cfg.source).parent, repository)`` adds a
    tritonserver; ``components.stack.isolated(cfg, name, dir)`` gives a test its own Feast project and Milvus
    alias on the same servers. At the end every server is stopped by process group, and checked gone."""
    from components import stack
    from components.stack.servers import alive

    state = tmp_path_factory.mktemp("server_stack")
    cfg = stack.up("server", state)
    try:
        yield cfg
    finally:
        procs = stack.processes(state)
        stack.down(state, purge=True)
        left = {p.name: alive(p.pgid) for p in procs if alive(p.pgid)}
        assert not left, f"stack processes left running: {left}"
