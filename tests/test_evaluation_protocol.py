"""The evaluation protocol: one meaning of --seeds, an evaluation split that does not move with the
training seed, and validation / test periods that never overlap (tuning never sees test data)."""

from __future__ import annotations

import numpy as np
import pytest

from components import config
from components.config import ConfigError
from components.data import io
from components.data.baseline import content_embeddings
from components.data.validate import load_events
from components.evaluation import pinsage as pinsage_eval
from components.evaluation.pinnerformer_harness import heldout_half
from components.evaluation.protocol import SPLIT_SEED, in_period, parse_seeds, period_bounds
from components.graph.graph import build_graph
from components.training import pinnerformer as pinnerformer_training


def test_seeds_mean_one_thing():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("3") == [3] and parse_seeds(3) == [3]
    assert parse_seeds(None, default=4) == [4]
    for bad, msg in (("a,b", "comma-separated list of integers"), ("-1", "non-negative"), ("1,1", "repeated")):
        with pytest.raises(ConfigError, match=msg):
            parse_seeds(bad)


def test_val_and_test_periods_split_the_evaluation_days_in_time_order(tiny_data):
    split = int(io.read_meta(tiny_data)["split_timestamp"])
    v0, v1 = period_bounds(tiny_data, "val")
    t0, t1 = period_bounds(tiny_data, "test")
    assert v0 == split < v1 == t0 and t1 is None
    assert period_bounds(tiny_data, "all") == (split, None)
    ts = load_events(tiny_data)["timestamp"].to_numpy()
    val, test = in_period(ts, (v0, v1)), in_period(ts, (t0, t1))
    assert val.any() and test.any() and not (val & test).any() and ((val | test) == (ts >= split)).all()
    with pytest.raises(ConfigError, match="period 'later'"):
        period_bounds(tiny_data, "later")


def test_validation_pairs_never_use_test_period_events(tiny_data):
    graph = build_graph(tiny_data)
    cfg = config.load("pinsage_tiny", {"eval_max_queries": 100_000})
    val = pinsage_eval.heldout_pairs(tiny_data, graph.pin_ids, cfg, "val")
    test = pinsage_eval.heldout_pairs(tiny_data, graph.pin_ids, cfg, "test")
    # every validation pair is a co-engagement of two events both before the test period starts
    ev = load_events(tiny_data)
    t0, _ = period_bounds(tiny_data, "test")
    late = set(np.searchsorted(graph.pin_ids, ev.loc[ev["timestamp"] >= t0, "pin_id"].to_numpy()).tolist())
    early = set(np.searchsorted(graph.pin_ids, ev.loc[ev["timestamp"] < t0, "pin_id"].to_numpy()).tolist())
    assert all(int(a) in early and int(b) in early for a, b in val)
    assert len(val) and len(test) and any(int(b) in late for _, b in test)


def test_pinnerformer_heldout_users_do_not_depend_on_the_training_seed(tiny_data):
    assert pinnerformer_training.EVAL_SPLIT_SEED == SPLIT_SEED
    pins, _ = content_embeddings(tiny_data)
    held = [pinnerformer_training.prepare_training_data(config.load("pinnerformer_tiny", {"seed": s}), tiny_data, pins)[2]
            for s in (0, 5)]
    assert len(held[0]) > 0 and np.array_equal(held[0], held[1])
    val, test = heldout_half(held[0], "val"), heldout_half(held[0], "test")
    assert len(np.intersect1d(val, test)) == 0 and np.array_equal(np.union1d(val, test), held[0])
