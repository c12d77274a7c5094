"""Benchmark of the recommend service (collected only by ``make bench``).

`homefeed serve recommend` as its own process in front of Feast (SQLite), Milvus Lite and a real tritonserver,
on 127.0.0.1: requests/s and p50/p99 latency with 1 client and with 8 concurrent clients (each a keep-alive
HTTP session asking for k=20 of 200 candidates for random known users), REPS repetitions of SECONDS each,
and the ratio of requests/s (8 clients / 1 client). Bounded: every loop ends after SECONDS.
"""

from __future__ import annotations

import os
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from components import cli, config
from components.data import io
from components.data.baseline import content_embeddings
from components.data.tables import write_table
from components.serving import model_repository as mr
from components.serving.triton import TritonServer, free_port
from components.stackconfig import (
    FeastConfig,
    MilvusConfig,
    SecretRef,
    ServiceConfig,
    StackConfig,
    TritonConfig,
    dump_stack,
)

ROOT = Path(__file__).resolve().parents[2]
REPS = 3
SECONDS = 5.0


@pytest.fixture(scope="module")
def service(tiny_data, tmp_path_factory):
    from components.serving.export import export_ranker
    from components.training.ranker import train

    root = tmp_path_factory.mktemp("bench_service")
    pins, users = content_embeddings(tiny_data)
    write_table(pins, root / "pins.parquet")
    write_table(users, root / "users.parquet")
    train(config.load("ranker_tiny"), tiny_data, root / "model")
    export_ranker(root / "model", root / "export", data_dir=tiny_data)
    repo, day = root / "feature_repo", io.partitions(tiny_data, "impressions")[-1]
    assert cli.main(["features", "apply", "--repo", str(repo), "--data", str(tiny_data), "--date", day,
                     "--user-embeddings", str(root / "users.parquet"), "--pin-embeddings", str(root / "pins.parquet")]) == 0
    assert cli.main(["features", "materialize", "--repo", str(repo), "--date", day]) == 0
    milvus = str(root / "milvus.db")
    assert cli.main(["index", "build", "--uri", milvus, "--embeddings", str(root / "pins.parquet")]) == 0
    triton = TritonServer(mr.materialize(root / "export", root / "repository")).start()
    stack = dump_stack(StackConfig(feast=FeastConfig(repo=str(repo)), milvus=MilvusConfig(uri=milvus),
                                   triton=TritonConfig(url=triton.grpc_url, protocol="grpc",
                                                       repository=str(root / "repository")),
                                   service=ServiceConfig(token=SecretRef(env="HOMEFEED_API_TOKEN"))),
                       root / "stack.yaml")
    token, port = secrets.token_urlsafe(24), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "components.cli", "serve", "recommend", "--stack", str(stack),
                             "--port", str(port), "--concurrency", "8", "--candidates", "200"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "HOMEFEED_API_TOKEN": token})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the service did not get ready"
            try:
                if requests.get(url + "/readyz", timeout=30).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        yield {"url": url, "token": token, "users": users.ids}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        triton.stop()


def _run(svc, clients: int) -> dict:
    """``clients`` threads for SECONDS: requests/s and latencies (every answer must be a ranked 200)."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    bad: list[int] = []
    end = time.perf_counter() + SECONDS

    def client(i: int) -> None:
        rng = np.random.default_rng(i)
        with requests.Session() as s:
            s.headers["Authorization"] = f"Bearer {svc['token']}"
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                r = s.post(svc["url"] + "/v1/recommend", json={"user_id": int(rng.choice(svc["users"])), "k": 20},
                           timeout=60)
                lat[i].append(time.perf_counter() - t0)
                if r.status_code != 200 or r.json()["fallback"] is not None:
                    bad.append(r.status_code)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    flat = np.concatenate([np.asarray(x) for x in lat]) * 1000
    assert not bad, f"{len(bad)} requests not ranked: {set(bad)}"
    return {"rps": len(flat) / wall, "p50_ms": float(np.percentile(flat, 50)), "p99_ms": float(np.percentile(flat, 99)),
            "requests": len(flat), "latency": flat.tolist()}


def _median(runs: list[dict], key: str) -> dict:
    xs = [r[key] for r in runs]
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "reps": len(xs)}


def test_bench_service_1_vs_8_clients(service, bench_record):
    _run(service, 1)  # warm-up: opens the pool's first connections
    one, eight = [], []
    for _ in range(REPS):
        one.append(_run(service, 1))
        eight.append(_run(service, 8))
    rps_ratio = [e["rps"] / o["rps"] for o, e in zip(one, eight)]
    result = {"work": f"POST /v1/recommend k=20 of 200 candidates, {SECONDS:.0f} s x {REPS} reps per setting, "
                      "Feast SQLite + Milvus Lite + tritonserver (gRPC), service --concurrency 8",
              "clients_1": {"rps": _median(one, "rps"), "p50_ms": _median(one, "p50_ms"), "p99_ms": _median(one, "p99_ms")},
              "clients_8": {"rps": _median(eight, "rps"), "p50_ms": _median(eight, "p50_ms"),
                            "p99_ms": _median(eight, "p99_ms")},
              "throughput_ratio_8_vs_1": {"median": statistics.median(rps_ratio), "min": min(rps_ratio),
                                          "max": max(rps_ratio)},
              "latency_8_clients": eight[len(eight) // 2]["latency"][:2000]}
    bench_record("service_clients_1_vs_8", result)
    print({k: v for k, v in result.items() if not k.startswith("latency")})
