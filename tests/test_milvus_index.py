"""Milvus Lite for real: versioned collections behind the `pins` alias, HNSW cosine, atomic switch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from components.data.baseline import content_embeddings
from components.data.tables import write_table
from components.serving import milvus_index as mi


@pytest.fixture(scope="module")
def tables(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("milvus")
    pins, _ = content_embeddings(tiny_data)
    v1 = dataclasses.replace(pins, model_version="2024-02-01")
    rng = np.random.default_rng(0)
    e2 = rng.normal(size=pins.embeddings.shape).astype(np.float32)
    v2 = dataclasses.replace(pins, embeddings=e2 / np.linalg.norm(e2, axis=1, keepdims=True), model_version="2024-02-02")
    return {"root": root, "v1": v1, "p1": write_table(v1, root / "v1.parquet"), "v2": v2,
            "p2": write_table(v2, root / "v2.parquet")}


def _exact(table, queries, k):
    sims = queries @ table.embeddings.T
    return table.ids[np.argsort(-sims, axis=1)[:, :k]]


def test_build_switch_and_keep_previous(tables):
    uri = str(tables["root"] / "a.db")
    c1 = mi.build_index(uri, tables["p1"])
    index = mi.PinIndex(uri)
    assert index.dim() == tables["v1"].dim
    q = tables["v1"].embeddings[:20]
    ids, sims = index.search(q, 10)
    assert (ids[:, 0] == tables["v1"].ids[:20]).all()  # a pin is its own nearest neighbour
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-4)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, _exact(tables["v1"], q, 10))])
    assert recall >= 0.9
    assert mi.build_index(uri, tables["p1"]) == c1  # same content: nothing rebuilt
    index.client.release_collection(c1)  # as a fresh process finds it on Milvus Lite
    reopened = mi.PinIndex(uri)
    np.testing.assert_array_equal(reopened.search(q, 10)[0], ids)
    c2 = mi.build_index(uri, tables["p2"])
    assert c2 != c1 and "2024_02_02" in c2
    assert mi.built_collections(index.client) == [c2, c1]  # the previous collection kept (released) for rollback
    ids2, _ = index.search(tables["v2"].embeddings[:20], 10)  # the same client, through the alias
    assert (ids2[:, 0] == tables["v2"].ids[:20]).all()
    index.close()


def test_create_index_survives_the_clients_retry_of_a_slow_call(tables):
    """pymilvus retries a create_index call that outlived its deadline while the server went on creating the
    index; the retry's "index already exists" is success when the index is there (it lost a 100k-pin build
    under load). Any other failure still raises."""
    uri = str(tables["root"] / "retry.db")
    name = mi.build_index(uri, tables["p1"])
    client = mi.connect(uri, None)
    try:
        index = client.prepare_index_params()
        index.add_index(field_name=mi.VECTOR_FIELD, index_type="HNSW", metric_type="COSINE",
                        params={"M": 8, "efConstruction": 64})
        with pytest.raises(mi.MilvusException, match="already exist"):
            client.create_index(name, index)  # what the retry meets
        mi._create_index(client, name, index)  # ... and what build_index makes of it
        with pytest.raises(mi.MilvusException):
            mi._create_index(client, "no_such_collection", index)
    finally:
        mi.disconnect(client, uri)


def test_failed_build_never_disturbs_serving(tables):
    uri = str(tables["root"] / "b.db")
    c1 = mi.build_index(uri, tables["p1"])
    index = mi.PinIndex(uri)
    before, _ = index.search(tables["v1"].embeddings[:5], 10)

    def interrupt(done, total):
        raise KeyboardInterrupt(f"killed after {done}/{total} rows")

    with pytest.raises(KeyboardInterrupt):
        mi.build_index(uri, tables["p2"], params=mi.HnswParams(insert_batch=100), on_batch=interrupt)
    assert mi.served_collection(index.client, "pins") == c1
    assert index.client.list_collections() == [c1]  # the half-built collection is gone
    after, _ = index.search(tables["v1"].embeddings[:5], 10)
    np.testing.assert_array_equal(before, after)
    index.close()


def test_bad_tables_are_refused_with_the_file_name(tables, tmp_path):
    empty = dataclasses.replace(tables["v1"], ids=tables["v1"].ids[:0], embeddings=tables["v1"].embeddings[:0])
    path = write_table(empty, tmp_path / "empty.parquet")
    with pytest.raises(mi.MilvusIndexError, match="empty.parquet"):
        mi.build_index(str(tmp_path / "c.db"), path)
    with pytest.raises(mi.MilvusIndexError, match="no collection behind alias"):
        mi.PinIndex(str(tmp_path / "d.db"))


def test_index_build_cli_reports_errors_plainly(tables, tmp_path, capsys):
    from components import cli

    uri = str(tmp_path / "e.db")
    assert cli.main(["index", "build", "--uri", uri, "--embeddings", str(tmp_path / "missing.parquet")]) == 2
    assert "missing.parquet: embedding table not found" in capsys.readouterr().err
    assert cli.main(["index", "build", "--uri", uri, "--embeddings", str(tables["p1"])]) == 0
    assert "alias 'pins' -> pins_2024_02_01_" in capsys.readouterr().out


def test_closing_releases_the_milvus_lite_file_for_another_process(tables):
    """Milvus Lite is single-process: a closed index must let the next pipeline step (a new process) in."""
    import subprocess
    import sys

    uri = str(tables["root"] / "handoff.db")
    mi.build_index(uri, tables["p1"])
    index = mi.PinIndex(uri)
    ids, _ = index.search(tables["v1"].embeddings[:2], 3)
    index.close()
    code = ("import sys; from components.serving import milvus_index as mi; "
            "print(mi.build_index(sys.argv[1], sys.argv[2]))")
    proc = subprocess.run([sys.executable, "-c", code, uri, str(tables["p2"])], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    index = mi.PinIndex(uri)  # and this process can open it again afterwards
    try:
        assert mi.served_collection(index.client) == proc.stdout.strip().splitlines()[-1]
    finally:
        index.close()


def _version(table, i: int, seed: int):
    e = np.random.default_rng(seed).normal(size=table.embeddings.shape).astype(np.float32)
    return dataclasses.replace(table, embeddings=e / np.linalg.norm(e, axis=1, keepdims=True),
                               model_version=f"2024-03-0{i}")


def test_keep_last_n_and_rollback(tables, tmp_path):
    uri = str(tmp_path / "keep.db")
    versions = [_version(tables["v1"], i, seed=10 + i) for i in range(1, 5)]
    names = [mi.build_index(uri, write_table(v, tmp_path / f"v{i}.parquet"), keep=2, params=mi.HnswParams(m=8))
             for i, v in enumerate(versions)]
    served, kept = mi.list_index(uri)
    assert served == names[-1] and kept == [names[3], names[2]]  # keep=2: the served one and the one before
    prev, now = mi.rollback(uri)  # back to the previous build; queries through the alias see it
    assert (prev, now) == (names[3], names[2])
    index = mi.PinIndex(uri)
    try:
        assert (index.search(versions[2].embeddings[:5], 3)[0][:, 0] == versions[2].ids[:5]).all()
    finally:
        index.close()
    with pytest.raises(mi.MilvusIndexError, match="no older collection is kept"):
        mi.rollback(uri)  # names[2] is the oldest kept
    with pytest.raises(mi.MilvusIndexError, match=f"'{names[0]}' is not a kept collection"):
        mi.rollback(uri, to=names[0])  # dropped by keep=2
    assert mi.rollback(uri, to=names[3]) == (names[2], names[3])  # forward again, by name
    from components import cli

    assert cli.main(["index", "rollback", "--uri", uri]) == 0
    assert mi.list_index(uri)[0] == names[2]
