"""Feast materialization in batches of rows (issue #13), for real on the local profile (Feast, SQLite, file registry):

- sources written a few rows at a time equal the one-batch sources, and the online store then holds exactly what
  Feast's own ``FeatureStore.materialize`` writes from them, with the same registry intervals;
- a daily run re-materializes only the users whose embedding changed: an inactive user still reads the previous
  day's embedding, an active one the new one;
- a pin with no impression yet is served the engagement the ranker's training gives it (global rate, 0 shown);
- the cold-start list read from the window's partitions equals the one from every event.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

import numpy as np
import pandas as pd
import pytest

from components.data import io
from components.data.baseline import content_embeddings
from components.data.point_in_time import PIN_SHOWN, pin_engagement
from components.data.tables import write_table
from components.data.validate import load_events, load_table
from components.data.vocab import vocab_of_frame
from components.serving import feast_store
from components.serving.ranker_features import raw_inputs

SMALL = 97  # rows per batch: tiny data has 800 pins and 300 users, so every source takes several batches


def _read_all(store, view: str, key: str, ids) -> dict[str, list]:
    fv = store.get_feature_view(view)
    out = store.get_online_features(features=[f"{view}:{f.name}" for f in fv.features],
                                    entity_rows=[{key: int(i)} for i in ids]).to_dict()
    return {k: [np.asarray(v, np.float32).tolist() if isinstance(v, list) else v for v in vals] for k, vals in out.items()}


@pytest.fixture(scope="module")
def tables(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("mat")
    pins, users = content_embeddings(tiny_data)
    return {"root": root, "pins": pins, "users": users, "p_pins": write_table(pins, root / "pins.parquet"),
            "p_users": write_table(users, root / "users.parquet"), "days": io.partitions(tiny_data, "impressions")}


def test_batches_equal_one_batch_and_feasts_own_materialize(tiny_data, tables, tmp_path, caplog):
    day = tables["days"][-1]
    batched = feast_store.init_repo(tmp_path / "batched")
    whole = feast_store.init_repo(tmp_path / "whole")
    counts = feast_store.write_sources(batched, tiny_data, day, tables["p_users"], tables["p_pins"], batch_rows=SMALL)
    feast_store.write_sources(whole, tiny_data, day, tables["p_users"], tables["p_pins"], batch_rows=10**9)
    assert counts["pin_features"] > 4 * SMALL and counts["user_embedding"] > 2 * SMALL
    for name in feast_store.SOURCE_NAMES:
        a = pd.read_parquet(batched / "sources" / f"{name}.parquet")
        b = pd.read_parquet(whole / "sources" / f"{name}.parquet")
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    feast_store.apply(batched)
    feast_store.apply(whole)
    with caplog.at_level(logging.DEBUG, logger=feast_store.__name__):
        done = feast_store.materialize(batched, day, batch_rows=SMALL)
    batches = {r.args[0]: r.args[4] for r in caplog.records if r.getMessage().startswith("materialize ")}
    assert batches["pin_features"] >= 8 and batches["user_embedding"] >= 3, batches
    assert done["pin_features"].endswith(f", {counts['pin_features']} rows")
    # the reference: Feast's own materialization of the same sources, over the same interval
    ref = feast_store.open_store(whole)
    ref.materialize(start_date=feast_store.EPOCH, end_date=dt.datetime.fromtimestamp(io.day_bounds(day)[1], dt.UTC))
    store = feast_store.open_store(batched)
    pins, users = tables["pins"].ids, np.r_[tables["users"].ids, 10**9]
    for view, key, ids in (("user_embedding", "user_id", users), ("user_features", "user_id", users),
                           ("pin_embedding", "pin_id", pins), ("pin_features", "pin_id", pins)):
        got, want = _read_all(store, view, key, ids), _read_all(ref, view, key, ids)
        assert got == want, view
        assert sum(v is not None for v in got[store.get_feature_view(view).features[0].name]) > 0, view
        fv, rv = store.get_feature_view(view), ref.get_feature_view(view)
        assert fv.materialization_intervals == rv.materialization_intervals
        assert fv.state == rv.state


def test_a_day_rematerializes_only_the_users_whose_embedding_changed(tiny_data, tables, tmp_path):
    yesterday, today = tables["days"][-2:]
    users = tables["users"]
    repo = feast_store.init_repo(tmp_path / "repo")
    feast_store.write_sources(repo, tiny_data, yesterday, tables["p_users"], tables["p_pins"], batch_rows=SMALL)
    feast_store.apply(repo)
    feast_store.materialize(repo, yesterday, batch_rows=SMALL)
    # today: 20 active users re-embedded, 1 new user, everyone else carried over unchanged (embed_users' merge)
    active = users.ids[::15][:20]
    emb = users.embeddings.copy()
    emb[np.isin(users.ids, active)] *= -1
    new_id = int(users.ids.max()) + 1
    merged = dataclasses.replace(users, ids=np.r_[users.ids, new_id], embeddings=np.vstack([emb, emb[:1] * 0.5]))
    counts = feast_store.write_sources(repo, tiny_data, today, write_table(merged, tmp_path / "today.parquet"),
                                       tables["p_pins"], batch_rows=SMALL)
    assert counts["user_embedding"] == len(users) + 1 and counts["user_embedding_changed"] == len(active) + 1
    assert counts["pin_embedding_changed"] == 0  # the same pin table: nothing to reload
    done = feast_store.materialize(repo, today, batch_rows=SMALL)
    assert done["user_embedding"].startswith(f"{today}T00:00:00+00:00 .. ")
    assert done["user_embedding"].endswith(f", {len(active) + 1} rows") and done["pin_embedding"].endswith(", 0 rows")
    src = pd.read_parquet(repo / "sources" / "user_embedding.parquet").set_index("user_id")["event_timestamp"]
    assert (src.loc[active] == pd.Timestamp(today, tz="UTC")).all()
    assert (src.drop([*active, new_id]) == pd.Timestamp(yesterday, tz="UTC")).all()
    inactive = users.ids[~np.isin(users.ids, active)][:30]
    got, found = feast_store.online_user_embeddings(repo, np.r_[inactive, active, new_id])
    assert found.all()
    np.testing.assert_array_equal(got[:30], users.lookup(inactive)[0])  # yesterday's rows, still served
    np.testing.assert_array_equal(got[30:-1], -users.lookup(active)[0])  # today's
    np.testing.assert_array_equal(got[-1], emb[0] * 0.5)
    # a re-run of today still reloads the whole snapshot (a correction), with the same result
    again = feast_store.materialize(repo, today, batch_rows=SMALL)
    assert again["user_embedding"].endswith(f", {len(users) + 1} rows (reload)")
    np.testing.assert_array_equal(feast_store.online_user_embeddings(repo, inactive)[0], got[:30])


def test_a_pin_without_impressions_is_served_the_training_defaults(tiny_data, tables, tmp_path):
    day = tables["days"][0]  # the first day: many pins have no impression yet
    repo = feast_store.init_repo(tmp_path / "repo")
    feast_store.write_sources(repo, tiny_data, day, tables["p_users"], tables["p_pins"], batch_rows=SMALL)
    feast_store.apply(repo)
    feast_store.materialize(repo, day, batch_rows=SMALL)
    imp = load_table(tiny_data, "impressions")
    end = io.day_bounds(day)[1]
    seen = imp[imp["timestamp"] < end]
    unseen = np.setdiff1d(tables["pins"].ids, seen["pin_id"].unique())[:40]
    shown = seen["pin_id"].unique()[:10]
    assert len(unseen) == 40
    tasks = [c.removeprefix("label_") for c in imp.columns if c.startswith("label_")]
    # what a training row of the next day computes for these pins (point_in_time.pin_engagement)
    pins = np.r_[unseen, shown]
    want = pin_engagement(imp["pin_id"].to_numpy(), imp["timestamp"].to_numpy(),
                          imp[[f"label_{t}" for t in tasks]].to_numpy(np.float64), pins, np.full(len(pins), end), tasks)
    uid = int(seen["user_id"].iloc[0])
    feats = feast_store.online_ranker_features(repo, uid, pins)  # the recommend path's uncached read
    for t in tasks:
        got = np.array(feats[f"d_pin_rate_{t}"], np.float32)
        np.testing.assert_array_equal(got, want[f"d_pin_rate_{t}"])
        np.testing.assert_allclose(got[:40], seen[f"label_{t}"].mean(), rtol=1e-6)  # the global rate
    np.testing.assert_array_equal(np.array(feats[PIN_SHOWN], np.float32)[:40], 0.0)
    # the ranker's input fill: nothing to fill for the engagement columns (the impression-borne ones are unknown)
    names = [f"d_pin_rate_{t}" for t in tasks] + [PIN_SHOWN]
    pre = {"dense": {"names": names, "mean": [0.5] * len(names)}, "sparse": {"names": []}, "surfaces": ["home"],
           "dims": {"d_user": tables["users"].dim, "d_pin": tables["pins"].dim}}
    _, filled = raw_inputs(pre, feats, len(pins), pd.Timestamp(day, tz="UTC").to_pydatetime(), "home")
    assert not set(filled) & set(names), filled
    assert all(feats[c][i] is None for c in io.read_meta(tiny_data)["pin_features"] for i in range(40))


@pytest.mark.parametrize("days_after", [0, 30])  # 30: no event in the 14-day window, so all history counts
def test_popular_pins_from_the_window_partitions_equal_all_events(tiny_data, days_after):
    end = io.day_bounds(io.partitions(tiny_data, "events")[-1])[1] + days_after * 86_400
    got = feast_store.popular_pins(tiny_data, end).to_pandas()
    ev = load_events(tiny_data)
    ev = ev[ev["timestamp"] < end]
    recent = ev[ev["timestamp"] >= end - 14 * 86_400]
    ev = recent if len(recent) else ev
    w = np.where(vocab_of_frame(ev).is_positive(ev["action_type"].to_numpy(), ev["duration_s"].to_numpy()), 1.0, 0.01)
    want = ev.assign(w=w).groupby("pin_id")["w"].sum().sort_values(ascending=False, kind="stable").head(1000)
    assert len(got) == len(want) > 0
    np.testing.assert_array_equal(got["pin_id"].to_numpy(), want.index.to_numpy())
    np.testing.assert_array_equal(got["score"].to_numpy(), want.to_numpy())
