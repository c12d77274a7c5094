"""Feast materialization: Feast's own ``FeatureStore.materialize`` vs ``feast_store.materialize`` in batches, same
sources, same run (issue #13's bounded memory).

Synthetic data of ``HOMEFEED_BENCH_PINS`` pins (default 10,000; users = boards = pins / 10, 40 events per user, as
``bench_scale``), random 64-d user and pin embedding tables, the ``local`` profile (Feast on SQLite; set
``HOMEFEED_BENCH_MATERIALIZE_STACK`` to a stack file, e.g. a ``homefeed stack up --profile server`` one, to write
Redis instead). ``write_sources`` runs once (batched; its own time and memory are recorded), the sources are
copied to two repo instances, and each materialization runs in its own forked child: seconds, and the peak RSS
above the RSS the child started with (``VmHWM`` reset through ``/proc/self/clear_refs``). The online rows of both
are compared on a sample of users and pins (they must be equal). Ratios: whole / batched, time and memory.

    HOMEFEED_BENCH_PINS=100000 pytest -q -s tests/bench/bench_materialize.py
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from pathlib import Path

import forked
import numpy as np
import pyarrow.parquet as pq

from components import config, stack
from components.data import io
from components.data.prepare import prepare
from components.data.tables import EmbeddingTable, write_table
from components.serving import feast_store
from components.stackconfig import load_stack


def _status() -> tuple[float, float]:
    """(peak RSS since the last reset, RSS) of this process in MB."""
    s = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(s["VmHWM"].split()[0]) / 1024, int(s["VmRSS"].split()[0]) / 1024


def _measured(fn, *args) -> dict:
    """In the forked child: ``fn(*args)``'s seconds and its peak RSS above the child's RSS at the start."""
    Path("/proc/self/clear_refs").write_text("5")
    start = _status()[1]
    t = time.perf_counter()
    result = fn(*args)
    return {"seconds": time.perf_counter() - t, "peak_above_start_mb": _status()[0] - start, "result": result}


def _feast_own(repo: Path, cfg, end: dt.datetime) -> dict:
    store = feast_store.open_store(repo, cfg)
    store.materialize(start_date=feast_store.EPOCH, end_date=end)
    return {}


def _online(repo: Path, cfg, users: np.ndarray, pins: np.ndarray) -> dict:
    store = feast_store.open_store(repo, cfg)
    out = {}
    for view, key, ids in (("user_embedding", "user_id", users), ("pin_embedding", "pin_id", pins),
                           ("user_features", "user_id", users), ("pin_features", "pin_id", pins)):
        refs = [f"{view}:{f.name}" for f in store.get_feature_view(view).features]
        got = store.get_online_features(features=refs, entity_rows=[{key: int(i)} for i in ids]).to_dict()
        out[view] = {k: [np.asarray(v, np.float32).tolist() if isinstance(v, list) else v for v in vals]
                     for k, vals in got.items()}
    return out


def test_bench_materialize(tmp_path, bench_record):
    pins = int(os.environ.get("HOMEFEED_BENCH_PINS", "10000"))
    stack_file = os.environ.get("HOMEFEED_BENCH_MATERIALIZE_STACK", "")
    data = tmp_path / "data"
    prepare(config.load("synthetic", [f"pins={pins}", f"users={max(pins // 10, 50)}", f"boards={max(pins // 10, 20)}",
                                      "events_per_user=40"]), data)
    rng = np.random.default_rng(0)
    when = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    tables = {}
    for name, key in (("users", "user_id"), ("pins", "pin_id")):
        ids = pq.read_table(data / f"{name}.parquet", columns=[key]).column(0).to_numpy()
        emb = rng.standard_normal((len(ids), 64)).astype(np.float32)
        tables[name] = write_table(EmbeddingTable(ids, emb, f"{name}-v1", when, key), tmp_path / f"{name}.parquet")
    day = io.partitions(data, "events")[-1]
    end = dt.datetime.fromtimestamp(io.day_bounds(day)[1], dt.UTC)
    cfgs = {}
    for which in ("whole", "batched"):
        if stack_file:
            cfgs[which] = stack.isolated(load_stack(stack_file), f"bm_{which}_{os.getpid()}", tmp_path / which)
        else:
            cfgs[which] = load_stack("local")
            cfgs[which].feast.repo = str(tmp_path / which / "feature_repo")
        feast_store.init_repo(cfgs[which].feast.repo, stack=cfgs[which])
    repos = {w: Path(c.feast.repo) for w, c in cfgs.items()}
    load_before = Path("/proc/loadavg").read_text().strip()
    sources = forked.start("write_sources", _measured, feast_store.write_sources, repos["batched"], data, day,
                           tables["users"], tables["pins"])()
    shutil.rmtree(repos["whole"] / "sources")
    shutil.copytree(repos["batched"] / "sources", repos["whole"] / "sources")
    for which in repos:
        feast_store.apply(repos[which], cfgs[which])
    whole = forked.start("Feast's materialize", _measured, _feast_own, repos["whole"], cfgs["whole"], end)()
    batched = forked.start("batched materialize", _measured, feast_store.materialize, repos["batched"], day,
                           cfgs["batched"])()
    load_after = Path("/proc/loadavg").read_text().strip()
    users = pq.read_table(tables["users"], columns=["user_id"]).column(0).to_numpy()[::97]
    pin_ids = pq.read_table(tables["pins"], columns=["pin_id"]).column(0).to_numpy()[::97]
    assert _online(repos["batched"], cfgs["batched"], users, pin_ids) == _online(repos["whole"], cfgs["whole"],
                                                                                 users, pin_ids)
    result = {
        "pins": pins, "users": len(pq.read_table(tables["users"], columns=["user_id"])), "day": day,
        "profile": "local" if not stack_file else load_stack(stack_file).profile,
        "batch_rows": feast_store.BATCH_ROWS, "rows": sources["result"],
        "write_sources": {k: sources[k] for k in ("seconds", "peak_above_start_mb")},
        "materialize_feast_whole": {k: whole[k] for k in ("seconds", "peak_above_start_mb")},
        "materialize_batched": {k: batched[k] for k in ("seconds", "peak_above_start_mb")},
        "whole_over_batched_seconds": whole["seconds"] / batched["seconds"],
        "whole_over_batched_memory": whole["peak_above_start_mb"] / max(batched["peak_above_start_mb"], 1.0),
        "loadavg_before": load_before, "loadavg_after": load_after,
    }
    print(result)
    bench_record("materialize_batches", result)
