"""The Milvus index against a real Milvus standalone server (the `milvus` 2.3.5 embedded-server package),
unchanged code, a URI instead of a path: build, alias switch, queries, a failed build. The server runs in its own
process group, which is ended (and checked) afterwards."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from components.inference.baseline import content_embeddings
from components.inference.tables import write_table
from components.serving import milvus_index as mi
from components.serving.triton import free_port


def _alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(d.name))
    return pids


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory):
    exe = Path(sys.executable).parent / "milvus-server"
    if not exe.exists():
        pytest.fail(f"{exe}: missing; install the dev extras (pip install -e '.[dev]': milvus==2.3.5)")
    data = tmp_path_factory.mktemp("milvus_server")
    port = free_port()
    log = open(data / "server.log", "wb")
    proc = subprocess.Popen([str(exe), "--data", str(data / "milvus"), "--proxy-port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"milvus-server exited ({proc.returncode}):\n{(data / 'server.log').read_text()[-3000:]}")
            try:
                client = mi.connect(uri)
                client.list_collections()
                client.close()
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        yield uri
    finally:
        pgid = proc.pid
        os.killpg(pgid, signal.SIGTERM)
        end = time.monotonic() + 20
        while _alive(pgid) and time.monotonic() < end:
            time.sleep(0.5)
        if _alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=30)
        time.sleep(1)
        log.close()
        left = _alive(pgid)
        shutil.rmtree(data / "milvus", ignore_errors=True)  # ~500 MB of unpacked server binaries and data
        assert left == [], f"milvus processes left running: {left}"


def test_index_against_a_milvus_server(milvus_server, tiny_data, tmp_path):
    pins, _ = content_embeddings(tiny_data)
    v1 = dataclasses.replace(pins, model_version="2024-02-01")
    rng = np.random.default_rng(1)
    e2 = rng.normal(size=pins.embeddings.shape).astype(np.float32)
    v2 = dataclasses.replace(pins, embeddings=e2 / np.linalg.norm(e2, axis=1, keepdims=True), model_version="2024-02-02")
    p1, p2 = write_table(v1, tmp_path / "v1.parquet"), write_table(v2, tmp_path / "v2.parquet")

    c1 = mi.build_index(milvus_server, p1)
    index = mi.PinIndex(milvus_server)
    ids, sims = index.search(v1.embeddings[:10], 10)
    assert (ids[:, 0] == v1.ids[:10]).all()
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-4)

    def interrupt(done, total):
        raise KeyboardInterrupt(f"killed after {done}/{total} rows")

    with pytest.raises(KeyboardInterrupt):  # a failed build: serving is untouched
        mi.build_index(milvus_server, p2, params=mi.HnswParams(insert_batch=100), on_batch=interrupt)
    assert mi.served_collection(index.client) == c1 and index.client.list_collections() == [c1]
    np.testing.assert_array_equal(index.search(v1.embeddings[:10], 10)[0], ids)

    c2 = mi.build_index(milvus_server, p2)  # the switch: queries through the alias see the new version
    assert mi.built_collections(index.client) == [c2, c1]  # the previous one kept for rollback
    assert (index.search(v2.embeddings[:10], 10)[0][:, 0] == v2.ids[:10]).all()
    assert mi.rollback(milvus_server) == (c2, c1)  # and the alias goes back to it
    assert (index.search(v1.embeddings[:10], 10)[0][:, 0] == v1.ids[:10]).all()
    index.close()
