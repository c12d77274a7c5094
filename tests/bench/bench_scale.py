"""Scale benchmark: each pipeline stage at several catalogue sizes, its wall time and peak RSS, and how cost grows.

Sizes: ``HOMEFEED_BENCH_SCALE`` = comma-separated pin counts (default ``10000,30000,100000``); users = pins / 10,
boards = pins / 10, ~40 events per user (so events = 4 x pins). The issue #13 table::

    HOMEFEED_BENCH_SCALE=10000,100000,1000000 pytest -q -s tests/bench/bench_scale.py

``HOMEFEED_BENCH_SCALE_STAGES`` = comma-separated stage names (default: all) measures only those stages; the stages
they read the outputs of still run first (``NEEDS``), each in its own forked child as usual, and are recorded under
``prerequisites`` (not in the table or the growth figures). E.g. re-measuring the streamed data preparation and the
memory-mapped pin embedding only::

    HOMEFEED_BENCH_SCALE=10000,100000 HOMEFEED_BENCH_SCALE_STAGES=prepare,embed_pins pytest -q -s \
        tests/bench/bench_scale.py

Every stage runs in its own forked child of the benchmark process (modules imported once, before the first
fork) and reports its own time, the RSS it starts with and its ``ru_maxrss``, so each peak is that stage's, not the session's, and
``stage_rss_mb`` (peak minus the after-import baseline) is what the stage itself holds. Stages, on the synthetic
data of each size:

  prepare            synthetic data directory (events in day partitions), validated
  sample_graph       pin-board graph + importance neighbourhoods of every pin
  train_pinsage      ``STEPS`` PinSage training steps (``pinsage`` experiment, max_steps)
  embed_pins         layer-wise PinSage inference of every pin (unsharded)
  train_pinnerformer ``STEPS`` PinnerFormer steps
  embed_users        every user active in the last 7 event days, from their latest actions
  pin_tower          PinnerFormer's pin tower over every pin
  train_ranker       ``STEPS`` ranker steps (``ranker_tiny``: the serving-size ranker)
  feast_materialize_server  Feast sources (``write_sources``) + apply + materialize of the user and pin embeddings
                     and ranker features into the ``server`` profile (Valkey online store, PostgreSQL registry),
                     started for real in the stage's process; only the Feast calls are timed
  index_build_server HNSW collection over the pin-tower table (``milvus_index.build_index``: insert, index, load,
                     alias) on the Milvus 2.3.5 server of the ``server`` profile, started in the stage's process;
                     only the build is timed (Milvus Lite, the development store, took 32 min for its HNSW
                     ``create_index`` at 500k pins here, so the table measures the store the platform deploys)

Recorded per size: seconds, peak RSS and stage RSS (MB) per stage, the event count; per stage: the growth
exponent a of cost ~ size^a (time, peak RSS, stage RSS) between consecutive sizes and between the smallest and
the largest, so a ~ 1 is linear growth and a < 1 sub-linear. Events are 4 x pins, so an exponent in pins is the
same exponent in events. Flat per-size rows (``time_*``, ``rss_*``) feed the report's growth plot.
``/proc/loadavg`` is recorded before and after each size.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import time
from pathlib import Path

import forked
import pyarrow.dataset as ds

from components import config, stack
from components.data import io
from components.data.prepare import prepare
from components.data.tables import VersionedStore
from components.graph.graph import build_graph
from components.graph.sampling import build_neighbourhoods
from components.inference.pinsage import embed_pins
from components.inference.users import embed_pin_tower, embed_users
from components.serving import feast_store, milvus_index
from components.training import pinnerformer, pinsage, ranker

STEPS = 20
STAGES = ("prepare", "sample_graph", "train_pinsage", "embed_pins", "train_pinnerformer", "embed_users",
          "pin_tower", "train_ranker", "feast_materialize_server", "index_build_server")
# the stages whose outputs each stage reads (run first when it is selected alone)
NEEDS = {"prepare": (), "sample_graph": ("prepare",), "train_pinsage": ("prepare",),
         "embed_pins": ("prepare", "train_pinsage"), "train_pinnerformer": ("prepare", "embed_pins"),
         "embed_users": ("prepare", "embed_pins", "train_pinnerformer"),
         "pin_tower": ("embed_pins", "train_pinnerformer"),
         "train_ranker": ("prepare", "embed_pins", "embed_users"),
         "feast_materialize_server": ("prepare", "embed_pins", "embed_users"),
         "index_build_server": ("pin_tower",)}
assert set(NEEDS) == set(STAGES)
PLOT_GROUPS = {"time_data_and_stores": ("prepare", "sample_graph", "feast_materialize_server", "index_build_server"),
               "time_training_20_steps": ("train_pinsage", "train_pinnerformer", "train_ranker"),
               "time_embedding": ("embed_pins", "embed_users", "pin_tower")}


def sizes() -> list[int]:
    raw = os.environ.get("HOMEFEED_BENCH_SCALE", "10000,30000,100000")
    try:
        out = sorted({int(x) for x in raw.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"HOMEFEED_BENCH_SCALE={raw!r}: expected comma-separated pin counts, e.g. 10000,100000") from None
    if not out or min(out) < 500:
        raise ValueError(f"HOMEFEED_BENCH_SCALE={raw!r}: expected pin counts >= 500")
    return out


def selected_stages() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the stages to measure, the other stages to run before them for their outputs), both in pipeline order,
    from ``HOMEFEED_BENCH_SCALE_STAGES`` (default: every stage, nothing else)."""
    raw = os.environ.get("HOMEFEED_BENCH_SCALE_STAGES", "").strip()
    if not raw:
        return STAGES, ()
    chosen = {x.strip() for x in raw.split(",") if x.strip()}
    unknown = sorted(chosen - set(STAGES))
    if unknown or not chosen:
        raise ValueError(f"HOMEFEED_BENCH_SCALE_STAGES={raw!r}: unknown stage(s) {', '.join(unknown) or '(none given)'}"
                         f"; expected comma-separated names from {', '.join(STAGES)}")
    needed, todo = set(), list(chosen)
    while todo:
        for dep in NEEDS[todo.pop()]:
            if dep not in needed:
                needed.add(dep)
                todo.append(dep)
    return (tuple(s for s in STAGES if s in chosen),
            tuple(s for s in STAGES if s in needed and s not in chosen))


def run_stage(stage: str, pins: int, work: Path) -> float | None:
    """One stage in this process (the forked child; the modules are imported before the clock starts).
    Returns the seconds of its timed part when only part of it is timed (else None: all of it)."""
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
    elif stage == "feast_materialize_server":
        return _feast_server(data, work)
    elif stage == "index_build_server":
        return _index_server(work)
    else:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    return None


def _feast_server(data: Path, work: Path) -> float:
    """The daily run's register_features against the server profile: sources, apply, materialize (timed)."""
    day = io.partitions(data, "events")[-1]
    with stack.running("server", work / "server_stack", feast_server=False) as cfg:
        t = time.perf_counter()
        repo = feast_store.init_repo(cfg.feast.repo, stack=cfg)
        feast_store.write_sources(repo, data, day, VersionedStore(work / "emb" / "users").path(), _pins(work))
        feast_store.apply(repo, cfg)
        feast_store.materialize(repo, day, cfg)
        return time.perf_counter() - t


def _index_server(work: Path) -> float:
    """The daily run's build_index against the server profile's Milvus: insert, HNSW index, load, alias (timed)."""
    with stack.running("server", work / "index_stack", feast_server=False) as cfg:
        t = time.perf_counter()
        milvus_index.build_index(cfg.milvus.uri, VersionedStore(work / "emb" / "pins").path(), alias=cfg.milvus.alias,
                                 token=cfg.milvus_token(), params=milvus_index.HnswParams(insert_batch=20_000))
        return time.perf_counter() - t


def _pins(work: Path) -> Path:
    return VersionedStore(work / "pins").path()


def events(work: Path) -> int:
    return ds.dataset(work / "data" / "events", format="parquet", partitioning="hive").count_rows()


def _stage_report(stage: str, pins: int, work: Path) -> dict[str, float]:
    """In the forked child: run the stage; its seconds, peak RSS and the after-import RSS it started with."""
    os.environ["HOMEFEED_QUIET"] = "1"
    baseline = _rss_mb()
    t0 = time.perf_counter()
    timed = run_stage(stage, pins, work)
    elapsed = time.perf_counter() - t0 if timed is None else timed
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes, this process's peak
    return {"seconds": elapsed, "peak_rss_mb": peak_kb / 1024, "baseline_rss_mb": baseline}


def measure(stage: str, pins: int, work: Path) -> dict[str, float]:
    """Run ``stage`` in a forked child of this process (the modules are imported once, here, before any stage:
    a fresh interpreter per stage spent 90-170 s importing torch/Feast/pymilvus on this loaded machine): its
    wall time, its own peak RSS and its RSS above the after-import baseline it inherits."""
    t = time.perf_counter()
    report = forked.start(f"stage {stage} at {pins} pins", _stage_report, stage, pins, work)()
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "stage_seconds": report["seconds"], "peak_rss_mb": report["peak_rss_mb"],
            "baseline_rss_mb": report["baseline_rss_mb"],
            "stage_rss_mb": max(report["peak_rss_mb"] - report["baseline_rss_mb"], 0.0)}


def exponent(xs: list[float], ys: list[float]) -> float | None:
    """a in y ~ x^a between the first and the last point (None when undefined)."""
    if len(xs) < 2 or ys[0] <= 0 or ys[-1] <= 0:
        return None
    return math.log(ys[-1] / ys[0]) / math.log(xs[-1] / xs[0])


def growth(ns: list[int], rows: list[dict], stages: tuple[str, ...] = STAGES) -> dict[str, dict]:
    """Per stage: exponents of time, peak RSS and stage RSS, end to end and between consecutive sizes."""
    out = {}
    for stage in stages:
        if any("error" in r["stages"][stage] for r in rows):
            continue  # a stage that failed at some size has no growth figure
        g: dict = {}
        for q, key in (("time", "stage_seconds"), ("peak_rss", "peak_rss_mb"), ("stage_rss", "stage_rss_mb")):
            ys = [r["stages"][stage][key] for r in rows]
            g[f"{q}_exponent"] = exponent(ns, ys)
            g[f"{q}_exponent_steps"] = [exponent(ns[i:i + 2], ys[i:i + 2]) for i in range(len(ns) - 1)]
        out[stage] = g
    return out


def plot_rows(rows: list[dict], stages: tuple[str, ...] = STAGES) -> dict[str, list[dict]]:
    """Flat per-size rows the report's growth plot reads (a size column, then time/RSS columns)."""
    ok = {s for s in stages if all("error" not in r["stages"][s] for r in rows)}
    out = {name: [{"pins": r["pins"], **{f"{s}_seconds": r["stages"][s]["stage_seconds"] for s in group if s in ok}}
                  for r in rows] for name, group in PLOT_GROUPS.items()}
    out["rss_vs_events"] = [{"events": r["events"], **{f"{s}_stage_rss_mb": r["stages"][s]["stage_rss_mb"]
                                                       for s in ("prepare", "embed_users", "feast_materialize_server",
                                                                 "embed_pins") if s in ok}} for r in rows]
    return out


def test_bench_scale(tmp_path, bench_record):
    ns = sizes()
    measured, before = selected_stages()
    rows = []
    for n in ns:
        work = tmp_path / f"pins{n}"
        row = {"pins": n, "users": max(n // 10, 50), "loadavg_before": Path("/proc/loadavg").read_text().strip(),
               "stages": {}, **({"prerequisites": {}} if before else {})}
        for stage in STAGES:
            if stage not in measured and stage not in before:
                continue
            into = row["stages"] if stage in measured else row["prerequisites"]
            try:
                into[stage] = measure(stage, n, work)
            except RuntimeError as e:  # recorded; the stages after it still run where they can
                into[stage] = {"error": str(e)[-2000:]}
            print(n, stage, "" if stage in measured else "(prerequisite)", into[stage], flush=True)
        row["events"] = events(work)
        row["loadavg_after"] = Path("/proc/loadavg").read_text().strip()
        rows.append(row)
        shutil.rmtree(work, ignore_errors=True)  # the next size needs the disk more than this one's outputs
    failed = [f"{r['pins']}:{s}" for r in rows for s, v in {**r.get("prerequisites", {}), **r["stages"]}.items()
              if "error" in v]
    result = {"what": "per-stage wall time (in the stage's process, imports excluded), peak RSS and stage RSS (peak "
                      "minus the after-import baseline) at each size; growth exponent a of cost ~ pins^a (events = "
                      "4 x pins, so the same a in events)",
              "sizes": ns, "training_steps": STEPS, "rows": rows}
    if before:
        result["stages_measured"] = list(measured)  # HOMEFEED_BENCH_SCALE_STAGES; the rest ran as prerequisites
    result["growth"] = growth(ns, rows, measured)
    if len(ns) >= 3:
        result.update(plot_rows(rows, measured))
    result["failed_stages"] = failed
    bench_record("scale.stages", result)
    assert not failed, f"stages failed: {failed}"
    for r in rows:
        assert all(s["peak_rss_mb"] > 0 for s in r["stages"].values())


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


