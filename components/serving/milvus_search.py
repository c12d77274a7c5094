"""The Milvus read path of the recommend service, and what the served collection looks like inside the server.

Why each piece (measured with ``tests/bench/bench_milvus_search.py`` on the Milvus 2.3.5 server; docs/service.md):

- **Consistency.** A search names its consistency level. pymilvus 3.0.2 creates collections ``Bounded`` and, with
  no level given, asks the server to use the collection's. Milvus 2.3.5 turns the level into a guarantee
  timestamp the query node waits for before it searches: ``Strong`` = now (every search waits for the next time
  tick: ~200 ms per search, 16x an Eventually one at 100k pins), ``Bounded`` = now - ``common.gracefulTime`` (5 s: no wait
  unless the query node's serviceable time lags 5 s behind, as it can on a loaded machine), ``Eventually`` = no
  wait at all. The pin index is written once, by ``build_index``, into a new collection that is flushed, indexed,
  loaded and counted before the alias points at it, and never written again: there is no newer write a search
  could wait for, so ``Eventually`` returns the same rows as ``Strong`` without ever waiting (the default,
  ``milvus.consistency`` in the stack file).
- **The response.** pymilvus' ``MilvusClient.search`` turns every hit into a ``Hit`` dict (and an entity dict)
  before returning; reading them back hit by hit made the recommend path's 500 candidates 7.3 ms of client Python
  per request at load ~4 (15-20 ms at load ~10), a third of the request at 100k pins.
  :func:`search_ids` sends the same request through the same client connection (its channel carries the token)
  and reads ids and scores straight off the response message into arrays. It uses pymilvus' request builder
  and the connection's stub, pinned with pymilvus==3.0.2; ``tests/test_milvus_search.py`` checks it against
  ``MilvusClient.search`` on Milvus Lite and the server.
- **No output fields.** The primary key comes back with every hit anyway; asking for it as an output field adds
  a per-hit field column on the server and in the response.
- **Segments.** A collection is fast to search when its rows sit in sealed segments that carry the HNSW index.
  Milvus 2.3 serves flushed segments whose index is not built yet from the message stream as growing segments
  (brute force / a small interim IVF index) until the index is done, then swaps them; :func:`query_segments`
  reports what the query node holds, and :func:`wait_until_served` lets ``build_index`` move the alias only
  once every row is served from an indexed sealed segment.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pymilvus.client import ts_utils
from pymilvus.client.prepare import Prepare
from pymilvus.client.utils import check_status
from pymilvus.grpc_gen import common_pb2

CONSISTENCY_LEVELS = ("Strong", "Bounded", "Eventually")


class MilvusSearchError(RuntimeError):
    """A search or a segment wait that went wrong, naming the collection."""


def search_params(ef: int) -> dict[str, Any]:
    return {"metric_type": "COSINE", "params": {"ef": int(ef)}}


def search_ids(client, collection: str, vectors: np.ndarray, k: int, ef: int, field: str,
               consistency: str = "Eventually", timeout: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` per query vector: ``(ids (Q, k) int64, similarities (Q, k) float32)``, -1 / NaN past the hits.

    ``collection`` may be an alias; ``ef`` is sent as given (HNSW needs ef >= k: the caller's rule)."""
    if consistency not in CONSISTENCY_LEVELS:
        raise ValueError(f"consistency: '{consistency}' is not one of {', '.join(CONSISTENCY_LEVELS)}")
    vectors = np.atleast_2d(np.asarray(vectors, np.float32))  # (Q, D)
    conn = client._get_connection()  # the client's GrpcHandler: one channel, token interceptor included
    kwargs: dict[str, Any] = {"consistency_level": consistency}
    ts_utils.construct_guarantee_ts(collection, kwargs)  # the level's guarantee timestamp, as pymilvus sets it
    request = Prepare.search_requests_with_expr(collection_name=collection, anns_field=field, param=search_params(ef),
                                                limit=k, data=vectors.tolist(), expr="", output_fields=[],
                                                use_default_consistency=False, **kwargs)
    response = conn._stub.Search(request, timeout=timeout)
    check_status(response.status)
    res = response.results
    ids = np.full((len(vectors), k), -1, np.int64)  # (Q, k)
    sims = np.full((len(vectors), k), np.nan, np.float32)  # (Q, k)
    all_ids = np.asarray(res.ids.int_id.data, np.int64)  # (sum of topks,)
    all_sims = np.asarray(res.scores, np.float32)
    start = 0
    for q, n in enumerate(res.topks):
        n = min(int(n), k)
        ids[q, :n], sims[q, :n] = all_ids[start:start + n], all_sims[start:start + n]
        start += int(res.topks[q])
    return ids, sims


def query_segments(client, collection: str) -> list[dict[str, Any]]:
    """The segments the Milvus server's query node serves for ``collection``: ``[{"id", "rows", "state",
    "index"}]`` (state ``Sealed`` / ``Growing``; index: the index name, "" for none). A server call: Milvus Lite
    does not implement it."""
    infos = client._get_connection().get_query_segment_info(collection)
    return [{"id": int(i.segmentID), "rows": int(i.num_rows), "state": common_pb2.SegmentState.Name(i.state),
             "index": i.index_name} for i in infos]


# Milvus builds no index for a sealed segment under this many rows (indexCoord.segment.minSegmentNumRowsToEnableIndex,
# 1024 in 2.3.5): such a segment is searched brute force, which at that size costs less than a graph walk
MIN_INDEXED_ROWS = 1024


def served_from_index(segments: list[dict[str, Any]], rows: int) -> bool:
    """Every one of ``rows`` rows is in a sealed segment that carries an index (or is too small for one)."""
    return (sum(s["rows"] for s in segments) == rows
            and all(s["state"] in ("Sealed", "Flushed") and (s["index"] or s["rows"] < MIN_INDEXED_ROWS)
                    for s in segments))


def wait_until_served(client, collection: str, rows: int, timeout_s: float = 600.0,
                      poll_s: float = 0.5) -> list[dict[str, Any]]:
    """Wait until the Milvus server's query node serves all ``rows`` of ``collection`` from indexed sealed
    segments; returns the segments."""
    deadline = time.monotonic() + timeout_s
    while True:
        segments = query_segments(client, collection)
        if served_from_index(segments, rows):
            return segments
        if time.monotonic() > deadline:
            raise MilvusSearchError(f"collection {collection}: the query node still serves {segments} after "
                                    f"{timeout_s:.0f} s; expected {rows} rows in indexed sealed segments")
        time.sleep(poll_s)
