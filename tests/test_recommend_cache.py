"""The ranker features' pin cache (components/serving/ranker_features.py) on the real ``server`` stack: Feast on
Valkey (Redis online store) + the SQL registry on PostgreSQL, the Milvus 2.3.5 server and a tritonserver (the
session's ``server_stack``; this module gets its own Feast project and Milvus alias and adds Triton).

Covered: the cached read gives the same features, the same pin version and the same ranked output as the uncached
read (a Recommender without a cache, and ``cached=False``), on misses and on hits; the warm-up; a re-materialised
pin side (other values of the same version, then another PinSage model) is seen at the next request, as the
uncached path sees it; and the cache's own rules (bounded LRU, max age, a new collection, a new version) and its
Prometheus metrics.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest

from components import cli, stack
from components.data import io
from components.data.baseline import content_embeddings
from components.data.tables import EmbeddingTable, write_table
from components.serving import model_repository
from components.serving.contract import RecommendError
from components.serving.ranker_features import PinCache, raw_inputs
from components.serving.recommend import RecommendConfig, Recommender
from components.serving.service import Metrics, PinCacheCollector
from components.stackconfig import dump_stack, load_stack

pytestmark = pytest.mark.slow
WHEN = dt.datetime(2024, 3, 1, 18, tzinfo=dt.UTC)
OTHER = "pinsage-0123456789ab"  # another PinSage model's version


@pytest.fixture(scope="module")
def world(server_stack, tiny_data, tiny_ranker_export, tmp_path_factory):
    root = tmp_path_factory.mktemp("pincache")
    state = Path(server_stack.source).parent
    cfg = stack.isolated(server_stack, "pincache", root)
    pins, users = content_embeddings(tiny_data)  # the tables the session's tiny ranker was trained on (content-v1)
    write_table(pins, root / "pins.parquet")
    write_table(users, root / "users.parquet")
    day = io.partitions(tiny_data, "impressions")[-1]
    repo = model_repository.materialize(tiny_ranker_export / "export", root / "triton_repository")
    try:
        triton = stack.add_triton(state, repo)
        cfg.triton.url, cfg.triton.protocol, cfg.triton.repository = triton.triton.url, "grpc", str(repo)
        stack_file = dump_stack(cfg, root / "stack.yaml")
        assert cli.main(["features", "apply", "--stack", str(stack_file), "--data", str(tiny_data), "--date", day,
                         "--user-embeddings", str(root / "users.parquet"),
                         "--pin-embeddings", str(root / "pins.parquet")]) == 0
        assert cli.main(["features", "materialize", "--stack", str(stack_file), "--date", day]) == 0
        assert cli.main(["index", "build", "--stack", str(stack_file), "--embeddings", str(root / "pins.parquet")]) == 0
        yield {"root": root, "stack_file": stack_file, "pins": pins, "users": users, "data": tiny_data, "day": day}
    finally:
        if any(p.name == "triton" for p in stack.recorded_processes(state)):
            stack.stop_server(state, "triton")  # the stores stay up for the session's other modules


def _config(w, **kw) -> RecommendConfig:
    return RecommendConfig.from_stack(load_stack(w["stack_file"]), candidates=100, **kw)


def _same_features(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        assert len(a[name]) == len(b[name]), name
        for x, y in zip(a[name], b[name]):
            assert (x is None) == (y is None), name
            if x is not None:
                assert np.array_equal(np.asarray(x, np.float64), np.asarray(y, np.float64)), name


def _same_ranking(a, b) -> None:
    assert a.fallback == b.fallback and a.filled == b.filled and a.versions == b.versions
    assert [(i["pin_id"], i["score"], i["probabilities"], i["similarity"]) for i in a.items] == \
           [(i["pin_id"], i["score"], i["probabilities"], i["similarity"]) for i in b.items]


def _publish_pins(w, table: EmbeddingTable, name: str) -> None:
    path = write_table(table, w["root"] / f"{name}.parquet")
    assert cli.main(["features", "apply", "--stack", str(w["stack_file"]), "--data", str(w["data"]), "--date", w["day"],
                     "--pin-embeddings", str(path)]) == 0
    assert cli.main(["features", "materialize", "--stack", str(w["stack_file"]), "--date", w["day"]]) == 0


def test_cached_features_and_ranking_equal_the_uncached_read(world):
    users = world["users"]
    with Recommender(_config(world)) as cached, Recommender(_config(world, pin_cache_size=0)) as plain:
        assert plain.features.cache is None and cached.features.cache is cached.pin_cache
        for rnd in range(2):  # the first round fills the cache, the second reads it
            for i in (3, 11, 40):
                uid = int(users.ids[i])
                ids, _ = cached.candidates(cached.user_embedding(uid), 100)
                got, got_version = cached.ranker_features(uid, ids)
                want, want_version = plain.ranker_features(uid, ids)
                _same_features(got, want)
                assert got_version == want_version == "content-v1"
                _same_features(cached.ranker_features(uid, ids, cached=False)[0], want)
                a, b = cached.recommend(uid, 10, when=WHEN), plain.recommend(uid, 10, when=WHEN)
                assert a.fallback is None and len(a.items) == 10, a.message
                _same_ranking(a, b)
            if rnd == 0:
                first = cached.pin_cache.stats()
                assert first["misses"] > 0 and first["size"] > 0
        stats = cached.pin_cache.stats()
        assert stats["hits"] > first["hits"] and stats["misses"] == first["misses"] and stats["invalidations"] == 0
        n_popular = len(cached.popular)
        assert n_popular > 0 and cached.warm_pin_cache(n_popular) >= n_popular
        assert cached.pin_cache.get_many(cached.popular.tolist()).count(None) == 0


def test_a_rematerialised_pin_side_is_seen_at_the_next_request(world):
    """The per-request probe pin finds the change; the response equals the uncached one each time."""
    pins, uid = world["pins"], int(world["users"].ids[5])
    with Recommender(_config(world)) as cached, Recommender(_config(world, pin_cache_size=0)) as plain:
        _same_ranking(cached.recommend(uid, 10, when=WHEN), plain.recommend(uid, 10, when=WHEN))
        assert cached.pin_cache.stats()["size"] > 0
        try:
            # the same version, other values (every pin's embedding negated): a re-materialisation
            _publish_pins(world, dataclasses.replace(pins, embeddings=-pins.embeddings), "pins_negated")
            a, b = cached.recommend(uid, 10, when=WHEN), plain.recommend(uid, 10, when=WHEN)
            _same_ranking(a, b)
            assert a.fallback is None and cached.pin_cache.stats()["invalidations"] == 1
            # another PinSage model: never ranked, with or without the cache
            _publish_pins(world, dataclasses.replace(pins, model_version=OTHER), "pins_other")
            a, b = cached.recommend(uid, 10, when=WHEN), plain.recommend(uid, 10, when=WHEN)
            _same_ranking(a, b)
            assert a.fallback == "incompatible_pin_embeddings" and a.versions["pin_embeddings"] == OTHER
            assert cached.pin_cache.stats()["invalidations"] == 2 and cached.pin_cache.version == OTHER
        finally:
            _publish_pins(world, pins, "pins_again")
        a, b = cached.recommend(uid, 10, when=WHEN), plain.recommend(uid, 10, when=WHEN)
        _same_ranking(a, b)
        assert a.fallback is None and cached.pin_cache.version == "content-v1"


def test_pin_cache_rules():
    """Bounded LRU, max age, a new collection and a new pin version drop entries; stats count them."""
    cache = PinCache(max_entries=3, max_age_s=0.3)
    cache.sync("pins_a")
    assert cache.put_many([1, 2, 3], [("a",), ("b",), ("c",)], "v1", "pins_a")
    assert cache.get_many([1]) == [("a",)]  # 1 is now the most recently used
    assert cache.put_many([4], [("d",)], "v1", "pins_a")
    assert cache.get_many([2, 1, 4]) == [None, ("a",), ("d",)] and len(cache) == 3  # 2 was the least recently used
    assert not cache.check(1, ("a",)) and cache.check(1, ("a2",)) and len(cache) == 0  # the probe saw a change
    cache.put_many([1], [("a",)], "v1", "pins_a")
    assert not cache.put_many([5], [("e",)], "v2", "pins_a") and len(cache) == 0 and cache.version == "v2"
    cache.put_many([1], [("a",)], "v2", "pins_a")
    cache.sync("pins_b")  # the alias serves another collection
    assert len(cache) == 0 and cache.generation == "pins_b"
    assert cache.put_many([1], [("a",)], "v2", "pins_a") and len(cache) == 0  # rows read for the old collection
    assert cache.put_many([1], [("a",)], "v2", "pins_b", epoch=cache.epoch - 1) and len(cache) == 0  # read before a drop
    cache.put_many([1], [(np.arange(3, dtype=np.float32),)], "v2", "pins_b")
    assert not cache.check(1, (np.arange(3, dtype=np.float32),))
    time.sleep(0.4)
    assert cache.get_many([1]) == [None]  # older than max_age_s
    assert cache.stats() == {"hits": 3, "misses": 2, "size": 1, "invalidations": 3}
    with pytest.raises(ValueError, match="max_age_s"):
        PinCache(10, 0)


def test_pin_cache_metrics():
    cache = PinCache(10, 60)
    cache.put_many([1, 2], [("a",), ("b",)], "v1", None)
    cache.get_many([1, 3])
    metrics = Metrics()
    metrics.registry.register(PinCacheCollector(cache))
    text = generate_latest(metrics.registry).decode()
    for line in ("homefeed_pin_cache_hits_total 1.0", "homefeed_pin_cache_misses_total 1.0",
                 "homefeed_pin_cache_invalidations_total 0.0", "homefeed_pin_cache_entries 2.0"):
        assert line in text, text


def test_raw_inputs_fill_missing_values_and_name_a_wrong_dimension():
    """The ranker inputs from feature lists: the user side (one object repeated) broadcast, missing pins' values
    filled as training saw an unknown (dense: the training mean, sparse: 0, embeddings: zeros) and counted."""
    pre = {"dense": {"names": ["d_pin_popularity", "d_position"], "mean": [0.25, 0.0]},
           "sparse": {"names": ["s_pin_category", "s_hour", "s_user_segment"]}, "surfaces": ["homefeed", "search"],
           "dims": {"d_user": 3, "d_pin": 2}}
    user = [0.1, 0.2, 0.3]
    feats = {"d_pin_popularity": [1.5, None, 2.5], "s_pin_category": [4, None, 6], "user_embedding": [user] * 3,
             "pin_embedding": [np.array([1, 2], np.float32), None, [5.0, 6.0]]}
    raw, filled = raw_inputs(pre, feats, 3, WHEN, "search")
    assert raw["dense"].tolist() == [[1.5, 0.0], [0.25, 0.0], [2.5, 0.0]]
    assert raw["sparse"].tolist() == [[4, 18, 0], [0, 18, 0], [6, 18, 0]]  # s_hour from the request time
    assert raw["surface"].tolist() == [[1]] * 3
    assert np.array_equal(raw["user_embedding"], np.tile(np.float32(user), (3, 1)))
    assert raw["pin_embedding"].tolist() == [[1, 2], [0, 0], [5, 6]]
    assert filled == {"d_pin_popularity": 1, "s_pin_category": 1, "s_user_segment": 3, "pin_embedding": 1}
    feats["pin_embedding"][2] = [1.0, 2.0, 3.0]
    with pytest.raises(RecommendError, match="pin_embedding has 3 values, the ranker expects 2"):
        raw_inputs(pre, feats, 3, WHEN, "homefeed")
