"""The Milvus pin index: one collection per pin-embedding version, served through an alias.

``build_index`` creates a new collection named after the table's version and content, inserts the
embeddings, flushes them, builds an HNSW index (cosine) and waits for it, loads the collection, waits until the
query node serves every row from an indexed sealed segment (``milvus_search.wait_until_served``: a search right
after the switch is as fast as one a day later), counts the rows, and only then points the alias (``pins``) at
it with one ``alter_alias`` (``create_alias`` the first time); the previous collection keeps serving until
that switch. The newest ``keep`` collections (the stack's ``milvus.keep_collections``) stay after the
switch (released from memory, except the served one) so that ``rollback`` can point the alias back at
one; older ones are dropped. A build that fails midway drops its own half-built collection and leaves
the alias untouched, so queries (which always go through the alias) never notice.

A server with authorization takes a token (``user:password``, the stack's ``milvus.token``); a refused
token is a MilvusIndexError naming the server.

Works against any Milvus URI: a local path is Milvus Lite (the default), ``http://host:19530`` a
Milvus server. Milvus Lite builds the index in the background after ``flush()`` and searches brute
force until then; ``wait_for_index`` waits for it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from milvus_lite.server_manager import server_manager_instance
from pymilvus import DataType, MilvusClient, MilvusException

from components.data.tables import EmbeddingTable, read_table
from components.serving.feast_store import table_path
from components.serving.milvus_search import CONSISTENCY_LEVELS, search_ids, wait_until_served

ALIAS = "pins"
ID_FIELD = "pin_id"
VECTOR_FIELD = "embedding"


class MilvusIndexError(RuntimeError):
    """A Milvus index problem, naming the URI, collection or alias."""


@dataclass
class HnswParams:
    m: int = 16
    ef_construction: int = 200
    ef_search: int = 128  # at query time: max(ef_search, limit)
    insert_batch: int = 10_000


def _lite_path(uri: str | Path) -> str | None:
    uri = str(uri)
    return None if "://" in uri else os.path.abspath(uri)


class _LiteStartErrors(logging.Filter):
    """Keeps milvus_lite's own traceback ("Failed to start MilvusLite server", logged by its server manager) off
    stderr while :func:`connect` opens a file, and keeps the reason, so that connect raises one clear error."""

    def __init__(self) -> None:
        super().__init__()
        self.reasons: list[BaseException] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            self.reasons.append(record.exc_info[1])
        return False


log = logging.getLogger(__name__)
_LITE_LOG = logging.getLogger("milvus_lite.server_manager")
_LITE_OPEN: dict[str, int] = {}  # Milvus Lite file -> clients open on it in this process
_LITE_LOCK = threading.Lock()


def connect(uri: str | Path, token: str | None = None):
    """A MilvusClient for ``uri`` (a local file path -> Milvus Lite), with ``token`` for a server with
    authorization. Close it with :func:`disconnect`."""
    path = _lite_path(uri)
    lite_errors = _LiteStartErrors()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        _LITE_LOG.addFilter(lite_errors)
    try:
        client = MilvusClient(uri=str(uri), token=token or "")
    except MilvusException as e:
        if any(type(r).__name__ == "DataDirLockedError" for r in lite_errors.reasons):
            raise MilvusIndexError(f"{path}: the Milvus Lite database is held by another process (Milvus Lite is "
                                   "single-process: a running `homefeed serve recommend` or pipeline step keeps it "
                                   "open); stop that process, or serve from a Milvus server (the `server` stack "
                                   "profile)") from None
        if lite_errors.reasons:
            raise MilvusIndexError(f"Milvus Lite at {path}: cannot open: {lite_errors.reasons[-1]}") from None
        # pymilvus reports a refused token as a generic connection failure: a server that accepts TCP
        # connections but not this client is an authentication failure
        if _is_auth_error(e) or (path is None and _reachable(str(uri))):
            raise MilvusIndexError(f"Milvus at {uri}: authentication failed: the server is up but refused the "
                                   f"{'token' if token else 'connection without a token'} (check milvus.token): "
                                   f"{e.message}") from None
        raise MilvusIndexError(f"Milvus at {uri}: cannot connect: {e.message}") from None
    finally:
        _LITE_LOG.removeFilter(lite_errors)
    if path is not None:
        with _LITE_LOCK:
            _LITE_OPEN[path] = _LITE_OPEN.get(path, 0) + 1
    return client


def disconnect(client, uri: str | Path) -> None:
    """Close a client made by :func:`connect`; the last one on a Milvus Lite file also stops this process's
    embedded server for it.

    Milvus Lite is single-process: its file lock is held until the embedded server stops, not when a
    client closes, so without this a later pipeline step (another process) could not open the file.
    """
    try:
        client.close()
    finally:
        path = _lite_path(uri)
        if path is not None:
            with _LITE_LOCK:
                left = _LITE_OPEN.get(path, 1) - 1
                if left > 0:
                    _LITE_OPEN[path] = left
                else:
                    _LITE_OPEN.pop(path, None)
            if left <= 0:
                server_manager_instance.release_server(path)


def _reachable(uri: str) -> bool:
    parts = urllib.parse.urlsplit(uri)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 19530), timeout=2):
            return True
    except OSError:
        return False


def _is_auth_error(e: Exception) -> bool:
    text = str(getattr(e, "message", "") or e).lower()
    return getattr(e, "code", None) in (1800, 2) and ("auth" in text or "password" in text or "credential" in text) \
        or "authenticat" in text or "incorrect password" in text


BUILT_AT = "homefeed.built_at"  # collection property: the build time (unix s) of a collection build_index made


def built_collections(client, alias: str = ALIAS) -> list[str]:
    """The collections ``build_index`` made for ``alias``, newest first (by their build-time property)."""
    found = []
    for name in client.list_collections():
        if not name.startswith(f"{alias}_"):
            continue
        built = (client.describe_collection(name).get("properties") or {}).get(BUILT_AT)
        if built is not None:
            found.append((float(built), name))
    return [name for _, name in sorted(found, reverse=True)]


def collection_name(table: EmbeddingTable, prefix: str = ALIAS) -> str:
    """``<prefix>_<version>_<content hash>``: one collection per version (and per content)."""
    h = hashlib.sha1(np.ascontiguousarray(table.ids, np.int64).tobytes())
    h.update(np.ascontiguousarray(table.embeddings, np.float32).tobytes())
    version = re.sub(r"[^0-9A-Za-z_]", "_", table.model_version or "v")[:40]
    return f"{prefix}_{version}_{h.hexdigest()[:10]}"


def served_collection(client, alias: str = ALIAS) -> str | None:
    """The collection ``alias`` points at, or None."""
    if alias not in (client.list_aliases() or {}).get("aliases", []):
        return None
    return client.describe_alias(alias=alias).get("collection_name")


def build_index(uri: str | Path, embeddings_path: str | Path, alias: str = ALIAS, params: HnswParams | None = None,
                on_batch: Callable[[int, int], None] | None = None, wait: bool = True, keep: int = 3,
                token: str | None = None) -> str:
    """Index the embedding table at ``embeddings_path`` and switch ``alias`` to it; return the collection.

    ``on_batch(inserted, total)`` is called after each inserted batch (progress). If the same content
    is already served, nothing is rebuilt. ``keep``: collections kept after the switch (>= 1, the served
    one included).
    """
    if keep < 1:
        raise MilvusIndexError(f"keep must be >= 1 (the served collection), got {keep}")
    params = params or HnswParams()
    table = read_table(table_path(embeddings_path))
    if len(table) == 0:
        raise MilvusIndexError(f"{embeddings_path}: embedding table is empty; refusing to index it")
    if not np.isfinite(table.embeddings).all():
        raise MilvusIndexError(f"{embeddings_path}: embeddings contain NaN or infinite values")
    client = connect(uri, token)
    name = collection_name(table, alias)
    old = served_collection(client, alias)
    if old == name:
        disconnect(client, uri)
        return name
    if client.has_collection(name):
        client.drop_collection(name)  # left over from a failed build: never served
    try:
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ID_FIELD, DataType.INT64, is_primary=True)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=table.dim)
        index = client.prepare_index_params()
        index.add_index(field_name=VECTOR_FIELD, index_type="HNSW", metric_type="COSINE",
                        params={"M": params.m, "efConstruction": params.ef_construction})
        client.create_collection(name, schema=schema, properties={BUILT_AT: f"{time.time():.6f}"})
        n = len(table)
        for s in range(0, n, params.insert_batch):
            e = min(n, s + params.insert_batch)
            rows = [{ID_FIELD: int(i), VECTOR_FIELD: v} for i, v in zip(table.ids[s:e], table.embeddings[s:e].tolist())]
            client.insert(name, rows)
            if on_batch is not None:
                on_batch(e, n)
        client.flush(name)
        _create_index(client, name, index)
        if wait:  # index first, then load: a flushed segment loaded before its index is served brute force
            wait_for_index(client, name, n)
        client.load_collection(name)
        if wait and _lite_path(uri) is None:  # a server: every row served from an indexed sealed segment first
            wait_until_served(client, name, n)
        # Strong: the count sees every insert (the build's own reads may wait for a time tick; serving never does)
        count = client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")[0]["count(*)"]
        if count != n:
            raise MilvusIndexError(f"{uri}: collection {name} holds {count} rows after insert, expected {n}")
        if old is None:
            client.create_alias(name, alias)
        else:
            client.alter_alias(name, alias)
    except BaseException:
        try:
            if served_collection(client, alias) != name and client.has_collection(name):
                client.drop_collection(name)
        finally:
            disconnect(client, uri)
        raise
    try:
        prune(client, alias, keep)
    finally:
        disconnect(client, uri)
    return name


def prune(client, alias: str, keep: int) -> list[str]:
    """Drop all but the newest ``keep`` collections of ``alias`` (never the served one); release the kept
    ones that are not served. Returns the dropped names."""
    served = served_collection(client, alias)
    built = built_collections(client, alias)
    kept = ([served] if served else []) + [c for c in built if c != served][:max(keep - 1, 0)]
    dropped = [c for c in built if c not in kept]
    for c in dropped:
        client.drop_collection(c)
    for c in kept:
        if c != served:
            client.release_collection(c)
    return dropped


def list_index(uri: str | Path, alias: str = ALIAS, token: str | None = None) -> tuple[str | None, list[str]]:
    """(the served collection, the kept collections newest first)."""
    client = connect(uri, token)
    try:
        return served_collection(client, alias), built_collections(client, alias)
    finally:
        disconnect(client, uri)


def rollback(uri: str | Path, alias: str = ALIAS, to: str | None = None, token: str | None = None) -> tuple[str, str]:
    """Point ``alias`` back at a kept collection: ``to``, or the newest one built before the served one.
    The target is loaded before the switch. Returns (previous, now served)."""
    client = connect(uri, token)
    try:
        served = served_collection(client, alias)
        if served is None:
            raise MilvusIndexError(f"{uri}: no collection behind alias '{alias}'; nothing to roll back")
        built = built_collections(client, alias)
        if to is None:
            older = built[built.index(served) + 1:] if served in built else [c for c in built if c != served]
            if not older:
                raise MilvusIndexError(f"{uri}: alias '{alias}' serves {served} and no older collection is kept "
                                       f"(kept: {', '.join(built) or 'none'})")
            to = older[0]
        elif to not in built:
            raise MilvusIndexError(f"{uri}: collection '{to}' is not a kept collection of alias '{alias}'; kept: "
                                   f"{', '.join(built) or 'none'}")
        if to == served:
            return served, to
        client.load_collection(to)
        client.alter_alias(to, alias)
        client.release_collection(served)
        return served, to
    finally:
        disconnect(client, uri)


def _create_index(client, collection: str, index) -> None:
    """``create_index``, surviving pymilvus' retry of its own slow call: on a loaded machine the first call can
    outlive the RPC deadline while the server goes on creating the index, and the retry then fails with "index
    already exists" (seen at 100k pins under load): that error is success when the collection has the index."""
    try:
        client.create_index(collection, index)
    except MilvusException as e:
        if "already exist" not in str(e) or not client.list_indexes(collection, field_name=VECTOR_FIELD):
            raise
        log.info("collection %s: create_index was retried after the index was created; using it", collection)


def wait_for_index(client, collection: str, rows: int, timeout_s: float = 600.0) -> None:
    """Wait until the vector index covers every row (Milvus builds it in the background)."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = client.describe_index(collection, VECTOR_FIELD) or {}
        indexed = int(info.get("indexed_rows", rows))
        if info.get("state") == "Finished" or indexed >= rows:
            return
        if info.get("state") == "Failed":
            raise MilvusIndexError(f"collection {collection}: index build failed: {info.get('index_state_fail_reason')}")
        if time.monotonic() > deadline:
            raise MilvusIndexError(f"collection {collection}: index covers {indexed}/{rows} rows after {timeout_s:.0f} s")
        time.sleep(0.2)


class PinIndex:
    """Queries through the alias: ``search(vectors, k) -> (ids (Q, k), similarities (Q, k))``.

    Each search names ``consistency`` (default ``Eventually``: the served collection is never written after the
    alias moved to it, so no search has a newer write to wait for) and reads the hits off the response message
    (:func:`components.serving.milvus_search.search_ids`; why: that module's docstring)."""

    def __init__(self, uri: str | Path, alias: str = ALIAS, ef_search: int = 128, token: str | None = None,
                 consistency: str = "Eventually"):
        if consistency not in CONSISTENCY_LEVELS:
            raise MilvusIndexError(f"consistency: '{consistency}' is not one of {', '.join(CONSISTENCY_LEVELS)}")
        self.uri, self.alias, self.ef_search, self.consistency = str(uri), alias, ef_search, consistency
        self.client = connect(uri, token)
        collection = served_collection(self.client, alias)
        if collection is None:
            disconnect(self.client, uri)
            raise MilvusIndexError(f"{uri}: no collection behind alias '{alias}'; run `homefeed index build` first")
        # Milvus Lite does not keep a collection loaded across processes; loading a loaded one is a no-op
        if "Loaded" not in str(self.client.get_load_state(collection).get("state")):
            self.client.load_collection(collection)

    def dim(self) -> int:
        info = self.client.describe_collection(self.alias)
        field = next(f for f in info["fields"] if f["name"] == VECTOR_FIELD)
        return int(field["params"]["dim"])

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return search_ids(self.client, self.alias, vectors, k, max(self.ef_search, k), VECTOR_FIELD, self.consistency)

    def close(self) -> None:
        disconnect(self.client, self.uri)
