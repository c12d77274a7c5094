"""Scale benchmark: each pipeline stage at several catalogue sizes, its wall time and peak RSS, and how cost grows.

Sizes: ``HOMEFEED_BENCH_SCALE`` = comma-separated pin counts (default ``10000,30000,100000``); users = pins / 10,
boards = pins / 10, ~40 events per user (so events = 4 x pins). Every stage runs in its own subprocess (this file
run as a script) and reports its own ``ru_maxrss``, so each peak is that stage's, not the session's. Stages, on
the synthetic data of each size:

  prepare            synthetic data directory (events in day partitions), validated
  sample_graph       pin-board graph + importance neighbourhoods of every pin
  train_pinsage      ``STEPS`` PinSage training steps (``pinsage`` experiment, max_steps)
  embed_pins         layer-wise PinSage inference of every pin (unsharded)
  train_pinnerformer ``STEPS`` PinnerFormer steps
  embed_users        every user active in the last 7 event days, from their latest actions
  pin_tower          PinnerFormer's pin tower over every pin
  train_ranker       ``STEPS`` ranker steps (``ranker_tiny``: the serving-size ranker is bench_ranker_serving's)
  index_build        Milvus Lite HNSW collection over the pin-tower table (``milvus_index.build_index``)

Recorded per size: seconds and peak RSS (MB) per stage; per stage: the growth exponent a of cost ~ size^a
between the smallest and the largest size (time and RSS), so a ~ 1 is linear growth and a < 1 sub-linear.
Feast materialisation with the server profile is not part of this file (it needs the server stack: see
docs/scale.md).
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from components import config
from components.data import io
from components.data.prepare import prepare
from components.data.tables import VersionedStore
from components.graph.graph import build_graph
from components.graph.sampling import build_neighbourhoods
from components.inference.pinsage import embed_pins
from components.inference.users import embed_pin_tower, embed_users
from components.serving import milvus_index
from components.training import pinnerformer, pinsage, ranker

STEPS = 20
STAGES = ("prepare", "sample_graph", "train_pinsage", "embed_pins", "train_pinnerformer", "embed_users",
          "pin_tower", "train_ranker", "index_build")
REPO = Path(__file__).resolve().parents[2]


def sizes() -> list[int]:
    raw = os.environ.get("HOMEFEED_BENCH_SCALE", "10000,30000,100000")
    try:
        out = sorted({int(x) for x in raw.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"HOMEFEED_BENCH_SCALE={raw!r}: expected comma-separated pin counts, e.g. 10000,100000") from None
    if not out or min(out) < 500:
        raise ValueError(f"HOMEFEED_BENCH_SCALE={raw!r}: expected pin counts >= 500")
    return out


def run_stage(stage: str, pins: int, work: Path) -> None:
    """One stage in this process (the subprocess side; the modules are imported before the clock starts)."""
    data = work / "data"
    if stage == "prepare":
        prepare(config.load("synthetic", [f"pins={pins}", f"users={max(pins // 10, 50)}",
                                          f"boards={max(pins // 10, 20)}", "events_per_user=40"]), data)
    elif stage == "sample_graph":
        build_neighbourhoods(build_graph(data), config.load("pinsage"))
    elif stage == "train_pinsage":
        pinsage.train(config.load("pinsage", [f"max_steps={STEPS}", "epochs=1"]), data, work / "pinsage")
    elif stage == "embed_pins":
        embed_pins(work / "pinsage", data, work / "pins", version="bench")
    elif stage == "train_pinnerformer":
        pinnerformer.train(config.load("pinnerformer", [f"max_steps={STEPS}", "epochs=1"]), data,
                           _pins(work), work / "pinnerformer")
    elif stage == "embed_users":
        days = io.partitions(data, "events")
        embed_users(work / "pinnerformer", data, _pins(work), work / "emb", days[-1], since=days[-7])
    elif stage == "pin_tower":
        embed_pin_tower(work / "pinnerformer", _pins(work), work / "emb", version="bench")
    elif stage == "train_ranker":
        ranker.train(config.load("ranker_tiny", [f"max_steps={STEPS}"]), data, work / "ranker",
                     user_embeddings=VersionedStore(work / "emb" / "users").path(), pin_embeddings=_pins(work))
    elif stage == "index_build":
        milvus_index.build_index(str(work / "milvus.db"), VersionedStore(work / "emb" / "pins").path(),
                                 params=milvus_index.HnswParams(insert_batch=20_000))
    else:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")


def _pins(work: Path) -> Path:
    return VersionedStore(work / "pins").path()


def measure(stage: str, pins: int, work: Path) -> dict[str, float]:
    """Run ``stage`` in a fresh subprocess: its wall time and its own peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOMEFEED_QUIET": "1"}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, stage, str(pins), str(work)], env=env, capture_output=True,
                          text=True, cwd=REPO)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} at {pins} pins failed:\n{proc.stderr[-4000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"seconds": seconds, "stage_seconds": report["seconds"], "peak_rss_mb": report["peak_rss_mb"]}


def exponent(xs: list[float], ys: list[float]) -> float | None:
    """a in y ~ x^a between the first and the last point (None when undefined)."""
    if len(xs) < 2 or ys[0] <= 0 or ys[-1] <= 0:
        return None
    return math.log(ys[-1] / ys[0]) / math.log(xs[-1] / xs[0])


def test_bench_scale(tmp_path, bench_record):
    ns = sizes()
    rows = []
    for n in ns:
        work = tmp_path / f"pins{n}"
        row = {"pins": n, "users": max(n // 10, 50), "events_approx": 40 * max(n // 10, 50), "stages": {}}
        for stage in STAGES:
            row["stages"][stage] = measure(stage, n, work)
            print(n, stage, row["stages"][stage], flush=True)
        rows.append(row)
    growth = {}
    for stage in STAGES:
        t = [r["stages"][stage]["stage_seconds"] for r in rows]
        m = [r["stages"][stage]["peak_rss_mb"] for r in rows]
        growth[stage] = {"time_exponent": exponent(ns, t), "peak_rss_exponent": exponent(ns, m)}
    result = {"what": "per-stage wall time (in the stage's process, imports excluded) and peak RSS at each size; "
                      "growth exponent a of cost ~ pins^a between the smallest and largest size",
              "sizes": ns, "training_steps": STEPS, "rows": rows, "growth": growth}
    bench_record("scale.stages", result)
    for r in rows:
        assert all(s["peak_rss_mb"] > 0 for s in r["stages"].values())


if __name__ == "__main__":
    stage_name, n_pins, work_dir = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    t0 = time.perf_counter()
    run_stage(stage_name, n_pins, work_dir)
    elapsed = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes, this process's peak
    print(json.dumps({"seconds": elapsed, "peak_rss_mb": peak_kb / 1024}))
