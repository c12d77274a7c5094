"""Both pipelines end to end with kfp.local (SubprocessRunner, use_venv=False) on the tiny experiments:
every step runs for real (torchrun training, Feast on SQLite, Milvus Lite), then the daily run merges
into the training run's stores, and a failing daily run leaves what was published intact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.cli import main as cli_main
from components.data.tables import VersionedStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("local-pipelines")
    assert cli_main(["pipeline", "run", "training", "--local", "--out", str(out),
                     "--param", "user_backfill_days=3", "--param", "pinsage_overrides=[epochs=1]",
                     "--param", "pinnerformer_overrides=[epochs=1]"]) == 0
    training = json.loads((out / "training-run.json").read_text())
    users = VersionedStore(Path(training["parameters"]["embeddings_root"]) / "users")
    before = {"version": users.current(), "table": users.read()}
    from pipelines.runner import run_local

    daily = run_local("daily", out)
    return {"out": out, "training": training, "daily": daily, "users_before": before}


def _meta(summary: dict, task: str, output: str) -> dict:
    return summary["artifacts"][task][output]["metadata"]


def test_training_run_produces_every_artifact(runs):
    a = runs["training"]["artifacts"]
    for task in ("prepare-data", "sample-graph", "train-pinsage", "embed-pins", "train-pinnerformer", "embed-users",
                 "embed-pin-tower", "train-ranker", "evaluate-ranker", "export-ranker", "register-features",
                 "build-index"):
        assert a.get(task), f"task {task} produced no output artifacts"
    # resolved configs travel in the artifact metadata
    assert _meta(runs["training"], "train-ranker", "model")["config"]["experiment"] == "ranker_tiny"
    pinsage_cfg = _meta(runs["training"], "train-pinsage", "model")["config"]
    assert pinsage_cfg["model"] == "pinsage" and pinsage_cfg["epochs"] == 1  # the override parameter arrived
    # metrics are logged on outputs, and they are real numbers
    m = _meta(runs["training"], "evaluate-ranker", "metrics")
    assert 0.0 <= m["auc_save"] <= 1.0 and m["rows_eval"] > 0
    assert _meta(runs["training"], "train-ranker", "metrics")["steps"] > 0
    assert _meta(runs["training"], "embed-pins", "stats")["pins"] > 0
    exported = Path(a["export-ranker"]["exported"]["path"])
    assert (exported / "model.onnx").stat().st_size > 0 and (exported / "preprocess.json").exists()
    graph = np.load(Path(a["sample-graph"]["graph"]["path"]) / "neighbourhoods.npz")
    assert graph["nbr_ids"].shape[0] == len(graph["pin_ids"])
    np.testing.assert_allclose(graph["nbr_weights"].sum(axis=1), 1.0, atol=1e-5)


def test_backfilled_user_store(runs):
    meta = _meta(runs["training"], "embed-users", "users")
    assert len(meta["replayed_days"]) == 3 and all(d < meta["date"] for d in meta["replayed_days"])
    assert runs["users_before"]["version"] == meta["date"]


def test_serving_stores_hold_the_training_outputs(runs):
    from components.serving.feast_store import online_user_embeddings
    from components.serving.milvus_index import PinIndex

    p = runs["daily"]["parameters"]
    table = VersionedStore(Path(p["embeddings_root"]) / "users").read()
    emb, found = online_user_embeddings(p["feature_repo"], table.ids[:20])
    assert found.all()
    np.testing.assert_allclose(emb, table.embeddings[:20], rtol=1e-5, atol=1e-6)  # Feast serves the merged table
    index = PinIndex(p["milvus_uri"])
    index.client.load_collection(index.alias)  # Milvus Lite releases collections when the writer exits
    try:
        ids, sims = index.search(table.embeddings[:3], k=5)
    finally:
        index.close()
    assert (ids >= 0).all() and np.isfinite(sims).all()
    assert _meta(runs["daily"], "build-index", "index")["alias"] == "pins"


def test_daily_run_merges_incrementally(runs):
    before = runs["users_before"]
    meta = _meta(runs["daily"], "merge-users", "users")
    assert meta["previous_version"] == before["version"] and meta["date"] > before["version"]
    store = VersionedStore(Path(runs["daily"]["parameters"]["embeddings_root"]) / "users")
    after = store.read()
    assert store.current() == meta["date"]
    assert set(before["table"].ids) <= set(after.ids)  # merged, nobody dropped
    import pyarrow.parquet as pq

    from components.data.io import partition_path

    day = partition_path(runs["daily"]["parameters"]["data_uri"], "events", meta["date"])
    active = set(pq.read_table(day, columns=["user_id"]).column("user_id").to_pylist())
    old = dict(zip(before["table"].ids.tolist(), before["table"].embeddings))
    new = dict(zip(after.ids.tolist(), after.embeddings))
    idle = [u for u in old if u not in active]
    assert idle, "expected some users without actions on the daily date"
    for u in idle:  # users not active on D keep yesterday's embedding exactly
        np.testing.assert_array_equal(new[u], old[u])
    assert any(u in old and not np.array_equal(new[u], old[u]) for u in active)  # active ones were recomputed


def test_failed_daily_run_leaves_published_state_intact(runs):
    from pipelines.runner import run_local

    store = VersionedStore(Path(runs["daily"]["parameters"]["embeddings_root"]) / "users")
    current, table = store.current(), store.read()
    with pytest.raises(RuntimeError, match="embed-users"):
        run_local("daily", runs["out"], {"date": "1999-01-01"})  # no events partition that day
    assert store.current() == current
    np.testing.assert_array_equal(store.read().embeddings, table.embeddings)


def test_training_run_from_an_import_config(tmp_path):
    """``import_config`` set: the training pipeline starts from import_data (docs/data.md's 20-line shop log)
    instead of prepare_data, every later step reads the imported directory, and the daily defaults take
    their data from import-data."""
    from pipelines.runner import daily_defaults, run_local

    config = Path(__file__).resolve().parents[1] / "components" / "configs" / "import" / "shop.yaml"
    run = run_local("training", tmp_path, {
        "import_config": str(config), "date": "2024-03-09", "user_backfill_days": 8,
        "pinsage_overrides": ["batch_size=4", "num_negatives=4", "epochs=1"],  # a catalogue of 6 items
        "pinnerformer_overrides": ["batch_size=4", "num_random_negatives=4", "epochs=1"],
        "ranker_overrides": ["batch_size=8"]})
    a = run["artifacts"]
    assert "prepare-data" not in a and a["import-data"]["data"]["metadata"]["import_config"]["name"] == "shop"
    assert _meta(run, "embed-pins", "stats")["pins"] == 6  # the imported catalogue, not the synthetic one
    assert _meta(run, "embed-users", "users")["date"] == "2024-03-09"
    assert _meta(run, "evaluate-ranker", "metrics")["rows_eval"] > 0
    assert a["register-features"] and a["build-index"]
    assert daily_defaults(tmp_path)["data_uri"] == a["import-data"]["data"]["path"]
