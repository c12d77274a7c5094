"""The daily embedding run in shards: shard k of n is a deterministic partition of the ids, each shard computes
only its rows (PinSage: the layers its pins need), and the merged tables -- and the Feast rows and the Milvus
collection built from them -- equal the unsharded run's (library level, then the daily pipeline through
kfp.local with 3 shards against the unsharded library calls its steps wrap)."""

from __future__ import annotations

import builtins
import datetime as dt
import inspect
from pathlib import Path

import numpy as np
import pytest

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
def models(tiny_retrieval_models) -> Path:
    """Tiny PinSage and PinnerFormer models (one epoch each) and the unsharded pin table (tests/conftest.py)."""
    return tiny_retrieval_models


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
def daily_run(models, tiny_data, tmp_path_factory) -> dict:
    """The daily pipeline through kfp.local with 3 shards (user store seeded with the previous day, Feast on SQLite,
    Milvus Lite). The unsharded daily pipeline runs end to end in test_pipelines_local, test_stack_pipeline and
    test_demo; here the sharded run is compared with the unsharded library calls (``unsharded``)."""
    from components.inference.users import embed_users
    from pipelines.runner import PIPELINES, _summary, local_session, pipeline_func

    date = _date(tiny_data)
    previous = [d for d in io.partitions(tiny_data, "events") if d < date][-1]
    pin_table = VersionedStore(models / "pins").path()
    out = tmp_path_factory.mktemp(f"daily_{SHARDS}_shards")
    store = out / "store"
    embed_users(models / "pinnerformer", tiny_data, pin_table, store / "embeddings", previous)
    t0 = dt.datetime.now().timestamp()
    print_before = builtins.print
    with local_session(out / "kfp", out / "kfp-workspace"):
        pipeline_func("daily", local=True)(
            date=date, data_uri=str(tiny_data), pinsage_model_uri=str(models / "pinsage"),
            pinnerformer_model_uri=str(models / "pinnerformer"), embeddings_root=str(store / "embeddings"),
            feature_repo=str(store / "feature_repo"), milvus_uri=str(store / "milvus.db"), shards=SHARDS)
    run_dir, tasks = _summary(out / "kfp", PIPELINES["daily"], t0)
    return {"store": store, "tasks": tasks, "run_dir": run_dir, "date": date, "previous": previous,
            "print_before": print_before, "print_after": builtins.print}


def test_a_sharded_run_leaves_print_as_it_was(daily_run):
    """kfp.local's ParallelFor threads race on the ``builtins.print`` each task indents; the run's session puts
    the process's ``print`` back (before it, a later Katib line in the same test process began with spaces)."""
    assert daily_run["print_after"] is daily_run["print_before"]
    assert inspect.isbuiltin(builtins.print)


@pytest.fixture(scope="module")
def unsharded(models, tiny_data, daily_run, tmp_path_factory) -> dict[str, EmbeddingTable]:
    """What an unsharded daily run publishes, by the library calls its steps wrap: every pin's PinSage embedding,
    every pin's pin-tower embedding, and the users active on the date merged into the same previous day."""
    from components.inference.users import embed_pin_tower, embed_users

    out = tmp_path_factory.mktemp("unsharded")
    pin_table = VersionedStore(models / "pins").path()
    embed_users(models / "pinnerformer", tiny_data, pin_table, out / "embeddings", daily_run["previous"])
    return {"pins": read_table(pin_table),
            "tower": read_table(embed_pin_tower(models / "pinnerformer", pin_table, out / "tower", "d")),
            "users": read_table(embed_users(models / "pinnerformer", tiny_data, pin_table, out / "embeddings",
                                            daily_run["date"]))}


def _published(run: dict, task: str, output: str) -> EmbeddingTable:
    from components.steps.common import table_path

    return read_table(table_path(run["tasks"][task][output]["path"]))


def test_daily_pipeline_three_shards_publish_what_an_unsharded_run_does(daily_run, unsharded):
    from components.serving import feast_store
    from components.serving import milvus_index as mi

    three = daily_run
    # every shard ran as its own task, and each computed only its share of the pins
    shard_stats = [json_metrics(p) for p in sorted(three["run_dir"].glob("for-loop-*-iteration-*/embed-pins"))]
    assert len(shard_stats) == SHARDS and sorted(s["shard"] for s in shard_stats) == list(range(SHARDS))
    assert three["tasks"]["merge-pins"]["stats"]["metadata"]["shards"] == SHARDS
    for task, output, key in (("merge-pins", "embeddings", "pins"), ("merge-pin-tower", "embeddings", "tower"),
                              ("merge-users", "users", "users")):
        a, b = unsharded[key], _published(three, task, output)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.embeddings, b.embeddings)
        assert a.model_version == b.model_version
    assert all(0 < s["pins"] < len(unsharded["pins"]) for s in shard_stats)
    assert sum(s["pins"] for s in shard_stats) == len(unsharded["pins"])
    # the user store: merged with the previous day, published as the date
    users = VersionedStore(three["store"] / "embeddings" / "users")
    assert users.current() == three["date"] and three["previous"] in users.versions()
    assert three["tasks"]["merge-users"]["users"]["metadata"]["previous_version"] == three["previous"]
    table = users.read()
    np.testing.assert_array_equal(table.ids, unsharded["users"].ids)
    np.testing.assert_array_equal(table.embeddings, unsharded["users"].embeddings)
    assert len(table) > three["tasks"]["merge-users"]["stats"]["metadata"]["embedded"]  # idle users carried over
    # Feast serves the merged user rows; Milvus holds the collection of the unsharded pin-tower table (its name
    # hashes ids and vectors) behind the alias
    served, _ = feast_store.online_user_embeddings(
        three["tasks"]["register-features"]["repo"]["metadata"]["repo_dir"], table.ids)
    np.testing.assert_allclose(served, table.embeddings, rtol=1e-6)
    tower = unsharded["tower"]
    index = mi.PinIndex(three["store"] / "milvus.db")
    try:
        name = mi.served_collection(index.client, index.alias)
        hits = index.search(tower.embeddings[:20], 5)[0]
    finally:
        index.close()
    assert name == three["tasks"]["build-index"]["index"]["metadata"]["collection"] == mi.collection_name(tower)
    assert (hits[:, 0] == tower.ids[:20]).all()


def json_metrics(task_dir: Path) -> dict:
    """The metrics a task logged on its ``stats`` output (kfp.local's executor_output.json)."""
    import json

    out = json.loads((task_dir / "executor_output.json").read_text())
    return out["artifacts"]["stats"]["artifacts"][0]["metadata"]
