"""The daily incremental user job: only active users, merge with yesterday, idempotent, atomic under kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components import config
from components.cli import main as cli_main
from components.data import io
from components.data.baseline import content_embeddings
from components.data.tables import EmbeddingTable, VersionedStore, write_table
from components.inference.users import (
    embed_active_users,
    embed_pin_tower,
    embed_users,
    model_digest,
    publish_users,
    retrained_users,
)
from components.training.pinnerformer import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pf_users")
    pins, _ = content_embeddings(tiny_data)
    pin_path = write_table(pins, root / "pins.parquet")
    train(config.load("pinnerformer_tiny", {"max_steps": 5, "epochs": 1}), tiny_data, pin_path, root / "model",
          evaluate=False)
    return root / "model", pin_path


def _days(data_dir: Path) -> list[str]:
    return io.partitions(data_dir, "events")



def test_since_embeds_every_user_active_in_the_range_in_one_pass(tiny_data, trained, tmp_path):
    model_dir, pins = trained
    days = _days(tiny_data)
    d0, d1, d2 = days[18], days[20], days[21]
    out = tmp_path / "emb"
    embed_users(model_dir, tiny_data, pins, out, d2, since=d0)
    table = VersionedStore(out / "users").read(d2)
    active = np.unique(np.concatenate([pq.read_table(io.partition_path(tiny_data, "events", d)).column("user_id")
                                       .to_numpy() for d in days if d0 <= d <= d2]))
    np.testing.assert_array_equal(table.ids, active)
    # each user is embedded from their history up to the end of d2: the same as a daily run of d2 for them
    daily = tmp_path / "daily"
    embed_users(model_dir, tiny_data, pins, daily, d2)
    t2 = VersionedStore(daily / "users").read(d2)
    e_since, _ = table.lookup(t2.ids)
    np.testing.assert_allclose(e_since, t2.embeddings, atol=1e-6)
    with pytest.raises(ValueError, match="after --date"):
        embed_users(model_dir, tiny_data, pins, tmp_path / "bad", d1, since=d2)


def test_daily_incremental_merge_and_idempotence(tiny_data, trained, tmp_path):
    model_dir, pins = trained
    d1, d2 = _days(tiny_data)[20:22]
    out = tmp_path / "emb"
    store = VersionedStore(out / "users")
    embed_users(model_dir, tiny_data, pins, out, d1)
    t1 = store.read(d1)
    active1 = np.unique(pq.read_table(io.partition_path(tiny_data, "events", d1)).column("user_id").to_numpy())
    np.testing.assert_array_equal(t1.ids, active1)  # day 1 of an empty store: exactly the active users
    assert np.allclose(np.linalg.norm(t1.embeddings, axis=1), 1, atol=1e-4)
    embed_users(model_dir, tiny_data, pins, out, d2)
    assert store.current() == d2
    t2 = store.read(d2)
    active2 = np.unique(pq.read_table(io.partition_path(tiny_data, "events", d2)).column("user_id").to_numpy())
    np.testing.assert_array_equal(t2.ids, np.union1d(active1, active2))
    carried = np.setdiff1d(active1, active2)
    assert len(carried) and len(np.intersect1d(active1, active2))  # the test exercises both cases
    e1, _ = t1.lookup(carried)
    e2, _ = t2.lookup(carried)
    np.testing.assert_array_equal(e1, e2)  # inactive users carry over unchanged
    both = np.intersect1d(active1, active2)
    assert not np.allclose(t1.lookup(both)[0], t2.lookup(both)[0])  # re-embedded with day-2 actions
    # idempotent: re-running day 2 merges with day 1 again and gives the same table, byte for byte
    before = (out / "users" / f"v={d2}" / "embeddings.parquet").read_bytes()
    embed_users(model_dir, tiny_data, pins, out, d2)
    assert pq.read_table(out / "users" / f"v={d2}" / "embeddings.parquet").equals(
        pq.read_table(pa.BufferReader(before)))
    assert store.current() == d2


def test_a_retrained_model_re_embeds_every_user_and_never_mixes_spaces(tiny_data, trained, tmp_path):
    """Day 1 by model A, day 2 by a retrained model B: users inactive on day 2 are not carried over with A's
    vectors (another space than B's pin tower) but re-embedded by B from their actions up to day 2."""
    model_a, pins = trained
    model_b = tmp_path / "model_b"
    train(config.load("pinnerformer_tiny", {"max_steps": 7, "epochs": 1, "seed": 1}), tiny_data, pins, model_b,
          evaluate=False)
    assert model_digest(model_a) != model_digest(model_b)
    d1, d2 = _days(tiny_data)[20:22]
    out = tmp_path / "emb"
    store = VersionedStore(out / "users")
    embed_users(model_a, tiny_data, pins, out, d1)
    t1 = store.read(d1)
    assert len(retrained_users(out, d2, model_a)) == 0  # same model: an ordinary incremental day
    np.testing.assert_array_equal(retrained_users(out, d2, model_b), t1.ids)
    embed_users(model_b, tiny_data, pins, out, d2)
    t2 = store.read(d2)
    assert t2.model_version == model_digest(model_b)
    active2 = np.unique(pq.read_table(io.partition_path(tiny_data, "events", d2)).column("user_id").to_numpy())
    np.testing.assert_array_equal(t2.ids, np.union1d(t1.ids, active2))
    carried = np.setdiff1d(t1.ids, active2)
    assert len(carried)
    # every row is model B's embedding of that user from their latest actions up to the end of day 2
    fresh = embed_active_users(model_b, tiny_data, pins, d2, also=t2.ids)
    np.testing.assert_array_equal(fresh.ids, t2.ids)
    np.testing.assert_allclose(t2.embeddings, fresh.embeddings, atol=1e-6)
    assert not np.allclose(t1.lookup(carried)[0], t2.lookup(carried)[0])
    # publish_users alone never carries rows of another model either
    only = EmbeddingTable(active2, fresh.lookup(active2)[0], fresh.model_version, fresh.created_at, "user_id")
    base = tmp_path / "emb2"
    publish_users(t1, base, d1)
    publish_users(only, base, d2)
    np.testing.assert_array_equal(VersionedStore(base / "users").read(d2).ids, active2)


def test_embedding_uses_latest_actions_up_to_end_of_day(tiny_data, trained, tmp_path):
    """A user's embedding for day D equals the model applied to their last M actions up to the end of D."""
    import torch

    from components.data.validate import load_events
    from components.models.pinnerformer import load_model
    from components.training.pinnerformer import load_pin_table
    from components.training.pinnerformer_data import build_sequences, collate

    model_dir, pins = trained
    day = _days(tiny_data)[25]
    embed_users(model_dir, tiny_data, pins, tmp_path, day)
    table = VersionedStore(tmp_path / "users").read(day)
    model, cfg, _ = load_model(model_dir)
    pt = load_pin_table(pins)
    _, end = io.day_bounds(day)
    ev = load_events(tiny_data)
    user = int(table.ids[0])
    ev = ev[(ev.user_id == user) & (ev.timestamp < end)]
    seqs = build_sequences(ev, pt.ids)
    b = seqs.span(0)[1]
    batch = collate(seqs, [(max(0, b - cfg.max_seq_len), b - 1)])
    with torch.no_grad():
        out = model(torch.from_numpy(pt.embeddings)[batch["pin_row"]], batch["action"], batch["surface"],
                    batch["duration"], batch["timestamp"], batch["valid"])[0, -1].numpy()
    np.testing.assert_allclose(table.embeddings[0], out, atol=1e-5)


def test_failure_before_publish_keeps_previous_version(tiny_data, trained, tmp_path):
    model_dir, pins = trained
    d1, d2 = _days(tiny_data)[20:22]
    embed_users(model_dir, tiny_data, pins, tmp_path, d1)
    current = (tmp_path / "users" / "CURRENT").read_bytes()
    table_bytes = (tmp_path / "users" / f"v={d1}" / "embeddings.parquet").read_bytes()

    def boom(_table):
        raise RuntimeError("injected failure before publish")

    with pytest.raises(RuntimeError, match="injected"):
        embed_users(model_dir, tiny_data, pins, tmp_path, d2, before_publish=boom)
    assert (tmp_path / "users" / "CURRENT").read_bytes() == current
    assert (tmp_path / "users" / f"v={d1}" / "embeddings.parquet").read_bytes() == table_bytes
    assert VersionedStore(tmp_path / "users").versions() == [d1]


def test_killed_process_leaves_previous_version_current(tiny_data, trained, tmp_path):
    """SIGKILL a real embedding process right before it publishes; the store is untouched."""
    model_dir, pins = trained
    d1, d2 = _days(tiny_data)[20:22]
    embed_users(model_dir, tiny_data, pins, tmp_path, d1)
    current = (tmp_path / "users" / "CURRENT").read_bytes()
    table_bytes = (tmp_path / "users" / f"v={d1}" / "embeddings.parquet").read_bytes()
    script = (
        "import os, signal, sys\n"
        "from components.inference.users import embed_users\n"
        "embed_users(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5],\n"
        "            before_publish=lambda t: os.kill(os.getpid(), signal.SIGKILL))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(model_dir), str(tiny_data), str(pins), str(tmp_path), d2],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert (tmp_path / "users" / "CURRENT").read_bytes() == current
    assert (tmp_path / "users" / f"v={d1}" / "embeddings.parquet").read_bytes() == table_bytes
    assert VersionedStore(tmp_path / "users").read().model_version.startswith("pinnerformer-")
    # the next run completes and publishes normally
    embed_users(model_dir, tiny_data, pins, tmp_path, d2)
    assert VersionedStore(tmp_path / "users").current() == d2


def test_cli_embed_users_and_pin_tower(tiny_data, trained, tmp_path, capsys):
    model_dir, pins = trained
    day = _days(tiny_data)[10]
    assert cli_main(["embed", "users", "--date", day, "--model", str(model_dir), "--data", str(tiny_data),
                     "--pin-embeddings", str(pins), "--out", str(tmp_path)]) == 0
    assert VersionedStore(tmp_path / "users").current() == day
    assert cli_main(["embed", "pin-tower", "--model", str(model_dir), "--pin-embeddings", str(pins),
                     "--out", str(tmp_path), "--version", "v1"]) == 0
    pt = VersionedStore(tmp_path / "pins").read()
    assert len(pt) == 800 and np.allclose(np.linalg.norm(pt.embeddings, axis=1), 1, atol=1e-4)
    assert pt.dim == VersionedStore(tmp_path / "users").read().dim  # one space for users and pins
    # a day without a partition is a clear error naming the path
    assert cli_main(["embed", "users", "--date", "1999-01-01", "--model", str(model_dir), "--data", str(tiny_data),
                     "--pin-embeddings", str(pins), "--out", str(tmp_path)]) == 2
    assert "dt=1999-01-01" in capsys.readouterr().err


def test_pin_tower_rejects_wrong_dimension(trained, tmp_path):
    import datetime as dt

    from components.data.tables import EmbeddingTable

    model_dir, _ = trained
    bad = write_table(EmbeddingTable(np.arange(3), np.ones((3, 5), np.float32), "x", dt.datetime.now(dt.UTC)),
                      tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="5 dims, the model expects 64"):
        embed_pin_tower(model_dir, bad, tmp_path)


def test_month_partitions_and_several_files_embed_the_same_users(tiny_data, trained, tmp_path):
    """An imported long log stores events as ``dt=YYYY-MM`` month partitions, and a partition may hold
    several ``*.parquet`` files: the daily job (and a ``since`` backfill) reads them through
    components.data.io and embeds exactly what it embeds from the day partitions."""
    import shutil

    model_dir, pins = trained
    days = _days(tiny_data)
    d0, d2 = days[18], days[21]
    monthly = tmp_path / "monthly"
    shutil.copytree(tiny_data, monthly)
    events = io.read_table(tiny_data, "events")
    shutil.rmtree(monthly / io.TABLES["events"].filename)
    io.write_partitioned(monthly, "events", events, granularity="month")
    for folder in io.partition_dirs(monthly, "events"):  # split each month over two files
        t = pq.read_table(folder / "part-0.parquet")
        half = t.num_rows // 2
        pq.write_table(t.slice(0, half), folder / "part-0.parquet")
        pq.write_table(t.slice(half), folder / "part-1.parquet")
    assert all(len(k) == 7 for k in _days(monthly)) and d2 not in _days(monthly)
    for since in (None, d0):
        a, b = tmp_path / f"day-{since}", tmp_path / f"month-{since}"
        embed_users(model_dir, tiny_data, pins, a, d2, since=since)
        embed_users(model_dir, monthly, pins, b, d2, since=since)
        ta, tb = VersionedStore(a / "users").read(d2), VersionedStore(b / "users").read(d2)
        assert len(ta.ids) > 0
        np.testing.assert_array_equal(ta.ids, tb.ids)
        np.testing.assert_allclose(ta.embeddings, tb.embeddings, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="no events partition for 2099-01-01"):
        embed_users(model_dir, monthly, pins, tmp_path / "none", "2099-01-01")
