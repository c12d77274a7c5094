"""Where one recommend-path search's time goes on the Milvus 2.3.5 server, variants interleaved in one run.

    HOMEFEED_BENCH_MILVUS_PINS=100000 pytest -q -s tests/bench/bench_milvus_search.py
    HOMEFEED_BENCH_MILVUS_SEGMENT_MB=16 ...   # the server's dataCoord.segment.maxSize: many small segments

One Milvus server started as the stack starts it (components.stack.milvus_server.start_milvus, with its MILVUS_CONFIG
unless HOMEFEED_BENCH_MILVUS_SEGMENT_MB is set), HOMEFEED_BENCH_MILVUS_PINS (default 20000) clustered 64-d pins
indexed by ``milvus_index.build_index`` (HNSW M 16, efConstruction 200), plus a 10-row collection. Then ROUNDS
rounds; in each, every variant runs BATCH single-query requests (order reversed every other round, so load drifts
hit all variants alike):

- ``grpc_round_trip``: ``GetVersion``, the client's gRPC round trip to the proxy and nothing else;
- ``tiny_search``: top 1 on the 10-row collection: the fixed cost of a search request (proxy task, query node);
- ``client_search_500``: the recommend path before this change: ``MilvusClient.search`` top 500, ef 500, the
  primary key as output field, the collection's default consistency (Bounded), hits read one by one;
- ``search_ids_500``: the path now (``milvus_search.search_ids``: Eventually, no output fields, hits read off the
  response message), and the same at ``Bounded`` / ``Strong``, and at top 100 / ef 128 and top 10 / ef 16.

Per variant: p50/p99 ms of the whole call, of the gRPC call alone (the rest is client-side Python), and the
server's own means from its Prometheus histograms over the same requests (proxy, query node request, segment
search, knowhere core, the wait for the consistency timestamp). Also: the segments the query node serves after the
build, and the server's CPU (cores) while idle, fresh and with the collection loaded.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np

from components.data.tables import EmbeddingTable, write_table
from components.serving import milvus_index as mi
from components.serving import milvus_search as ms
from components.stack.milvus_server import MILVUS_CONFIG, start_milvus
from components.stack.processes import alive, stop_group

PINS = int(os.environ.get("HOMEFEED_BENCH_MILVUS_PINS", "20000"))
SEGMENT_MB = os.environ.get("HOMEFEED_BENCH_MILVUS_SEGMENT_MB", "")
ROUNDS = int(os.environ.get("HOMEFEED_BENCH_MILVUS_ROUNDS", "5"))
BATCH = int(os.environ.get("HOMEFEED_BENCH_MILVUS_BATCH", "30"))
DIM = 64
IDLE_S = 20.0
HIST = re.compile(r'^(milvus_(?:proxy|querynode)_\w*latency\w*)_(sum|count)\{([^}]*)\} (\S+)$')
SERVER_STAGES = {  # Prometheus histogram (labels narrowed) -> the name recorded
    'milvus_proxy_sq_latency{query_type="search"}': "proxy_ms",
    'milvus_querynode_sq_req_latency{query_type="search",scope="OnLeader"}': "query_node_ms",
    'milvus_querynode_sq_wait_tsafe_latency{query_type="search"}': "wait_consistency_ms",
    'milvus_querynode_sq_segment_latency{query_type="search",segment_state="Sealed"}': "segments_ms",
    'milvus_querynode_sq_core_latency{query_type="search"}': "knowhere_core_ms",
}


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def l2(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def client_search(client, alias: str, q: np.ndarray, k: int, ef: int) -> np.ndarray:
    """The recommend path's Milvus search before milvus_search: pymilvus' search, hits read one by one."""
    res = client.search(alias, data=[q.tolist()], limit=k, anns_field=mi.VECTOR_FIELD, output_fields=[mi.ID_FIELD],
                        search_params=ms.search_params(ef))
    ids = np.full(k, -1, np.int64)
    sims = np.full(k, np.nan, np.float32)
    for j, h in enumerate(res[0][:k]):
        ids[j], sims[j] = h.id, h.distance
    return ids


def metrics_port(pgid: int) -> int | None:
    """The Milvus server's metrics port (the wheel picks the first free one from 9091): its process group's
    listening port that answers /metrics."""
    pids = alive(pgid)
    listing = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=False).stdout
    ports = sorted({int(line.split()[3].rsplit(":", 1)[1]) for line in listing.splitlines()
                    if any(f"pid={p}," in line for p in pids)})
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                if b"milvus_proxy" in r.read():
                    return port
        except OSError:
            continue
    return None


def scrape(port: int | None) -> dict[tuple[str, str], float]:
    """The server's search latency histograms: (name{labels}, sum|count) -> value."""
    out: dict[tuple[str, str], float] = {}
    if port is None:
        return out
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            m = HIST.match(line)
            if m:
                name, kind, labels, value = m.groups()
                keep = ",".join(x for x in labels.split(",") if not x.startswith(("node_id", "collection", "db_name")))
                out[(f"{name}{{{keep}}}", kind)] = float(value)
    return out


def server_means(before: dict, after: dict) -> dict[str, float]:
    """Mean ms per request of each SERVER_STAGES histogram between two scrapes."""
    res = {}
    for key, name in SERVER_STAGES.items():
        n = after.get((key, "count"), 0) - before.get((key, "count"), 0)
        if n > 0:
            res[name] = (after[(key, "sum")] - before.get((key, "sum"), 0)) / n
    return res


def cpu_cores(pgid: int, seconds: float) -> float:
    """CPU the process group used over ``seconds`` of wall time, in cores."""
    def ticks() -> int:
        total = 0
        for pid in alive(pgid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total
    t0, w0 = ticks(), time.monotonic()
    time.sleep(seconds)
    return (ticks() - t0) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - w0)


def _variants(client) -> dict:
    """name -> one request (a query vector in, nothing out)."""
    def ids(k, ef, level):
        return lambda q: ms.search_ids(client, mi.ALIAS, q, k, ef, mi.VECTOR_FIELD, level)
    return {
        "grpc_round_trip": lambda q: client.get_server_version(),
        "tiny_search": lambda q: ms.search_ids(client, "tiny", q, 1, 16, mi.VECTOR_FIELD, "Eventually"),
        "client_search_500": lambda q: client_search(client, mi.ALIAS, q, 500, 500),
        "search_ids_500": ids(500, 500, "Eventually"),
        "search_ids_500_bounded": ids(500, 500, "Bounded"),
        "search_ids_500_strong": ids(500, 500, "Strong"),
        "search_ids_100_ef128": ids(100, 128, "Eventually"),
        "search_ids_10_ef16": ids(10, 16, "Eventually"),
    }


def _interleaved(client, port: int | None, queries: np.ndarray) -> dict:
    variants = _variants(client)
    stub, timing = client._get_connection()._stub, {}
    plain = stub.Search

    def timed(*a, **kw):
        t = time.perf_counter()
        try:
            return plain(*a, **kw)
        finally:
            timing["rpc"] = time.perf_counter() - t

    stub.Search = timed  # the gRPC call alone, inside either path
    total = {v: [] for v in variants}
    rpc = {v: [] for v in variants}
    server = {v: [] for v in variants}
    out: dict = {"loadavg_before": loadavg()}
    qi = 0
    try:
        for r in range(ROUNDS):
            for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
                before = scrape(port)
                for _ in range(BATCH):
                    q, qi = queries[qi % len(queries)], qi + 1
                    timing.clear()
                    t = time.perf_counter()
                    variants[name](q)
                    total[name].append((time.perf_counter() - t) * 1000)
                    rpc[name].append(timing.get("rpc", np.nan) * 1000)
                server[name].append(server_means(before, scrape(port)))
    finally:
        stub.Search = plain
    for name in variants:
        a, g = np.asarray(total[name]), np.asarray(rpc[name])
        out[name] = {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
                     "mean_ms": float(a.mean()), "latency_ms": a.tolist()}
        if not np.isnan(g).all():
            out[name].update(grpc_p50_ms=float(np.nanpercentile(g, 50)),
                             client_python_p50_ms=float(np.nanpercentile(a - g, 50)))
        stages = {k: float(np.mean([s[k] for s in server[name] if k in s]))
                  for k in SERVER_STAGES.values() if any(k in s for s in server[name])}
        out[name]["server_mean_ms"] = stages
    out["loadavg_after"] = loadavg()
    base, now = out["client_search_500"], out["search_ids_500"]
    out["ratio_client_search_over_search_ids_p50"] = base["p50_ms"] / now["p50_ms"]
    out["ratio_client_search_over_search_ids_p99"] = base["p99_ms"] / now["p99_ms"]
    out["ratio_strong_over_eventually_p50"] = out["search_ids_500_strong"]["p50_ms"] / now["p50_ms"]
    return out


def test_bench_milvus_search(tmp_path, bench_record):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(max(PINS // 100, 10), DIM))
    emb = l2(centres[rng.integers(0, len(centres), PINS)] + 0.5 * rng.normal(size=(PINS, DIM)))
    now = dt.datetime.now(dt.UTC)
    pins = write_table(EmbeddingTable(np.arange(1, PINS + 1, dtype=np.int64), emb, "v1", now, "pin_id"),
                       tmp_path / "pins.parquet")
    tiny = write_table(EmbeddingTable(np.arange(1, 11, dtype=np.int64), emb[:10], "v1", now, "pin_id"),
                       tmp_path / "tiny.parquet")
    queries = l2(emb[rng.integers(0, PINS, 1000)] + 0.3 * rng.normal(size=(1000, DIM)))  # users near the pins
    config = dict(MILVUS_CONFIG, **({"dataCoord.segment.maxSize": SEGMENT_MB} if SEGMENT_MB else {}))
    result: dict = {"pins": PINS, "dim": DIM, "rounds": ROUNDS, "batch": BATCH, "milvus_config": config}
    password = secrets.token_hex(16)  # generated for this run, never written to a committed file
    proc = start_milvus(tmp_path / "state", password, config=config)
    try:
        uri, token = proc.endpoint, f"root:{password}"
        port = metrics_port(proc.pgid)
        result["metrics_port_found"] = port is not None
        result["idle_cpu_cores_fresh"] = cpu_cores(proc.pgid, IDLE_S)
        t = time.perf_counter()
        name = mi.build_index(uri, pins, token=token, params=mi.HnswParams(insert_batch=20_000))
        result["build_s"] = time.perf_counter() - t
        mi.build_index(uri, tiny, alias="tiny", token=token)
        client = mi.connect(uri, token)
        try:
            result["segments_after_build"] = ms.query_segments(client, name)
            result["idle_cpu_cores_loaded"] = cpu_cores(proc.pgid, IDLE_S)
            result["search"] = _interleaved(client, port, queries)
            result["segments_after_search"] = ms.query_segments(client, name)
            got = ms.search_ids(client, mi.ALIAS, emb[:20], 10, 128, mi.VECTOR_FIELD)[0]
            assert (got[:, 0] == np.arange(1, 21)).mean() >= 0.9  # the index answers (a pin finds itself)
        finally:
            mi.disconnect(client, uri)
    finally:
        assert not stop_group(proc.pgid), "milvus-server left running"
    bench_record(f"milvus_search_{PINS // 1000}k" + (f"_seg{SEGMENT_MB}mb" if SEGMENT_MB else ""), result)
