"""Point-in-time pin features: ML-100k's d_pin_popularity never counts the row's own rating; the ranker's
per-pin engagement (d_pin_rate_<task>, d_pin_log_impressions) never sees the row's own label, in training
and as the daily Feast pin feature; the neural rankers' explicit user x pin product slice."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from components import config
from components.data import io
from components.data.baseline import content_embeddings
from components.data.point_in_time import DAY, ENGAGEMENT_PRIOR, counts_before, engagement_names, pin_engagement
from components.data.tables import write_table
from components.data.validate import load_events, load_table
from components.models.ranker import Ranker
from components.serving import feast_store
from components.training import ranker as ranker_training

TASKS = ["save", "closeup"]


def test_counts_before_excludes_the_query_time_and_later():
    keys = np.array([1, 1, 1, 2, 1])
    times = np.array([10, 20, 30, 5, 20])
    got = counts_before(keys, times, np.array([1, 1, 1, 2, 3]), np.array([20, 21, 10, 6, 100]))
    np.testing.assert_array_equal(got, [1, 3, 0, 1, 0])
    # the row's own event (at the query time) and anything after it never change the count
    more = counts_before(np.r_[keys, 1, 1], np.r_[times, 20, 99], np.array([1]), np.array([20]))
    assert more[0] == 1


def test_ml100k_pin_popularity_counts_only_earlier_ratings(ml100k_data):
    """Every impression's d_pin_popularity is log1p(the pin's ratings strictly before the request); a rated
    row's own rating (at or after the request's time) is not among them."""
    imp = load_table(ml100k_data, "impressions")
    ev = load_events(ml100k_data)
    rng = np.random.default_rng(0)
    rows = imp.iloc[rng.choice(len(imp), 300, replace=False)]
    by_pin = {p: np.sort(g.to_numpy()) for p, g in ev.groupby("pin_id")["timestamp"]}
    naive = np.array([np.searchsorted(by_pin.get(p, np.zeros(0)), t, side="left")
                      for p, t in zip(rows["pin_id"], rows["timestamp"])])
    np.testing.assert_allclose(rows["d_pin_popularity"].to_numpy(), np.log1p(naive), rtol=1e-6)
    # a rated row's own rating is an event of that pin at or after its request time: not counted
    rated = imp[imp["label_click"] == 1].iloc[:200]
    own = ev.merge(rated[["user_id", "pin_id", "timestamp"]].rename(columns={"timestamp": "t_req"}),
                   on=["user_id", "pin_id"])
    assert len(own) and (own["timestamp"] >= own["t_req"]).all()


def _impressions(n=600, pins=15, days=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, pins, n), rng.integers(0, days * DAY, n),
            (rng.random((n, len(TASKS))) < 0.3).astype(np.float64))


def test_engagement_is_the_smoothed_rate_of_earlier_days_only():
    pins, ts, labels = _impressions()
    got = pin_engagement(pins, ts, labels, pins, ts, TASKS)
    assert list(got) == engagement_names(TASKS)
    for i in range(0, len(pins), 37):  # a naive recomputation of a sample of rows
        before = ts // DAY < ts[i] // DAY
        mine = before & (pins == pins[i])
        g = labels[before].mean(0) if before.any() else np.zeros(len(TASKS))
        rate = (labels[mine].sum(0) + ENGAGEMENT_PRIOR * g) / (mine.sum() + ENGAGEMENT_PRIOR)
        np.testing.assert_allclose([got[f"d_pin_rate_{t}"][i] for t in TASKS], rate, rtol=1e-5)
        assert got["d_pin_log_impressions"][i] == pytest.approx(np.log1p(mine.sum()))


def test_no_row_sees_its_own_label():
    """Flipping a row's own labels (and every label of its day or later) leaves its features unchanged;
    flipping a label of the same pin on an earlier day changes them."""
    pins, ts, labels = _impressions()
    base = pin_engagement(pins, ts, labels, pins, ts, TASKS)
    i = int(np.argmax(ts))  # the last row: many earlier impressions
    same_or_later = ts // DAY >= ts[i] // DAY
    flipped = labels.copy()
    flipped[same_or_later] = 1 - flipped[same_or_later]
    again = pin_engagement(pins, ts, flipped, pins, ts, TASKS)
    for name in base:
        assert again[name][i] == base[name][i]
    earlier = np.flatnonzero((pins == pins[i]) & ~same_or_later)
    assert len(earlier)
    flipped[earlier[0], 0] = 1 - flipped[earlier[0], 0]
    assert pin_engagement(pins, ts, flipped, pins, ts, TASKS)["d_pin_rate_save"][i] != base["d_pin_rate_save"][i]


def test_ranker_training_rows_never_see_their_own_label(tiny_data, tmp_path):
    """Through the trainer's own path (load_impressions with pin_engagement on): a training row's engagement
    features do not move when its own label flips in the data on disk."""
    cfg = config.load("ranker_dcnv2_baseline_tiny", {"pin_engagement": True}, model="ranker")
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    users, pins = ranker_training.embedding_tables(data)
    spec = ranker_training.feature_spec(io.read_meta(data), users, pins, cfg)
    names = engagement_names(cfg.tasks)
    assert spec.dense[-len(names):] == names and set(names) <= set(spec.pin_features)
    before = ranker_training.load_impressions(data, spec, cfg.tasks)
    row = before.iloc[len(before) // 2]
    for day_dir in sorted((data / "impressions").iterdir()):
        for f in day_dir.glob("*.parquet"):
            t = pq.read_table(f).to_pandas()
            hit = (t["request_id"] == row["request_id"]) & (t["pin_id"] == row["pin_id"])
            if hit.any():
                t.loc[hit, "label_save"] = 1 - t.loc[hit, "label_save"]
                t.to_parquet(f, index=False)
    after = ranker_training.load_impressions(data, spec, cfg.tasks)
    same = after[(after["request_id"] == row["request_id"]) & (after["pin_id"] == row["pin_id"])].iloc[0]
    assert same["label_save"] != row["label_save"]  # the flip reached the data
    for n in names:
        assert same[n] == row[n]


def test_feast_pin_features_carry_engagement_as_of_the_day(tiny_data, tmp_path):
    """The daily pin source holds each pin's engagement over every impression up to the end of the day,
    equal to what a training row of the next day sees."""
    paths = [tmp_path / "users.parquet", tmp_path / "pins.parquet"]
    for table, path in zip(reversed(content_embeddings(tiny_data)), paths):  # (pins, users) -> users, pins
        write_table(table, path)
    day = io.partitions(tiny_data, "impressions")[-2]  # a day with a next day to compare with
    repo = feast_store.init_repo(tmp_path / "repo")
    feast_store.write_sources(repo, tiny_data, day, *paths)
    src = pd.read_parquet(repo / "sources" / "pin_features.parquet")
    tasks = [c.removeprefix("label_") for c in load_table(tiny_data, "impressions").columns if c.startswith("label_")]
    names = engagement_names(tasks)
    assert set(names) <= set(src.columns)
    schema = json.loads((repo / "sources" / "schema.json").read_text())
    assert all(schema["pin_features"][n] == "float" for n in names)
    imp = load_table(tiny_data, "impressions")
    end = io.day_bounds(day)[1]
    seen = imp[imp["timestamp"] < end]
    want = pin_engagement(seen["pin_id"].to_numpy(), seen["timestamp"].to_numpy(),
                          seen[[f"label_{t}" for t in tasks]].to_numpy(np.float64), src["pin_id"].to_numpy(),
                          np.full(len(src), end), tasks)
    for n in names:
        np.testing.assert_allclose(src[n].to_numpy(), want[n], rtol=1e-6)
    # what a training row of the next day sees is the same number
    nxt = imp[(imp["timestamp"] >= end) & (imp["timestamp"] < end + DAY)].iloc[:50]
    rows = pin_engagement(imp["pin_id"].to_numpy(), imp["timestamp"].to_numpy(),
                          imp[[f"label_{t}" for t in tasks]].to_numpy(np.float64), nxt["pin_id"].to_numpy(),
                          nxt["timestamp"].to_numpy(), tasks)
    by_pin = src.set_index("pin_id")
    known = nxt["pin_id"].isin(by_pin.index).to_numpy()
    np.testing.assert_allclose(rows["d_pin_rate_save"][known], by_pin.loc[nxt["pin_id"][known], "d_pin_rate_save"],
                               rtol=1e-6)


@pytest.mark.parametrize("arch,dims", [("dcnv2_baseline", (16, 16)), ("masknet_dcnv2", (16, 24)),
                                       ("transformer", (16, 16))])
def test_user_pin_product_slice(arch, dims):
    """With user_pin_product the model's x_0 gains a P-wide slice that is a product of the user and pin
    inputs: zero pin input -> zero slice; raw product when the widths agree, projected otherwise."""
    cfg = config.load("ranker_tiny", {"arch": arch, "pepnet": True, "user_pin_product": True}, model="ranker")
    spec = ranker_training.FeatureSpec(dense=["d_a", "d_b"], sparse=["s_a"], cardinalities=[5], user_dim=dims[0],
                                       pin_dim=dims[1], user_features=["d_a"], pin_features=["d_b"])
    torch.manual_seed(0)
    model = Ranker(cfg, spec)
    plain = Ranker(config.load("ranker_tiny", {"arch": arch, "user_pin_product": False}, model="ranker"), spec)
    P = cfg.embedding_proj_dim
    assert sum(model.widths) == sum(plain.widths) + P
    assert model.raw_product == (dims[0] == dims[1])
    b = 4
    x = (torch.randn(b, 2), torch.randint(0, 5, (b, 1)), torch.zeros(b, 1, dtype=torch.long),
         torch.randn(b, dims[0]), torch.randn(b, dims[1]))
    x0 = model.embed(*x)
    assert x0.shape == (b, sum(model.widths))
    prod = x0[:, -P:]
    assert prod.abs().sum() > 0
    assert model(*x).shape == (b, len(cfg.tasks))
    if model.raw_product:  # the raw product is linear in the pin input's direction: -p flips it (up to the bias)
        neg = model.embed(*x[:4], -x[4])[:, -P:]
        bias = model.product_proj.bias * dims[0]
        torch.testing.assert_close(neg - bias, -(prod - bias))
