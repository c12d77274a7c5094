"""Benchmark of pin retrieval on Milvus Lite (collected only by ``make bench``).

100k pins (``HOMEFEED_BENCH_RETRIEVAL_PINS`` changes it; 1M needs ~10x the time and memory), 64-d, in
clustered directions like real embeddings. The HNSW index (cosine, M=16, efConstruction=200) is built
through ``milvus_index.build_index`` (the production path: collection, alias switch). Queries are noisy
copies of random pins: recall@10 of HNSW against exact search (numpy brute force over the same vectors) at
several ``ef``, and queries/s of both, one query per request and all queries in one request, each over
repetitions (median/min/max). The per-request ratio is the one the recommend path sees (it sends one query
per request); the batched ratio is recorded beside it (``ratio_*``: ``per_request`` then ``batched``).
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import time

import numpy as np

from components.data.tables import EmbeddingTable, write_table
from components.serving import milvus_index

PINS = int(os.environ.get("HOMEFEED_BENCH_RETRIEVAL_PINS", "100000"))
DIM = 64
QUERIES = 300
K = 10
REPS = 3


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "reps": len(xs)}


def _l2(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_bench_hnsw_vs_exact(tmp_path, bench_record):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(PINS // 100, DIM))
    emb = _l2(centres[rng.integers(0, len(centres), PINS)] + 0.5 * rng.normal(size=(PINS, DIM)))
    ids = np.arange(1, PINS + 1, dtype=np.int64)
    path = write_table(EmbeddingTable(ids, emb, "bench", dt.datetime.now(dt.UTC), "pin_id"), tmp_path / "pins.parquet")
    queries = _l2(emb[rng.integers(0, PINS, QUERIES)] + 0.3 * rng.normal(size=(QUERIES, DIM)))

    uri = str(tmp_path / "milvus.db")
    t = time.perf_counter()
    milvus_index.build_index(uri, path, params=milvus_index.HnswParams(insert_batch=20_000))
    build_s = time.perf_counter() - t

    truth = np.argsort(-(queries @ emb.T), axis=1)[:, :K] + 1  # ids are row + 1

    def exact_one_at_a_time() -> None:
        for q in queries:
            s = emb @ q
            top = np.argpartition(-s, K)[:K]
            top[np.argsort(-s[top])]

    result = {"what": "Milvus Lite HNSW (cosine) vs exact numpy search; one query per request, and all in one request",
              "pins": PINS, "dim": DIM, "queries": QUERIES, "k": K, "index_build_s": build_s}
    exact_qps = []
    for _ in range(REPS):
        t = time.perf_counter()
        exact_one_at_a_time()
        exact_qps.append(QUERIES / (time.perf_counter() - t))
    result["exact_queries_per_s"] = _stats(exact_qps)
    exact_batched = []
    for _ in range(REPS):  # all queries in one matrix product (the fair throughput of exact search)
        t = time.perf_counter()
        s = queries @ emb.T
        np.argpartition(-s, K, axis=1)[:, :K]
        exact_batched.append(QUERIES / (time.perf_counter() - t))
    result["exact_batched_queries_per_s"] = _stats(exact_batched)
    for ef in (16, 64, 128):
        index = milvus_index.PinIndex(uri, ef_search=ef)
        index.search(queries[:5], K)  # warm-up
        qps, recalls = [], []
        for _ in range(REPS):
            got = np.zeros((QUERIES, K), np.int64)
            t = time.perf_counter()
            for i, q in enumerate(queries):
                got[i] = index.search(q[None, :], K)[0][0]
            qps.append(QUERIES / (time.perf_counter() - t))
            recalls.append(float(np.mean([len(set(a) & set(b)) / K for a, b in zip(got, truth)])))
        batched = []
        for _ in range(REPS):  # every query in one request: Milvus Lite has a large fixed cost per request
            t = time.perf_counter()
            got_b = index.search(queries, K)[0]
            batched.append(QUERIES / (time.perf_counter() - t))
        index.close()
        result[f"hnsw_ef{ef}_batched_recall_at_10"] = float(np.mean([len(set(a) & set(b)) / K
                                                                    for a, b in zip(got_b, truth)]))
        result[f"hnsw_ef{ef}_batched_queries_per_s"] = _stats(batched)
        rb = [h / e for h, e in zip(batched, exact_batched)]
        result[f"ratio_batched_hnsw_ef{ef}_over_exact_batched_qps"] = {"median": statistics.median(rb), "min": min(rb),
                                                                       "max": max(rb)}
        result[f"hnsw_ef{ef}_recall_at_10"] = float(np.median(recalls))
        result[f"hnsw_ef{ef}_queries_per_s"] = _stats(qps)
        ratios = [h / e for h, e in zip(qps, exact_qps)]
        result[f"ratio_per_request_hnsw_ef{ef}_over_exact_per_request_qps"] = {"median": statistics.median(ratios), "min": min(ratios),
                                                       "max": max(ratios)}
        assert result[f"hnsw_ef{ef}_recall_at_10"] > 0.5  # a broken index would be near 0
    bench_record("retrieval_hnsw_vs_exact", result)
