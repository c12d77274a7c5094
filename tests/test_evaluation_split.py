"""Per-user leave-last-out (``homefeed data import`` with ``split.leave_last``): the trainers and the harnesses
honour each user's own split time (``users.parquet: split_timestamp``), not the median global one.

The tiny log is built so that the rule is visible: users are active in staggered 6-day windows over 40 days,
and each user's last 3 events are on that user's own "future" items (``f<u>-<k>``) that nobody engages before.
With per-user splits no future item may reach training (PinSage pairs, PinnerFormer sequences, baselines) and
every evaluation query must be exactly a user's future items; the global median split would leak them for the
early users and hide the late users' history (checked too, so the test can fail)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from components import config
from components.data import io
from components.data.baseline import content_embeddings
from components.data.import_config import from_dict
from components.data.importer import import_data
from components.data.validate import load_events
from components.evaluation import pinsage as pinsage_eval
from components.evaluation.pinnerformer import per_user_split, popularity_recall, recall_at_split, split_queries
from components.evaluation.protocol import eval_mask, train_mask, user_splits
from components.graph.graph import build_graph
from components.models.pinnerformer import PinnerFormer
from components.training.common import DistInfo
from components.training.pinnerformer import prepare_training_data
from components.training.pinnerformer_data import build_sequences
from components.training.pinsage import PinSageTask

USERS, LAST = 24, 3
DAY = 86_400


def _log() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    start = pd.Timestamp("2024-01-01", tz="UTC")
    rows = []
    for u in range(USERS):
        first = u * 34 // USERS * DAY  # staggered: user 0 on days 0-5, the last user on days 33-38
        times = np.sort(first + rng.integers(0, 6 * DAY, 12 + LAST))
        items = [f"c{int(i)}" for i in rng.integers(0, 20, 12)] + [f"f{u}-{k}" for k in range(LAST)]
        for t, item in zip(times, items):
            rows.append({"user": f"u{u:02d}", "item": item, "when": (start + pd.Timedelta(seconds=int(t))).isoformat(),
                         "kind": "buy"})
    # the future items come last for each user (their timestamps are the user's 3 latest)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def per_user_data(tmp_path_factory):
    src = tmp_path_factory.mktemp("llo_src")
    _log().to_csv(src / "events.csv", index=False)
    cfg = {"name": "llo", "interactions": {"path": "events.csv", "user": "user", "item": "item", "timestamp": "when",
                                           "event": "kind"},
           "actions": {"purchase": ["buy"]}, "positive": ["purchase"],
           "collections": {"source": "user_positives"}, "split": {"leave_last": LAST}}
    out = tmp_path_factory.mktemp("llo") / "data"
    import_data(from_dict(cfg, src), out)
    return out


def _future(pin_ids_by_row: np.ndarray, names: dict[int, str]) -> np.ndarray:
    return np.array([names[int(p)].startswith("f") for p in pin_ids_by_row], bool)


@pytest.fixture(scope="module")
def names(per_user_data):
    """pin_id -> source item name, and user_id -> user name, from the importer's id maps."""
    ev = load_events(per_user_data)
    raw = _log().sort_values(["user", "when"], kind="stable")
    # both are sorted by (user, time) with one row per source row: zip them to recover the ids
    merged = pd.DataFrame({"pin_id": ev.sort_values(["user_id", "timestamp"], kind="stable")["pin_id"].to_numpy(),
                           "item": raw["item"].to_numpy()})
    assert (merged.groupby("pin_id")["item"].nunique() == 1).all()
    return dict(zip(merged["pin_id"].astype(int), merged["item"]))


def test_the_protocol_masks_follow_each_users_own_split(per_user_data, names):
    ids, splits = user_splits(per_user_data)
    assert len(ids) == USERS and len(np.unique(splits)) > USERS // 2  # many different cuts
    ev = load_events(per_user_data)
    u, ts = ev["user_id"].to_numpy(), ev["timestamp"].to_numpy()
    future = _future(ev["pin_id"].to_numpy(), names)
    train = train_mask(per_user_data, u, ts)
    assert np.array_equal(train, ~future)  # exactly each user's last 3 events are evaluation
    glob = ts < io.read_meta(per_user_data)["split_timestamp"]
    assert (glob & future).any() and (~glob & ~future).any()  # the global median split would be wrong both ways
    val, test = (eval_mask(per_user_data, u, ts, p) for p in ("val", "test"))
    assert not (val & test).any() and np.array_equal(val | test, future)
    assert len(np.unique(u[val])) > 0 and len(np.unique(u[test])) > 0
    assert not set(u[val]) & set(u[test])  # the two periods are disjoint halves of the users


def test_pinsage_trains_and_evaluates_on_each_users_own_split(per_user_data, names):
    cfg = config.load("pinsage_tiny", {"batch_size": 8, "walks_per_node": 10, "num_neighbors": 3,
                                       "hard_negatives": False, "board_pairs": False})
    task = PinSageTask(cfg, per_user_data)
    task.setup(DistInfo())
    pin_ids = task.inputs["graph"].pin_ids
    trained = pin_ids[np.unique(task.pairs)]
    assert len(trained) and not _future(trained, names).any()  # no future item in a training pair
    held = pinsage_eval.heldout_pairs(per_user_data, pin_ids, cfg, "all")
    # each user's 3 future items come in a row: at most 2 consecutive pairs each (those within a day)
    assert USERS <= len(held) <= USERS * (LAST - 1)
    owner = [(names[int(a)].split("-")[0], names[int(b)].split("-")[0]) for a, b in pin_ids[held]]
    assert _future(pin_ids[held.ravel()], names).all() and all(a == b for a, b in owner)
    scorers = pinsage_eval.baseline_scorers(build_graph(per_user_data), per_user_data, cfg)
    pop = scorers["popularity"](held[:, 0], 0)[0]
    assert (pop[_future(pin_ids, names)] == 0).all() and pop.sum() > 0  # counted from training events only


def test_pinnerformer_trains_and_evaluates_on_each_users_own_split(per_user_data, names):
    table, _ = content_embeddings(per_user_data)  # pin content vectors (no event is read for pins)
    cfg = config.load("pinnerformer_tiny", {"eval_user_fraction": 0.5, "pin_dim": table.dim})
    seqs, train_pos, eval_users, _ = prepare_training_data(cfg, per_user_data, table)
    trained_rows = np.concatenate([seqs.pin_row[slice(*seqs.span(int(p)))] for p in train_pos])
    assert len(trained_rows) and not _future(table.ids[trained_rows], names).any()
    full = build_sequences(load_events(per_user_data), table.ids)
    split = per_user_split(per_user_data, full)
    windows, targets = split_queries(cfg, full, eval_users, split)
    assert len(windows) == len(eval_users)  # every held-out user has their 3 future items as targets
    for (a, e), tg in zip(windows, targets):
        assert len(tg) == LAST and _future(table.ids[tg], names).all()
        assert not _future(table.ids[full.pin_row[a:e + 1]], names).any()  # embedded from the past only
    torch.manual_seed(0)
    r = recall_at_split(PinnerFormer(cfg).eval(), cfg, per_user_data, table, eval_users, full)
    assert r["eval_users_scored"] == len(eval_users) and 0.0 <= r["recall@1"] <= r["recall@10"] <= r["recall@100"] <= 1
    pop = popularity_recall(cfg, full, eval_users, split, len(table))
    assert pop["recall@100"] is not None and pop["eval_users_scored"] == len(eval_users)
