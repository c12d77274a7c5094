"""The recommend path's Milvus search (components/serving/milvus_search.py), for real on Milvus Lite and on the Milvus
2.3.5 server of the session's stack: the hits read off the response equal pymilvus' own search at every consistency
level; the build moves the alias only once every row is served from an indexed sealed segment; the consistency level
comes from the stack file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from components import stack
from components.data.baseline import content_embeddings
from components.data.tables import write_table
from components.serving import milvus_index as mi
from components.serving import milvus_search as ms
from components.serving.recommend import RecommendConfig
from components.stack.milvus_server import MILVUS_CONFIG
from components.stackconfig import StackConfigError, load_stack, parse_stack, to_dict


@pytest.fixture(scope="module")
def pins(tiny_data, tmp_path_factory):
    table, _ = content_embeddings(tiny_data)
    table = dataclasses.replace(table, model_version="2024-03-01")
    return table, write_table(table, tmp_path_factory.mktemp("milvus_search") / "pins.parquet")


def _client_search(client, alias: str, queries: np.ndarray, k: int, ef: int, consistency: str):
    """pymilvus' own MilvusClient.search, the reference."""
    res = client.search(alias, data=queries.tolist(), limit=k, anns_field=mi.VECTOR_FIELD, output_fields=[],
                        search_params=ms.search_params(ef), consistency_level=consistency)
    return np.asarray([h.ids for h in res], np.int64), np.asarray([h.distances for h in res], np.float32)


def _same_hits(client, alias: str, table, k: int) -> None:
    queries = table.embeddings[:20]
    for level in ms.CONSISTENCY_LEVELS:
        ids, sims = ms.search_ids(client, alias, queries, k, max(128, k), mi.VECTOR_FIELD, level)
        want_ids, want_sims = _client_search(client, alias, queries, k, max(128, k), level)
        assert ids.shape == sims.shape == (20, k)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(sims, want_sims, rtol=1e-6)
        assert (ids[:, 0] == table.ids[:20]).all()  # every row is visible: a pin is its own nearest neighbour


def test_hits_equal_the_clients_search_on_milvus_lite(pins, tmp_path):
    table, path = pins
    uri = str(tmp_path / "m.db")
    mi.build_index(uri, path)
    index = mi.PinIndex(uri)
    try:
        _same_hits(index.client, mi.ALIAS, table, 50)
        ids, sims = index.search(table.embeddings[:3], len(table) + 5)  # more than the collection holds
        assert (ids[:, len(table):] == -1).all() and np.isnan(sims[:, len(table):]).all()
        assert (ids[:, :len(table)] > 0).all()
        with pytest.raises(ValueError, match="'Sometimes' is not one of Strong, Bounded, Eventually"):
            ms.search_ids(index.client, mi.ALIAS, table.embeddings[:1], 5, 16, mi.VECTOR_FIELD, "Sometimes")
    finally:
        index.close()
    with pytest.raises(mi.MilvusIndexError, match="consistency: 'Sometimes'"):
        mi.PinIndex(uri, consistency="Sometimes")


def test_the_consistency_level_comes_from_the_stack_file(tmp_path):
    assert load_stack("server").milvus.consistency == "Eventually"  # the default: see milvus_search's docstring
    cfg = load_stack("local")
    raw = to_dict(cfg)
    raw["milvus"]["consistency"] = "Bounded"
    bounded = parse_stack(raw, "s.yaml")
    assert bounded.milvus.consistency == "Bounded"
    assert RecommendConfig.from_stack(bounded, preprocess=tmp_path).milvus_consistency == "Bounded"
    raw["milvus"]["consistency"] = "Session"
    with pytest.raises(StackConfigError, match="milvus.consistency: 'Session' is not one of Strong, Bounded, Eventually"):
        parse_stack(raw, "s.yaml")


@pytest.fixture(scope="module")
def server(server_stack, tmp_path_factory):
    cfg = stack.isolated(server_stack, "milvus_search", tmp_path_factory.mktemp("milvus_search_server"))
    return cfg.milvus.uri, cfg.milvus_token(), cfg.milvus.alias, Path(server_stack.source).parent


def test_the_server_serves_the_built_collection_from_indexed_sealed_segments(server, pins, tmp_path):
    uri, token, alias, state = server
    # more rows than Milvus' threshold for indexing a segment (ms.MIN_INDEXED_ROWS): the index is built and served
    e = np.random.default_rng(3).normal(size=(3000, 32)).astype(np.float32)
    table = dataclasses.replace(pins[0], ids=np.arange(1, 3001, dtype=np.int64),
                                embeddings=e / np.linalg.norm(e, axis=1, keepdims=True))
    path = write_table(table, tmp_path / "pins3k.parquet")
    name = mi.build_index(uri, path, alias=alias, token=token)
    client = mi.connect(uri, token)
    try:
        # what build_index waited for before the switch: every row in a sealed segment that carries the index
        segments = ms.query_segments(client, name)
        assert sum(s["rows"] for s in segments) == len(table)
        assert all(s["state"] == "Sealed" and s["index"] for s in segments), segments
        assert ms.served_from_index(segments, len(table))
        assert not ms.served_from_index(segments, len(table) + 1)
        assert not ms.served_from_index([{**segments[0], "state": "Growing", "index": ""}], segments[0]["rows"])
        assert not ms.served_from_index([{**segments[0], "index": ""}], segments[0]["rows"])  # 3000 rows: indexable
        assert ms.served_from_index([{"id": 1, "rows": 800, "state": "Sealed", "index": ""}], 800)  # too small
        with pytest.raises(ms.MilvusSearchError, match=f"collection {name}: the query node still serves"):
            ms.wait_until_served(client, name, len(table) + 1, timeout_s=1, poll_s=0.2)
        _same_hits(client, alias, table, 100)
    finally:
        mi.disconnect(client, uri)
    # the stack started its Milvus with the settings of components.stack.milvus_server.MILVUS_CONFIG
    written = (state / "milvus" / "configs" / "milvus.yaml").read_text()
    assert "maxSize: 2048 # Maximum size of a segment in MB" in written
    assert MILVUS_CONFIG["dataCoord.segment.maxSize"] == "2048"
