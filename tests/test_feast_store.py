"""Feast for real: a repo instance on SQLite, apply, incremental materialization, online reads."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from components.data import io
from components.data.baseline import content_embeddings
from components.data.tables import write_table
from components.serving import feast_store


@pytest.fixture(scope="module")
def feast_repo(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("feast")
    pins, users = content_embeddings(tiny_data)
    write_table(pins, root / "pins.parquet")
    write_table(users, root / "users.parquet")
    repo = feast_store.init_repo(root / "repo")
    day = io.partitions(tiny_data, "impressions")[-1]
    feast_store.write_sources(repo, tiny_data, day, root / "users.parquet", root / "pins.parquet")
    feast_store.apply(repo)
    first = feast_store.materialize(repo, day)
    return {"repo": repo, "root": root, "pins": pins, "users": users, "day": day, "first": first, "data": tiny_data}


def test_online_store_returns_exactly_the_published_embeddings(feast_repo):
    users, pins, repo = feast_repo["users"], feast_repo["pins"], feast_repo["repo"]
    assert all(v != "up to date" for v in feast_repo["first"].values())
    got, found = feast_store.online_user_embeddings(repo, users.ids.tolist() + [10**9])
    assert found[:-1].all() and not found[-1]
    np.testing.assert_array_equal(got[:-1], users.embeddings)
    feats = feast_store.online_ranker_features(repo, int(users.ids[0]), pins.ids[:50])
    np.testing.assert_array_equal(np.array(feats["pin_embedding"], np.float32), pins.embeddings[:50])
    np.testing.assert_array_equal(np.array(feats["user_embedding"][0], np.float32), users.embeddings[0])


def test_ranker_features_are_the_latest_impression_values(feast_repo, tiny_data):
    repo = feast_repo["repo"]
    imp = io.read_table(tiny_data, "impressions").to_pandas().sort_values("timestamp")
    meta = io.read_meta(tiny_data)
    last = imp.groupby("user_id").tail(1).set_index("user_id")
    uid = int(last.index[3])
    pin_ids = imp["pin_id"].unique()[:20]
    feats = feast_store.online_ranker_features(repo, uid, pin_ids)
    for col in meta["user_features"]:
        assert feats[col][0] == pytest.approx(float(last.loc[uid, col]))
    last_pin = imp.groupby("pin_id").tail(1).set_index("pin_id")
    for col in meta["pin_features"]:
        np.testing.assert_allclose(np.array(feats[col], float), last_pin.loc[pin_ids, col].to_numpy(float), rtol=1e-6)


def test_materialize_rerun_corrects_and_next_day_is_incremental(feast_repo, capsys, caplog):
    repo, root, users, day = feast_repo["repo"], feast_repo["root"], feast_repo["users"], feast_repo["day"]
    # a re-run of the same date with corrected embeddings replaces what the first run wrote
    fixed = dataclasses.replace(users, embeddings=-users.embeddings, model_version="fixed")
    write_table(fixed, root / "users_fixed.parquet")
    feast_store.write_sources(repo, feast_repo["data"], day, root / "users_fixed.parquet", None)
    capsys.readouterr()
    with caplog.at_level(logging.DEBUG, logger=feast_store.__name__):
        again = feast_store.materialize(repo, day)
    assert all(v.endswith("(reload)") for v in again.values())
    # nothing on stdout (Feast's materialize prints are not involved: rows go through write_to_online_store);
    # one DEBUG record per view with its rows and batches
    assert capsys.readouterr().out == ""
    lines = {r.args[0]: r.getMessage() for r in caplog.records if r.getMessage().startswith("materialize ")}
    assert set(lines) == set(again) and all(" rows in " in x for x in lines.values())
    got, found = feast_store.online_user_embeddings(repo, users.ids[:10])
    assert found.all()
    np.testing.assert_array_equal(got, fixed.embeddings[:10])
    # the next day's snapshot: new user embeddings; only the new interval is loaded
    newer = dataclasses.replace(users, embeddings=np.roll(users.embeddings, 1, axis=1), model_version="v2")
    write_table(newer, root / "users_v2.parquet")
    next_day = (np.datetime64(day) + 1).astype(str)
    feast_store.write_sources(repo, feast_repo["data"], next_day, root / "users_v2.parquet", None)
    step = feast_store.materialize(repo, next_day)
    assert step["user_embedding"].startswith(f"{np.datetime64(day) + 1}")
    got, found = feast_store.online_user_embeddings(repo, users.ids[:10])
    assert found.all()
    np.testing.assert_array_equal(got, newer.embeddings[:10])
    # an older date than the store holds would move serving backwards: refused, nothing changed
    with pytest.raises(feast_store.FeatureStoreError, match=f"user_embedding.*{next_day}.*backwards"):
        feast_store.materialize(repo, day)
    np.testing.assert_array_equal(feast_store.online_user_embeddings(repo, users.ids[:10])[0], newer.embeddings[:10])


def test_apply_without_sources_names_the_missing_file(tmp_path):
    repo = feast_store.init_repo(tmp_path / "repo")
    with pytest.raises(feast_store.FeatureStoreError, match="user_embedding.parquet"):
        feast_store.apply(repo)
