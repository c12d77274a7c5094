"""The Milvus index against a real Milvus standalone server (the `milvus` 2.3.5 embedded-server package, started
with authorization by the session's server stack), unchanged code, a URI and a token instead of a path: build,
alias switch, queries, a failed build, rollback."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from components import stack
from components.data.baseline import content_embeddings
from components.data.tables import write_table
from components.serving import milvus_index as mi


@pytest.fixture(scope="module")
def milvus_server(server_stack, tmp_path_factory):
    """The session's Milvus server (tests/conftest.py server_stack): (uri, token, an alias of this module)."""
    cfg = stack.isolated(server_stack, "milvus_server", tmp_path_factory.mktemp("milvus_server"))
    return cfg.milvus.uri, cfg.milvus_token(), cfg.milvus.alias


def test_index_against_a_milvus_server(milvus_server, tiny_data, tmp_path):
    uri, token, alias = milvus_server
    pins, _ = content_embeddings(tiny_data)
    v1 = dataclasses.replace(pins, model_version="2024-02-01")
    rng = np.random.default_rng(1)
    e2 = rng.normal(size=pins.embeddings.shape).astype(np.float32)
    v2 = dataclasses.replace(pins, embeddings=e2 / np.linalg.norm(e2, axis=1, keepdims=True), model_version="2024-02-02")
    p1, p2 = write_table(v1, tmp_path / "v1.parquet"), write_table(v2, tmp_path / "v2.parquet")

    c1 = mi.build_index(uri, p1, alias=alias, token=token)
    index = mi.PinIndex(uri, alias, token=token)
    ids, sims = index.search(v1.embeddings[:10], 10)
    assert (ids[:, 0] == v1.ids[:10]).all()
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-4)

    def interrupt(done, total):
        raise KeyboardInterrupt(f"killed after {done}/{total} rows")

    with pytest.raises(KeyboardInterrupt):  # a failed build: serving is untouched
        mi.build_index(uri, p2, alias=alias, token=token, params=mi.HnswParams(insert_batch=100), on_batch=interrupt)
    assert mi.served_collection(index.client, alias) == c1 and mi.built_collections(index.client, alias) == [c1]
    np.testing.assert_array_equal(index.search(v1.embeddings[:10], 10)[0], ids)

    c2 = mi.build_index(uri, p2, alias=alias, token=token)  # the switch: queries through the alias see the new version
    assert mi.built_collections(index.client, alias) == [c2, c1]  # the previous one kept for rollback
    assert (index.search(v2.embeddings[:10], 10)[0][:, 0] == v2.ids[:10]).all()
    assert mi.rollback(uri, alias, token=token) == (c2, c1)  # and the alias goes back to it
    assert (index.search(v1.embeddings[:10], 10)[0][:, 0] == v1.ids[:10]).all()
    index.close()
