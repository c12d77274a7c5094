"""The daily embedding run in shards: shard k of n is a deterministic partition of the ids, each shard computes
only its rows (PinSage: the layers its pins need), and the merged tables -- and the Feast rows and the Milvus
collection built from them -- equal the unsharded run's (library level, then the daily pipeline through
kfp.local with 1 vs 3 shards)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from components import config
from components.data import io
from components.data.tables import EmbeddingTable, VersionedStore, read_table
from components.inference import shards as sh

SHARDS = 3


def test_shards_partition_ids():
    ids = np.arange(-50, 10_000, dtype=np.int64)
    k = sh.shard_of(ids, SHARDS)
    assert set(np.unique(k)) == set(range(SHARDS))
    np.testing.assert_array_equal(k, sh.shard_of(ids[::-1], SHARDS)[::-1])  # per id, not per position
    masks = [sh.in_shard(ids, s, SHARDS) for s in range(SHARDS)]
    assert (np.sum(masks, axis=0) == 1).all()  # every id in exactly one shard
    assert min(m.sum() for m in masks) > 0.3 * len(ids)  # contiguous ids spread evenly
    assert sh.in_shard(ids, 0, 1).all()
    for shard, n in ((3, 3), (-1, 3), (0, 0)):
        with pytest.raises(ValueError, match="shard"):
            sh.in_shard(ids, shard, n)


def _table(ids, dim=4, version="m1") -> EmbeddingTable:
    ids = np.asarray(ids, np.int64)
    return EmbeddingTable(ids, np.tile(ids[:, None], (1, dim)).astype(np.float32), version,
                          dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "pin_id")


def test_merge_tables_sorts_and_refuses_bad_shards():
    merged = sh.merge_tables([_table([5, 1]), _table([3, 2])])
    np.testing.assert_array_equal(merged.ids, [1, 2, 3, 5])
    np.testing.assert_array_equal(merged.embeddings[:, 0], [1, 2, 3, 5])
    with pytest.raises(ValueError, match="pin_id 2 is in more than one shard"):
        sh.merge_tables([_table([1, 2]), _table([2, 3])])
    with pytest.raises(ValueError, match="b.parquet.*does not match a.parquet"):
        sh.merge_tables([_table([1]), _table([2], dim=3)], ["a.parquet", "b.parquet"])
    with pytest.raises(ValueError, match="does not match"):
        sh.merge_tables([_table([1]), _table([2], version="m2")])
    with pytest.raises(ValueError, match="no shard tables"):
        sh.merge_tables([])


@pytest.fixture(scope="module")
def models(tiny_data, tmp_path_factory):
    """Tiny PinSage and PinnerFormer models (one epoch each) and the unsharded pin table."""
    from components.inference.pinsage import embed_pins
    from components.training import pinnerformer, pinsage

    root = tmp_path_factory.mktemp("shard_models")
    pinsage.train(config.load("pinsage_tiny", ["epochs=1"]), tiny_data, root / "pinsage")
    pins = embed_pins(root / "pinsage", tiny_data, root / "pins", version="full")
    pinnerformer.train(config.load("pinnerformer_tiny", ["epochs=1"]), tiny_data, pins, root / "pinnerformer")
    return root


def _date(data: Path) -> str:
    return dt.datetime.fromtimestamp(int(io.read_meta(data)["split_timestamp"]), dt.UTC).strftime("%Y-%m-%d")


def test_sharded_library_calls_equal_unsharded(models, tiny_data, tmp_path):
    """PinSage shards (each computing only the layers its pins need), pin-tower shards and user shards, merged,
    are bit-identical to the unsharded tables."""
    from components.inference import pinsage, users

    full = read_table(VersionedStore(models / "pins").path())
    parts = [read_table(pinsage.embed_pins(models / "pinsage", tiny_data, tmp_path / f"pins{k}", "full", (k, SHARDS)))
             for k in range(SHARDS)]
    assert all(0 < len(p) < len(full) for p in parts)
    merged = sh.merge_tables(parts)
    np.testing.assert_array_equal(merged.ids, full.ids)
    np.testing.assert_array_equal(merged.embeddings, full.embeddings)

    pin_table = VersionedStore(models / "pins").path()
    tower = read_table(users.embed_pin_tower(models / "pinnerformer", pin_table, tmp_path / "tower", "d"))
    tower_parts = [read_table(users.embed_pin_tower(models / "pinnerformer", pin_table, tmp_path / f"tower{k}", "d",
                                                    shard=(k, SHARDS))) for k in range(SHARDS)]
    merged = sh.merge_tables(tower_parts)
    np.testing.assert_array_equal(merged.ids, tower.ids)
    np.testing.assert_array_equal(merged.embeddings, tower.embeddings)

    date = _date(tiny_data)
    one = read_table(users.embed_users(models / "pinnerformer", tiny_data, pin_table, tmp_path / "u1", date))
    rows = [users.embed_active_users(models / "pinnerformer", tiny_data, pin_table, date, shard=(k, SHARDS))
            for k in range(SHARDS)]
    assert all(len(r) for r in rows)
    three = read_table(users.publish_users(sh.merge_tables(rows), tmp_path / "u3", date))
    np.testing.assert_array_equal(three.ids, one.ids)
    np.testing.assert_array_equal(three.embeddings, one.embeddings)
    assert three.model_version == one.model_version and three.created_at == one.created_at


@pytest.fixture(scope="module")
def daily_runs(models, tiny_data, tmp_path_factory) -> dict[int, dict]:
    """The daily pipeline through kfp.local with 1 and with 3 shards, each into its own stores (user store seeded
    with the same previous day, Feast on SQLite, Milvus Lite)."""
    from kfp import local

    from components.inference.users import embed_users
    from pipelines.runner import PIPELINES, _summary, pipeline_func

    date = _date(tiny_data)
    previous = [d for d in io.partitions(tiny_data, "events") if d < date][-1]
    pin_table = VersionedStore(models / "pins").path()
    runs = {}
    for n in (1, SHARDS):
        out = tmp_path_factory.mktemp(f"daily_{n}_shards")
        store = out / "store"
        embed_users(models / "pinnerformer", tiny_data, pin_table, store / "embeddings", previous)
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out / "kfp"),
                   workspace_root=str(out / "kfp-workspace"), raise_on_error=True)
        t0 = dt.datetime.now().timestamp()
        pipeline_func("daily", local=True)(
            date=date, data_uri=str(tiny_data), pinsage_model_uri=str(models / "pinsage"),
            pinnerformer_model_uri=str(models / "pinnerformer"), embeddings_root=str(store / "embeddings"),
            feature_repo=str(store / "feature_repo"), milvus_uri=str(store / "milvus.db"), shards=n)
        run_dir, tasks = _summary(out / "kfp", PIPELINES["daily"], t0)
        runs[n] = {"store": store, "tasks": tasks, "run_dir": run_dir, "date": date, "previous": previous}
    return runs


def _published(run: dict, task: str, output: str) -> EmbeddingTable:
    from components.steps.common import table_path

    return read_table(table_path(run["tasks"][task][output]["path"]))


def test_daily_pipeline_three_shards_publish_what_one_shard_does(daily_runs):
    from components.serving import feast_store
    from components.serving import milvus_index as mi

    one, three = daily_runs[1], daily_runs[SHARDS]
    # every shard ran as its own task, and each computed only its share of the pins
    shard_stats = [json_metrics(p) for p in sorted(three["run_dir"].glob("for-loop-*-iteration-*/embed-pins"))]
    assert len(shard_stats) == SHARDS and sorted(s["shard"] for s in shard_stats) == list(range(SHARDS))
    assert three["tasks"]["merge-pins"]["stats"]["metadata"]["shards"] == SHARDS
    for task, output in (("merge-pins", "embeddings"), ("merge-pin-tower", "embeddings"), ("merge-users", "users")):
        a, b = _published(one, task, output), _published(three, task, output)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.embeddings, b.embeddings)
        assert a.model_version == b.model_version
    assert sum(s["pins"] for s in shard_stats) == len(_published(one, "merge-pins", "embeddings"))
    # the user store: merged with the same previous day, published as the date
    tables = []
    for run in (one, three):
        users = VersionedStore(run["store"] / "embeddings" / "users")
        assert users.current() == run["date"] and run["previous"] in users.versions()
        assert run["tasks"]["merge-users"]["users"]["metadata"]["previous_version"] == run["previous"]
        tables.append(users.read())
    np.testing.assert_array_equal(tables[0].ids, tables[1].ids)
    np.testing.assert_array_equal(tables[0].embeddings, tables[1].embeddings)
    assert len(tables[0]) > three["tasks"]["merge-users"]["stats"]["metadata"]["embedded"]  # idle users carried over
    # Feast serves the same user rows; Milvus holds the same collection (its name hashes ids and vectors)
    ids = tables[0].ids
    served = [feast_store.online_user_embeddings(run["tasks"]["register-features"]["repo"]["metadata"]["repo_dir"], ids)[0]
              for run in (one, three)]
    np.testing.assert_array_equal(served[0], served[1])
    np.testing.assert_allclose(served[0], tables[0].embeddings, rtol=1e-6)
    names, hits = [], []
    tower = _published(one, "merge-pin-tower", "embeddings")
    for run in (one, three):
        index = mi.PinIndex(run["store"] / "milvus.db")
        try:
            names.append(mi.served_collection(index.client, index.alias))
            hits.append(index.search(tower.embeddings[:20], 5)[0])
        finally:
            index.close()
    assert names[0] == names[1] == three["tasks"]["build-index"]["index"]["metadata"]["collection"]
    np.testing.assert_array_equal(hits[0], hits[1])
    assert (hits[0][:, 0] == tower.ids[:20]).all()


def json_metrics(task_dir: Path) -> dict:
    """The metrics a task logged on its ``stats`` output (kfp.local's executor_output.json)."""
    import json

    out = json.loads((task_dir / "executor_output.json").read_text())
    return out["artifacts"]["stats"]["artifacts"][0]["metadata"]
