"""VersionedStore, the publish contract serving relies on: safe version names, CURRENT never moved backwards by a
backfill unless asked, idempotent re-publish, keep-N, atomic CURRENT switch, a killed publisher leaves the
previous version current."""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import signal

import numpy as np
import pytest

from components.data.tables import EmbeddingTable, VersionedStore, VersionError, check_version


def _table(seed: int, n: int = 5, d: int = 4, version: str = "m1") -> EmbeddingTable:
    rng = np.random.default_rng(seed)
    return EmbeddingTable(np.arange(n, dtype=np.int64), rng.normal(size=(n, d)).astype(np.float32), version,
                          dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "user_id")


@pytest.mark.parametrize("bad", ["x/../../../escaped", "..", ".", "../x", "a/b", "", ".hidden", "v 1", "2026-13-45",
                                 "a" * 129, "x\n", "ü"])
def test_bad_version_names_are_rejected_and_nothing_is_written(tmp_path, bad):
    store = VersionedStore(tmp_path / "store")
    with pytest.raises(VersionError, match="not a valid name|not one"):
        store.publish(_table(0), bad)
    with pytest.raises(VersionError):
        store.path(bad)
    assert not (tmp_path / "escaped").exists()
    assert store.versions() == [] and store.current() is None


@pytest.mark.parametrize("good", ["2026-12-01", "20261201T093000", "v1.2_rc-3", "A"])
def test_good_version_names(good):
    assert check_version(good) == good


def test_backfill_does_not_move_current_backwards_unless_asked(tmp_path):
    store = VersionedStore(tmp_path)
    store.publish(_table(0), "2026-01-05")
    store.publish(_table(1), "2026-01-03")  # a backfill of an older date
    assert store.current() == "2026-01-05" and store.versions() == ["2026-01-03", "2026-01-05"]
    np.testing.assert_array_equal(store.read("2026-01-03").embeddings, _table(1).embeddings)
    store.publish(_table(2), "2026-01-04", set_current=True)
    assert store.current() == "2026-01-04"
    store.set_current("2026-01-05")  # move forward again / roll back explicitly
    assert store.current() == "2026-01-05"
    with pytest.raises(FileNotFoundError, match="no version '2026-01-09'"):
        store.set_current("2026-01-09")
    store.publish(_table(3), "2026-01-06", set_current=False)
    assert store.current() == "2026-01-05"


def test_republishing_a_version_replaces_it(tmp_path):
    store = VersionedStore(tmp_path)
    store.publish(_table(0), "2026-01-05")
    store.publish(_table(7, version="m2"), "2026-01-05")
    assert store.versions() == ["2026-01-05"] and store.current() == "2026-01-05"
    got = store.read()
    np.testing.assert_array_equal(got.embeddings, _table(7).embeddings)
    assert got.model_version == "m2"


def test_keep_last_n_never_drops_current(tmp_path):
    store = VersionedStore(tmp_path)
    for day in range(1, 6):
        store.publish(_table(day), f"2026-01-0{day}", keep=2)
    assert store.versions() == ["2026-01-04", "2026-01-05"]
    store.set_current("2026-01-04")
    store.publish(_table(9), "2026-01-06", keep=1, set_current=False)
    assert store.current() == "2026-01-04"
    assert "2026-01-04" in store.versions() and "2026-01-06" in store.versions()


def test_current_pointer_is_validated_on_read(tmp_path):
    store = VersionedStore(tmp_path)
    store.publish(_table(0), "2026-01-05")
    (tmp_path / "CURRENT").write_text("../../etc\n")
    with pytest.raises(VersionError, match="CURRENT"):
        store.read()


def _publish_slowly(root: str, ready) -> None:
    """Child: publish a big table (the parent SIGKILLs it midway)."""
    store = VersionedStore(root)
    big = EmbeddingTable(np.arange(400_000, dtype=np.int64), np.ones((400_000, 64), np.float32), "m2",
                         dt.datetime(2026, 1, 2, tzinfo=dt.UTC), "user_id")
    ready.set()
    for i in range(50):
        store.publish(big, f"2026-02-{i % 28 + 1:02d}")


def test_sigkilled_publisher_leaves_the_previous_version_current(tmp_path):
    store = VersionedStore(tmp_path)
    store.publish(_table(0), "2026-01-05")
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_publish_slowly, args=(str(tmp_path), ready))
    child.start()
    try:
        assert ready.wait(60)
        while not any(p.name.startswith(".embeddings.parquet") for p in tmp_path.glob("v=*/.*")):
            assert child.is_alive()  # wait until it is writing a temporary table
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.join(30)
    assert child.exitcode == -signal.SIGKILL
    cur = store.current()
    table = store.read()  # whatever CURRENT names is a complete table
    assert cur == "2026-01-05" or cur.startswith("2026-02-")
    assert len(table) in (5, 400_000)
    store.publish(_table(1), "2026-03-01")  # the next run completes (the lock died with the child)
    assert store.current() == "2026-03-01"
