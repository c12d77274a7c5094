"""Benchmarks of the serving path (collected only by ``make bench``).

1. The Triton ranker ensemble (a real tritonserver: python-backend preprocess + ONNX Runtime ranker with
   dynamic batching, gRPC) at batch 1 and 16 with 1 and 8 concurrent clients, against the same trained
   model in eager PyTorch serving one request at a time (normalise + forward per request, 1 thread):
   rows/s, p50/p99 latency, and the ratio of rows/s, each over several repetitions (median/min/max).
2. The recommend path per stage (Feast user embedding, Milvus top-N, Feast ranker features, Triton) and
   end to end: p50/p99 over repeated requests.
"""

from __future__ import annotations

import json
import statistics
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch

from components import config
from components.data import io
from components.data.baseline import content_embeddings
from components.data.schemas import SURFACES
from components.data.tables import write_table
from components.data.validate import load_table
from components.models import ranker_inputs
from components.serving import feast_store, milvus_index
from components.serving import model_repository as mr
from components.serving.recommend import RecommendConfig, Recommender
from components.serving.triton import TritonServer
from components.serving.triton_client import RankerClient
from components.training.ranker import add_pin_engagement

REPS = 3
SECONDS = 3.0  # per measurement


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "reps": len(xs)}


def _pct(lat: list[float]) -> dict[str, float]:
    a = np.asarray(lat) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "requests": len(a)}


@pytest.fixture(scope="module")
def served(tiny_data, tmp_path_factory):
    from components.serving.export import export_ranker
    from components.training.ranker import train

    root = tmp_path_factory.mktemp("bench_serving")
    train(config.load("ranker_tiny"), tiny_data, root / "model")
    export_ranker(root / "model", root / "export", data_dir=tiny_data)
    repo = mr.materialize(root / "export", root / "repository")
    server = TritonServer(repo).start()
    pre = json.loads((root / "export" / "preprocess.json").read_text())
    df = add_pin_engagement(load_table(tiny_data, "impressions"), pre["dense"]["names"]).sample(2048, random_state=0,
                                                                                                replace=True)
    pins, users = content_embeddings(tiny_data)
    raw = {"dense": df[pre["dense"]["names"]].to_numpy(np.float32),
           "sparse": df[pre["sparse"]["names"]].to_numpy(np.int64),
           "surface": pd.Categorical(df["surface"], categories=list(SURFACES)).codes.astype(np.int64).reshape(-1, 1),
           "user_embedding": users.lookup(df["user_id"].to_numpy())[0],
           "pin_embedding": pins.lookup(df["pin_id"].to_numpy())[0]}
    yield {"root": root, "server": server, "raw": raw, "pre": pre, "pins": pins, "users": users, "data": tiny_data}
    server.stop()


def _eager(model_dir, pre, raw, batch: int) -> tuple[float, list[float]]:
    """Eager PyTorch, one request at a time for SECONDS: (rows/s, latencies)."""
    from components.models.ranker import load_model

    model, _, _ = load_model(model_dir)
    n = len(raw["dense"])
    lat: list[float] = []
    rows, i = 0, 0
    end = time.perf_counter() + SECONDS
    t0 = time.perf_counter()
    while time.perf_counter() < end:
        s = (i * batch) % (n - batch)
        t = time.perf_counter()
        x = (ranker_inputs.normalize_dense(raw["dense"][s:s + batch], pre["dense"]["mean"], pre["dense"]["std"]),
             ranker_inputs.clamp_sparse(raw["sparse"][s:s + batch], pre["sparse"]["cardinalities"]),
             ranker_inputs.clamp_surface(raw["surface"][s:s + batch], len(pre["surfaces"])),
             raw["user_embedding"][s:s + batch], raw["pin_embedding"][s:s + batch])
        with torch.no_grad():
            model.predict(*(torch.from_numpy(np.ascontiguousarray(a)) for a in x))
        lat.append(time.perf_counter() - t)
        rows += batch
        i += 1
    return rows / (time.perf_counter() - t0), lat


def _triton(server, raw, batch: int, clients: int) -> tuple[float, list[float], int]:
    """``clients`` threads, each its own gRPC client, for SECONDS: (rows/s, latencies, errors)."""
    n = len(raw["dense"])
    lats: list[list[float]] = [[] for _ in range(clients)]
    rows = [0] * clients
    errors = [0] * clients
    start = threading.Barrier(clients + 1)

    def worker(c: int) -> None:
        with RankerClient(server.grpc_url, "grpc") as client:
            client.score({k: v[:batch] for k, v in raw.items()})  # warm the connection
            start.wait()
            i = c
            end = time.perf_counter() + SECONDS
            while time.perf_counter() < end:
                s = (i * batch) % (n - batch)
                t = time.perf_counter()
                try:
                    client.score({k: v[s:s + batch] for k, v in raw.items()})
                except Exception:  # noqa: BLE001 - counted and reported
                    errors[c] += 1
                lats[c].append(time.perf_counter() - t)
                rows[c] += batch
                i += clients

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return sum(rows) / (time.perf_counter() - t0), [x for lat in lats for x in lat], sum(errors)


def test_bench_triton_ensemble_vs_eager(served, bench_record):
    torch.set_num_threads(1)
    result: dict = {"what": "rows/s of the Triton ranker_ensemble (gRPC) vs eager PyTorch one request at a time",
                    "model": "ranker_tiny (masknet_dcnv2 + PEPNet) on synthetic_tiny", "seconds_per_rep": SECONDS}
    for batch in (1, 16):
        eager = [_eager(served["root"] / "model", served["pre"], served["raw"], batch) for _ in range(REPS)]
        eager_rps = [r for r, _ in eager]
        result[f"eager_b{batch}_rows_per_s"] = _stats(eager_rps)
        result[f"eager_b{batch}_latency"] = _pct([x for _, lat in eager for x in lat])
        for clients in (1, 8):
            runs = [_triton(served["server"], served["raw"], batch, clients) for _ in range(REPS)]
            assert sum(e for _, _, e in runs) == 0
            rps = [r for r, _, _ in runs]
            key = f"triton_b{batch}_c{clients}"
            result[f"{key}_rows_per_s"] = _stats(rps)
            result[f"{key}_latency"] = _pct([x for _, lat, _ in runs for x in lat])
            # ratio per repetition pairing: triton rows/s over eager rows/s (> 1: Triton serves more rows)
            ratios = [t / e for t, e in zip(rps, eager_rps)]
            result[f"ratio_{key}_over_eager_b{batch}"] = {"median": statistics.median(ratios), "min": min(ratios),
                                                          "max": max(ratios)}
    stats = RankerClient(served["server"].url, "http").client.get_inference_statistics("ranker")["model_stats"][0]
    # dynamic batching: requests reaching the ranker per execution, and rows per execution
    result["ranker_requests_per_execution"] = stats["inference_stats"]["success"]["count"] / max(stats["execution_count"], 1)
    result["ranker_rows_per_execution"] = stats["inference_count"] / max(stats["execution_count"], 1)
    bench_record("serving_triton_vs_eager", result)


def test_bench_recommend_stages(served, bench_record, tmp_path):
    data, pins, users = served["data"], served["pins"], served["users"]
    write_table(pins, tmp_path / "pins.parquet")
    write_table(users, tmp_path / "users.parquet")
    day = io.partitions(data, "impressions")[-1]
    repo = feast_store.init_repo(tmp_path / "feature_repo")
    feast_store.write_sources(repo, data, day, tmp_path / "users.parquet", tmp_path / "pins.parquet")
    feast_store.apply(repo)
    feast_store.materialize(repo, day)
    uri = str(tmp_path / "milvus.db")
    milvus_index.build_index(uri, tmp_path / "pins.parquet")
    cfg = RecommendConfig(feature_repo=repo, milvus_uri=uri, triton_url=served["server"].grpc_url,
                          preprocess=served["root"] / "export", candidates=500)
    stages: dict[str, list[float]] = {}
    rng = np.random.default_rng(0)
    with Recommender(cfg) as rec:
        rec.recommend(int(users.ids[0]), k=20)  # warm-up
        for _ in range(REPS):
            for uid in rng.choice(users.ids, 20, replace=False):
                out = rec.recommend(int(uid), k=20)
                assert not out.cold_start and len(out.items) == 20
                for k, v in out.timings_ms.items():
                    stages.setdefault(k, []).append(v / 1000)
    result = {"what": "recommend path latency per stage, 500 candidates, k=20 (Feast SQLite, Milvus Lite, Triton)",
              "pins": len(pins), "candidates": 500}
    for k, v in stages.items():
        result[k] = _pct(v)
    bench_record("serving_recommend_stages", result)
