"""Shared fixtures -- prepared data, tiny trained models, the server stack -- and how `make test` splits the suite
over two pytest-xdist workers (whole modules per worker, slowest first). Data and models are made once per run,
also across workers (tests/_shared.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _shared import build_ml100k_data, build_ranker_export, build_retrieval_models, build_tiny_data, built_once

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


# Test modules that share the session's `server_stack`: under xdist they form one unit of work, so that the servers
# start once (a module missing here still works: its worker starts a stack of its own).
SERVER_STACK_MODULES = ("test_milvus_server", "test_milvus_search", "test_recommend_cache", "test_stack", "test_stack_pipeline")
# Units of work by wall time in whole-suite runs (the previous sessions' --durations), slowest first; the rest follow
# in file order. Only the order in which xdist hands out work depends on it (longest first, so that no worker is
# left running a long unit alone at the end).
SLOW_UNITS = ("test_service", "test_ranker_eval", "test_demo", "server_stack", "test_sharding", "test_pipelines_local",
              "test_cli", "test_tune", "test_import", "test_pinsage", "test_pinsage_eval", "test_bad_input", "test_helm",
              "test_pinnerformer_eval", "test_data_prepare")


def _unit(nodeid: str) -> str:
    """The unit of work of a test under xdist: its module, or ``server_stack`` for the modules sharing the stack."""
    module = Path(nodeid.split("::", 1)[0]).stem
    return "server_stack" if module in SERVER_STACK_MODULES else module


def pytest_collection_modifyitems(config, items) -> None:
    """Under pytest-xdist, the slowest units first (a stable sort: each module's tests keep their order)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {name: i for i, name in enumerate(SLOW_UNITS)}
        items.sort(key=lambda item: rank.get(_unit(item.nodeid), len(rank)))


def pytest_xdist_make_scheduler(config, log):
    """`make test` runs ``pytest -n 2``: each unit of work (`_unit`: a module, or the modules sharing the server
    stack) goes whole to one worker, so module fixtures (trained models, a tritonserver, a kfp.local run) and the
    server stack are built once; units are handed out in collection order. (xdist's own ``--dist loadgroup`` does
    not group under pytest 9, whose node ids are no longer rewritable.)"""
    from xdist.scheduler import LoadScopeScheduling  # only under xdist, which calls this hook

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    config.option.loadscopereorder = False
    return UnitScheduling(config, log)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A synthetic data directory (experiment synthetic_tiny: 300 users, 800 pins, ~9k events), made once per run
    (tests/_shared.py: also across xdist workers). Read-only: a test that corrupts data copies it first."""
    return built_once(tmp_path_factory, "synthetic_tiny", build_tiny_data)


@pytest.fixture(scope="session")
def ml100k_data(tmp_path_factory) -> Path:
    """ML-100k mapped into the event schema by ``homefeed data prepare --dataset ml-100k``, once per run."""
    return built_once(tmp_path_factory, "ml100k", build_ml100k_data)


@pytest.fixture(scope="session")
def tiny_retrieval_models(tiny_data, tmp_path_factory) -> Path:
    """Tiny PinSage + PinnerFormer (one epoch each) and the pin table, once per run, for the tests that only need
    "some trained retrieval models" (the daily runs): ``pinsage/``, ``pins/`` (store, version ``full``),
    ``pinnerformer/``. Read-only."""
    return built_once(tmp_path_factory, "retrieval_models", lambda out: build_retrieval_models(tiny_data, out))


@pytest.fixture(scope="session")
def tiny_ranker_export(tiny_data, tmp_path_factory) -> Path:
    """The tiny ranker (ranker_tiny on the content embeddings) in ``model/`` and its checked ONNX export in
    ``export/``, once per run, for the tests that serve "some trained ranker" (Triton, the recommend path).
    Read-only: materialise Triton repositories into the test's own directory."""
    return built_once(tmp_path_factory, "ranker_export", lambda out: build_ranker_export(tiny_data, out))


@pytest.fixture(scope="session")
def server_stack(tmp_path_factory):
    """The ``server`` stack profile for real, once per session: Valkey (Feast's Redis online store), PostgreSQL
    (Feast's SQL registry), the Milvus standalone server with authorization, and ``feast serve``, each on
    127.0.0.1 and a free port, secrets generated into files (components/stack). Yields the StackConfig
    (``.source`` = its stack.yaml). ``components.stack.add_triton(Path(cfg.source).parent, repository)`` adds a
    tritonserver; ``components.stack.isolated(cfg, name, dir)`` gives a test its own Feast project and Milvus
    alias on the same servers. At the end every server is stopped by process group, and checked gone."""
    from components import stack
    from components.stack.processes import alive

    state = tmp_path_factory.mktemp("server_stack")
    cfg = stack.up("server", state)
    try:
        yield cfg
    finally:
        procs = stack.recorded_processes(state)
        stack.down(state, purge=True)
        left = {p.name: alive(p.pgid) for p in procs if alive(p.pgid)}
        assert not left, f"stack processes left running: {left}"
