"""Benchmark of the stores of the recommend path, ``local`` vs ``server`` profile in one run (``make bench``).

HOMEFEED_BENCH_PINS synthetic pins (default 500000; users = pins / 10), 64-d clustered embeddings, and ranker
features (two dense, two sparse per user and per pin) are published through the same code as the daily run
(``feast_store.apply`` + ``materialize``, ``milvus_index.build_index``) into the local profile (Feast SQLite + file
registry, Milvus Lite) and the server profile started for real (Valkey, PostgreSQL, the Milvus server; the
``server_stack`` machinery). Per request, as the recommend path does them: the user's embedding from Feast, the
top-N candidates from Milvus through the alias, the ranker features of (user, N pins) from Feast; p50/p99 per stage
and of their sum, and the ratio local/server. Triton (the same server in both profiles) is not part of this
benchmark. Then HNSW recall@10 against exact search on the Milvus server at several ``ef``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components import stack
from components.inference.tables import EmbeddingTable, write_table
from components.serving import feast_store
from components.serving import milvus_index as mi
from components.stackconfig import load_stack

PINS = int(os.environ.get("HOMEFEED_BENCH_PINS", "500000"))
USERS = max(PINS // 10, 100)
DIM = 64
N = 500  # candidates per request
REQUESTS = int(os.environ.get("HOMEFEED_BENCH_STACK_REQUESTS", "200"))
DAY = "2024-03-01"


def _l2(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _sources(repo, rng, pins: EmbeddingTable, users: EmbeddingTable) -> None:
    """Feast sources as write_sources lays them out, without a data directory (synthetic features)."""
    src = repo / "sources"
    src.mkdir(parents=True, exist_ok=True)
    ts = pa.array([dt.datetime(2024, 3, 1, tzinfo=dt.UTC)], pa.timestamp("us", tz="UTC"))
    for name, t in (("user_embedding", users), ("pin_embedding", pins)):
        n = len(t)
        pq.write_table(pa.table({t.id_column: t.ids, "embedding": pa.array(list(t.embeddings), pa.list_(pa.float32())),
                                 "model_version": ["bench"] * n, "event_timestamp": ts.take(np.zeros(n, int))}),
                       src / f"{name}.parquet")
    schema = {}
    for name, ids, col, prefix in (("user_features", users.ids, "user_id", "u"), ("pin_features", pins.ids, "pin_id", "p")):
        n = len(ids)
        cols = {f"d_{prefix}1": rng.normal(size=n).astype(np.float32), f"d_{prefix}2": rng.normal(size=n).astype(np.float32),
                f"s_{prefix}1": rng.integers(0, 50, n), f"s_{prefix}2": rng.integers(0, 1000, n)}
        pq.write_table(pa.table({col: ids, **cols, "event_timestamp": ts.take(np.zeros(n, int))}), src / f"{name}.parquet")
        schema[name] = {c: ("float" if c.startswith("d_") else "int") for c in cols}
    (src / "schema.json").write_text(json.dumps(schema))


def _publish(cfg, rng, pins, users, pins_path) -> dict[str, float]:
    t = time.perf_counter()
    repo = feast_store.init_repo(cfg.feast.repo, stack=cfg)
    _sources(repo, rng, pins, users)
    feast_store.apply(repo, cfg)
    feast_store.materialize(repo, DAY, cfg)
    feast_s = time.perf_counter() - t
    t = time.perf_counter()
    mi.build_index(cfg.milvus.uri, pins_path, alias=cfg.milvus.alias, token=cfg.milvus_token(),
                   params=mi.HnswParams(insert_batch=20_000))
    return {"feast_materialize_s": feast_s, "index_build_s": time.perf_counter() - t}


def _pct(xs: list[float]) -> dict[str, float]:
    a = np.array(xs) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def _requests(cfg, rng, users: EmbeddingTable) -> dict[str, dict[str, float]]:
    repo = cfg.feast.repo
    store = feast_store.open_store(repo, cfg)
    index = mi.PinIndex(cfg.milvus.uri, cfg.milvus.alias, ef_search=128, token=cfg.milvus_token())
    stages: dict[str, list[float]] = {"feast_user": [], "milvus": [], "feast_features": [], "stores_total": []}
    try:
        for i, u in enumerate(rng.choice(users.ids, REQUESTS + 5)):
            t0 = time.perf_counter()
            emb, found = feast_store.online_user_embeddings(repo, [int(u)], store=store)
            t1 = time.perf_counter()
            ids, _ = index.search(emb, N)
            t2 = time.perf_counter()
            feats = feast_store.online_ranker_features(repo, int(u), ids[0], store=store)
            t3 = time.perf_counter()
            assert found[0] and len(feats["pin_embedding"]) == N
            if i >= 5:  # warm-up
                for k, v in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                    stages[k].append(v)
    finally:
        index.close()
    return {k: _pct(v) for k, v in stages.items()}


def test_bench_stack_local_vs_server(tmp_path, bench_record):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(max(PINS // 100, 10), DIM))
    pin_emb = _l2(centres[rng.integers(0, len(centres), PINS)] + 0.5 * rng.normal(size=(PINS, DIM)))
    now = dt.datetime.now(dt.UTC)
    pins = EmbeddingTable(np.arange(1, PINS + 1, dtype=np.int64), pin_emb, "bench", now, "pin_id")
    users = EmbeddingTable(np.arange(1, USERS + 1, dtype=np.int64), _l2(rng.normal(size=(USERS, DIM))), "bench", now,
                           "user_id")
    pins_path = write_table(pins, tmp_path / "pins.parquet")
    result = {"what": "recommend-path store stages per request (Feast user embedding, Milvus top-N, Feast ranker "
                      "features for N pins), local (SQLite + Milvus Lite) vs server (Redis/Valkey + SQL registry + "
                      "Milvus server); Triton excluded", "pins": PINS, "users": USERS, "dim": DIM, "candidates": N,
              "requests": REQUESTS}
    local = load_stack("local")
    local.feast.repo, local.milvus.uri = str(tmp_path / "local_repo"), str(tmp_path / "milvus.db")
    result["local_publish"] = _publish(local, rng, pins, users, pins_path)
    result["local"] = _requests(local, rng, users)
    with stack.running("server", tmp_path / "server", feast_server=False) as server:
        server.feast.repo = str(tmp_path / "server_repo")
        result["server_publish"] = _publish(server, rng, pins, users, pins_path)
        result["server"] = _requests(server, rng, users)
        result["ratio_local_over_server_p50"] = {k: result["local"][k]["p50_ms"] / result["server"][k]["p50_ms"]
                                                 for k in result["local"]}
        # HNSW recall@10 vs exact search on the Milvus server
        queries = _l2(pin_emb[rng.integers(0, PINS, 200)] + 0.3 * rng.normal(size=(200, DIM)))
        truth = np.argsort(-(queries @ pin_emb.T), axis=1)[:, :10] + 1
        for ef in (16, 64, 128, 256):
            index = mi.PinIndex(server.milvus.uri, server.milvus.alias, ef_search=ef, token=server.milvus_token())
            try:
                t = time.perf_counter()
                got = np.concatenate([index.search(q[None, :], 10)[0] for q in queries])
                qps = len(queries) / (time.perf_counter() - t)
            finally:
                index.close()
            recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)]))
            result[f"server_hnsw_ef{ef}_recall_at_10"] = recall
            result[f"server_hnsw_ef{ef}_queries_per_s"] = qps
            assert recall > 0.5  # a broken index would be near 0
    bench_record("stack_local_vs_server", result)
