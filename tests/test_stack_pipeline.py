"""The daily embedding pipeline through ``kfp.local`` with the ``server`` profile, then the recommend path against
the same stack: pin and user embeddings land in Redis through Feast (SQL registry on PostgreSQL), the index in the
Milvus server behind the alias, Triton serves the ranker, and ``homefeed recommend --stack`` returns ranked pins."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import pytest

from components import config, stack
from components.data import io
from components.data.tables import VersionedStore, read_table
from components.serving import feast_store
from components.serving import milvus_index as mi
from components.stackconfig import dump_stack
from components.steps.common import table_path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def models(tiny_retrieval_models) -> Path:
    """Tiny PinSage and PinnerFormer models (one epoch each): what a training run would hand the daily run
    (tests/conftest.py)."""
    return tiny_retrieval_models


@pytest.fixture(scope="module")
def daily(server_stack, models, tiny_data, tmp_path_factory):
    from kfp import local

    from pipelines.runner import PIPELINES, _summary, pipeline_func

    out = tmp_path_factory.mktemp("stack_daily")
    cfg = stack.isolated(server_stack, "daily", out)
    stack_file = dump_stack(cfg, out / "stack.yaml")
    date = dt.datetime.fromtimestamp(int(io.read_meta(tiny_data)["split_timestamp"]), dt.UTC).strftime("%Y-%m-%d")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out / "kfp"),
               workspace_root=str(out / "kfp-workspace"), raise_on_error=True)
    t0 = time.time()
    pipeline_func("daily", local=True)(date=date, data_uri=str(tiny_data), pinsage_model_uri=str(models / "pinsage"),
                                       pinnerformer_model_uri=str(models / "pinnerformer"), stack=str(stack_file))
    _, tasks = _summary(out / "kfp", PIPELINES["daily"], t0)
    return {"cfg": cfg, "stack_file": stack_file, "date": date, "tasks": tasks, "out": out}


def _output(tasks: dict, name: str) -> str:
    """The ``embeddings`` output of ``merge-<name>`` (a sharded run) or else ``embed-<name>``."""
    task = tasks.get(f"merge-{name}") or tasks[f"embed-{name}"]
    return task["embeddings"]["path"]


def test_daily_pipeline_publishes_to_redis_and_the_milvus_server(daily):
    cfg, tasks = daily["cfg"], daily["tasks"]
    users = VersionedStore(Path(cfg.embeddings.root) / "users")  # the stack's embedding root
    assert users.current() == daily["date"]
    table = users.read()
    store = feast_store.open_store(cfg.feast.repo, cfg)
    assert store.config.online_store.type == "redis" and store.config.registry.registry_type == "sql"
    emb, found = feast_store.online_user_embeddings(cfg.feast.repo, table.ids, store=store)
    assert found.all()
    np.testing.assert_allclose(emb, table.embeddings, rtol=1e-6)
    index_meta = tasks["build-index"]["index"]["metadata"]
    assert index_meta["milvus_uri"] == cfg.milvus.uri and index_meta["alias"] == cfg.milvus.alias
    tower = read_table(table_path(_output(tasks, "pin-tower")))
    index = mi.PinIndex(cfg.milvus.uri, cfg.milvus.alias, token=cfg.milvus_token())
    try:
        assert mi.served_collection(index.client, cfg.milvus.alias) == index_meta["collection"]
        ids, _ = index.search(tower.embeddings[:5], 3)
        assert (ids[:, 0] == tower.ids[:5]).all()
    finally:
        index.close()


def test_recommend_against_the_server_stack(daily, tiny_data, capsys):
    """Triton joins the running stack; `homefeed recommend --stack` ranks candidates from the Milvus server with
    features from Redis."""
    from components import cli
    from components.serving import model_repository
    from components.serving.export import export_ranker
    from components.training.ranker import train

    cfg, tasks, out = daily["cfg"], daily["tasks"], daily["out"]
    users = VersionedStore(Path(cfg.embeddings.root) / "users")
    pinsage = table_path(_output(tasks, "pins"))
    train(config.load("ranker_tiny"), tiny_data, out / "ranker", user_embeddings=users.path(), pin_embeddings=pinsage)
    export_ranker(out / "ranker", out / "export", data_dir=tiny_data)
    repo = model_repository.materialize(out / "export", out / "triton_repository")
    running = stack.add_triton(Path(cfg.source).parent, repo)
    cfg.triton.url, cfg.triton.protocol, cfg.triton.repository = running.triton.url, "grpc", str(repo)
    stack_file = dump_stack(cfg, out / "stack.yaml")
    uid = int(users.read().ids[0])
    capsys.readouterr()  # drop what training printed
    assert cli.main(["recommend", "--stack", str(stack_file), "--user", str(uid), "--k", "5", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["user_id"] == uid and len(rec["items"]) == 5
    assert [it["rank"] for it in rec["items"]] == [1, 2, 3, 4, 5]
    scores = [it["score"] for it in rec["items"]]
    assert all(s is not None for s in scores) and scores == sorted(scores, reverse=True)
