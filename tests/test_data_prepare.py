"""`data prepare`: the ML-100k mapping, the synthetic generator's planted structure, and atomic writes.

ML-100k facts are checked against the raw recbole files read independently here (pandas), not against
the mapping code's own intermediate values.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components import config
from components.data import durable, io, movielens, synthetic
from components.data.prepare import prepare
from components.data.schemas import SURFACES, TASKS
from components.data.validate import load_events, load_table, validate_dir

REPO = Path(__file__).resolve().parents[1]


def raw(name: str) -> pd.DataFrame:
    df = pd.read_csv(movielens.find_ml100k_dir() / f"ml-100k.{name}", sep="\t", dtype=str, keep_default_na=False)
    df.columns = [c.split(":")[0] for c in df.columns]
    return df


def table(d: Path, name: str) -> pd.DataFrame:
    return io.read_table(d, name).to_pandas()


# ---------------------------------------------------------------------------------------------
# ML-100k
# ---------------------------------------------------------------------------------------------


def test_ml100k_row_counts(ml100k_data):
    report = validate_dir(ml100k_data)
    assert report.rows["users"] == 943
    assert report.rows["pins"] == 1682
    assert report.rows["events"] == 100_000
    assert report.summary["first_day"] == "1997-09-20" and report.summary["last_day"] == "1998-04-22"
    assert config.read_saved(ml100k_data).dataset == "ml-100k"  # the resolved config beside the data


def test_ml100k_action_mapping(ml100k_data):
    inter = raw("inter").astype({"user_id": np.int64, "item_id": np.int64, "rating": float})
    ev = load_events(ml100k_data).merge(inter, left_on=["user_id", "pin_id"], right_on=["user_id", "item_id"],
                                        how="left", validate="one_to_one")
    assert ev["rating"].notna().all()
    expected = ev["rating"].map({5.0: "repin", 4.0: "closeup", 3.0: "click", 2.0: "hide", 1.0: "hide"})
    assert (ev["action_type"] == expected).all()
    assert (ev["surface"] == "homefeed").all()
    # closeups count as PinnerFormer positives (> 10 s), clicks do not
    assert (ev.loc[ev["action_type"] == "closeup", "duration_s"] > 10).all()
    assert (ev.loc[ev["action_type"] == "click", "duration_s"] < 10).all()
    # the mix follows the rating distribution of ML-100k
    assert ev["action_type"].value_counts(normalize=True)["repin"] == pytest.approx((inter["rating"] == 5).mean())


def test_ml100k_tie_break_strictly_increasing_and_deterministic(ml100k_data):
    inter = raw("inter")
    ts_raw = inter["timestamp"].astype(float).astype(np.int64)
    assert inter.assign(t=ts_raw).duplicated(["user_id", "t"], keep=False).mean() > 0.5  # why a tie-break
    ev = load_events(ml100k_data)
    gaps = ev.groupby("user_id")["timestamp"].diff().dropna()
    assert (gaps > 0).all()
    # never earlier than the rating, and the shift stays small
    merged = ev.merge(inter.astype({"user_id": np.int64, "item_id": np.int64}).assign(t=ts_raw)[["user_id", "item_id", "t"]],
                      left_on=["user_id", "pin_id"], right_on=["user_id", "item_id"])
    shift = merged["timestamp"] - merged["t"]
    assert (shift >= 0).all() and shift.max() < 2_000

    u = inter["user_id"].astype(np.int64).to_numpy()
    it = inter["item_id"].astype(np.int64).to_numpy()
    order, new_ts = movielens.tie_break(u, ts_raw.to_numpy(), it)
    perm = np.random.default_rng(1).permutation(len(u))  # input order must not matter
    order2, new_ts2 = movielens.tie_break(u[perm], ts_raw.to_numpy()[perm], it[perm])
    a = pd.DataFrame({"u": u[order], "i": it[order], "t": new_ts})
    b = pd.DataFrame({"u": u[perm][order2], "i": it[perm][order2], "t": new_ts2})
    pd.testing.assert_frame_equal(a, b)


def test_ml100k_mapping_is_deterministic():
    a, b = movielens.load(eval_days=28, seed=0), movielens.load(eval_days=28, seed=0)
    for name in ("pins", "boards", "pin_boards", "users", "events", "impressions"):
        pd.testing.assert_frame_equal(a[name].drop(columns=["features"], errors="ignore"),
                                      b[name].drop(columns=["features"], errors="ignore"))
    assert np.array_equal(np.stack(a["pins"]["features"]), np.stack(b["pins"]["features"]))
    assert a["meta"] == b["meta"]
    c = movielens.load(eval_days=28, seed=1)  # the seed only moves durations and sampled negatives
    assert c["events"]["timestamp"].equals(a["events"]["timestamp"])
    assert not c["events"]["duration_s"].equals(a["events"]["duration_s"])


def test_tie_break_small_case():
    user = np.array([1, 1, 1, 2, 2, 1])
    ts = np.array([100, 100, 100, 50, 50, 101])
    item = np.array([7, 8, 9, 7, 8, 3])
    order, new_ts = movielens.tie_break(user, ts, item)
    got = pd.DataFrame({"u": user[order], "t": new_ts})
    # user 1: three ratings at 100 become 100, 101, 102; the one at 101 moves to 103
    assert got[got.u == 1]["t"].tolist() == [100, 101, 102, 103]
    assert got[got.u == 2]["t"].tolist() == [50, 51]


def test_ml100k_time_split(ml100k_data):
    meta = io.read_meta(ml100k_data)
    split = meta["split_timestamp"]
    assert split % 86_400 == 0 and meta["eval_days"] == 28
    ev = load_events(ml100k_data)
    last = int(ev["timestamp"].max())
    assert 27 * 86_400 < last - split <= 29 * 86_400
    eval_share = (ev["timestamp"] >= split).mean()
    assert 0.05 < eval_share < 0.5
    days = io.partitions(ml100k_data, "events")
    split_day = str(io.day_of(split))
    assert split_day in days  # the split falls on a partition boundary
    eval_days = [d for d in days if d >= split_day]
    assert len(load_events(ml100k_data, days=eval_days)) == int((ev["timestamp"] >= split).sum())


def test_ml100k_boards_from_the_knowledge_graph(ml100k_data):
    boards = table(ml100k_data, "boards")
    edges = table(ml100k_data, "pin_boards")
    assert {"genre", "director", "actor", "writer", "producer", "company", "user"} <= set(boards["kind"])
    members = edges.merge(boards, on="board_id").groupby("name")["pin_id"].agg(lambda s: set(s.tolist()))
    items = raw("item")
    assert 1 in members["genre:Animation"]  # Toy Story
    animation = set(items.loc[items["class"].str.split().apply(lambda g: "Animation" in g), "item_id"].astype(int))
    assert members["genre:Animation"] == animation
    # every knowledge-graph board holds exactly the films linked to its entity by its relation
    link = raw("link")
    kg = raw("kg").merge(link, left_on="head_id", right_on="entity_id")
    kinds = {"film.film.directed_by": "director", "film.film.actor": "actor", "film.film.written_by": "writer"}
    kg = kg[kg["relation_id"].isin(kinds)]
    expected = kg.assign(name=kg["relation_id"].map(kinds) + ":" + kg["tail_id"]).groupby("name")["item_id"].agg(
        lambda s: {int(x) for x in s})
    expected = expected[expected.apply(len) >= 3]
    assert len(expected) > 2000
    got = members[members.index.isin(expected.index)]
    assert len(got) == len(expected) and (got == expected[got.index]).all()
    assert (edges.merge(boards, on="board_id").groupby("board_id").size() >= 2).all()


def test_ml100k_user_boards_hold_no_evaluation_period_data(ml100k_data):
    split = io.read_meta(ml100k_data)["split_timestamp"]
    boards = table(ml100k_data, "boards")
    edges = table(ml100k_data, "pin_boards").merge(boards[boards["kind"] == "user"], on="board_id")
    edges["user_id"] = edges["name"].str.split(":").str[1].astype(np.int64)
    ev = load_events(ml100k_data)
    train_repins = ev[(ev["timestamp"] < split) & (ev["action_type"] == "repin")][["user_id", "pin_id"]]
    joined = edges.merge(train_repins.assign(ok=True), on=["user_id", "pin_id"], how="left")
    assert len(edges) > 10_000 and joined["ok"].fillna(False).all()
    # and users' evaluation-period repins that were not repinned earlier do not appear
    eval_only = ev[(ev["timestamp"] >= split) & (ev["action_type"] == "repin")][["user_id", "pin_id"]]
    leak = eval_only.merge(edges[["user_id", "pin_id"]], on=["user_id", "pin_id"])
    assert leak.empty


def test_ml100k_impressions(ml100k_data):
    imp = load_table(ml100k_data, "impressions")
    ev = load_events(ml100k_data)
    assert set(imp.columns) >= {f"label_{t}" for t in TASKS}
    rated = set(zip(ev["user_id"], ev["pin_id"]))
    pairs = list(zip(imp["user_id"], imp["pin_id"]))
    labelled = imp[[f"label_{t}" for t in TASKS]].to_numpy().any(1)
    is_rated = np.array([p in rated for p in pairs])
    # labelled impressions are exactly the user's ratings; the rest are sampled pins the user never rated
    assert (labelled == is_rated).all()
    assert 0.4 * len(imp) < (~is_rated).sum() <= 0.5 * len(imp)
    assert (imp.loc[imp["label_save"] == 1, "label_closeup"] == 1).all()  # save = 5 implies closeup = >= 4
    assert imp.groupby("request_id")["user_id"].nunique().max() == 1
    assert not imp.duplicated(["request_id", "pin_id"]).any()


# ---------------------------------------------------------------------------------------------
# Synthetic
# ---------------------------------------------------------------------------------------------


def _tables_equal(a: Path, b: Path) -> None:
    for name in ("pins", "boards", "pin_boards", "users", "events", "impressions"):
        assert io.read_table(a, name).equals(io.read_table(b, name)), name
    for f in ("pin_topics", "board_topics", "user_interests"):
        assert pq.read_table(a / "ground_truth" / f"{f}.parquet").equals(pq.read_table(b / "ground_truth" / f"{f}.parquet"))
    assert io.read_meta(a) == io.read_meta(b)


def test_synthetic_reproducible_for_a_seed(tiny_data, tmp_path):
    again = tmp_path / "again"
    prepare(config.load("synthetic_tiny"), again, progress=False)
    _tables_equal(tiny_data, again)
    other = tmp_path / "other"
    prepare(config.load("synthetic_tiny", ["seed=1"]), other, progress=False)
    assert not io.read_table(tiny_data, "events").equals(io.read_table(other, "events"))
    assert config.read_saved(other).seed == 1


def test_synthetic_boards_are_mostly_one_topic(tiny_data):
    gt = tiny_data / "ground_truth"
    edges = table(tiny_data, "pin_boards").merge(pq.read_table(gt / "pin_topics.parquet").to_pandas(), on="pin_id")
    edges = edges.merge(pq.read_table(gt / "board_topics.parquet").to_pandas(), on="board_id",
                        suffixes=("_pin", "_board"))
    same = (edges["topic_pin"] == edges["topic_board"]).groupby(edges["board_id"]).mean()
    assert same.median() > 0.8 and (same > 0.5).mean() > 0.9
    assert set(table(tiny_data, "pins")["pin_id"]) == set(edges["pin_id"])  # every pin in a board


@pytest.fixture(scope="module")
def synthetic_medium():
    cfg = config.load("synthetic_tiny", {"users": 1500, "pins": 2000, "boards": 200, "days": 60})
    return synthetic.generate(cfg)


def test_synthetic_labels_depend_on_surface_and_affinity(synthetic_medium):
    imp = synthetic_medium["impressions"]
    gt = synthetic_medium["ground_truth"]
    pin_topic = gt["pin_topics"].set_index("pin_id")["topic"]
    ui = gt["user_interests"].set_index("user_id")
    topic = pin_topic.loc[imp["pin_id"]].to_numpy()
    drift = ui["drift_time"].loc[imp["user_id"]].to_numpy()
    after = (drift >= 0) & (imp["timestamp"].to_numpy() >= drift)
    before_i = np.stack(ui["interests"].loc[imp["user_id"]].to_numpy())
    after_i = np.stack(ui["interests_after"].loc[imp["user_id"]].to_numpy())
    interests = np.where(after[:, None], after_i, before_i)
    imp = imp.assign(match=(interests == topic[:, None]).any(1))
    assert 0.3 < imp["match"].mean() < 0.8
    lift = {}
    for task in TASKS:
        rates = imp.groupby(["surface", "match"])[f"label_{task}"].mean().unstack()
        lift[task] = (rates[True] - rates[False]).reindex(list(SURFACES))
    # in-interest pins get more saves and fewer hides on every surface
    assert (lift["save"] > 0.03).all() and (lift["hide"] < 0).all()
    # ...but how much affinity matters depends on the surface (what EPNet's domain gate can learn)
    assert lift["click"]["search"] > lift["click"]["homefeed"] + 0.15
    assert lift["closeup"]["related"] > lift["closeup"]["search"] + 0.1


def test_synthetic_interests_drift(synthetic_medium):
    ev = synthetic_medium["events"]
    gt = synthetic_medium["ground_truth"]
    ui = gt["user_interests"]
    pin_topic = gt["pin_topics"].set_index("pin_id")["topic"]
    ev = ev.assign(topic=pin_topic.loc[ev["pin_id"]].to_numpy())
    drifted = ui[ui["drift_time"] >= 0]
    assert 0.3 < len(drifted) / len(ui) < 0.7
    rows = []
    for uid, new, old, t in zip(drifted["user_id"], drifted["interests_after"], drifted["interests"],
                                drifted["drift_time"]):
        added = set(new.tolist()) - set(old.tolist())
        if not added:
            continue
        e = ev[ev["user_id"] == uid]
        rows.append((e.loc[e["timestamp"] < t, "topic"].isin(added).mean(),
                     e.loc[e["timestamp"] >= t, "topic"].isin(added).mean()))
    before, after = np.nanmean(np.array(rows), axis=0)
    assert after > before + 0.15  # users engage with their new interest after the drift


def test_synthetic_event_skew(tiny_data):
    ev = load_events(tiny_data)
    assert set(ev["surface"]) == set(SURFACES)
    per_user = ev.groupby("user_id").size()
    assert per_user.max() > 4 * per_user.median()  # log-normal activity
    dur = ev["duration_s"]
    assert dur.mean() > 1.5 * dur.median()  # long-tailed durations
    counts = ev["pin_id"].value_counts()
    assert counts.iloc[: len(counts) // 10].sum() > 0.3 * len(ev)  # popular pins take a big share


# ---------------------------------------------------------------------------------------------
# Atomic partition writes
# ---------------------------------------------------------------------------------------------


def _events(n: int, day_start: int, value: float) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table({
        "user_id": pa.array(rng.integers(1, 10, n), pa.int64()),
        "pin_id": pa.array(rng.integers(1, 10, n), pa.int64()),
        "action_type": pa.array(["repin"] * n),
        "surface": pa.array(["homefeed"] * n),
        "timestamp": pa.array(day_start + np.sort(rng.integers(0, 86_400, n)), pa.int64()),
        "duration_s": pa.array(np.full(n, value, np.float32)),
    })


DAY = 1_704_067_200  # 2024-01-01


def test_failed_write_leaves_the_old_partition(tmp_path, monkeypatch):
    io.write_partitioned(tmp_path, "events", _events(50, DAY, 1.0))
    path = io.partition_path(tmp_path, "events", "2024-01-01")
    before = path.read_bytes()

    real_write = pq.write_table

    def crash_midway(table, where, **kwargs):
        real_write(table.slice(0, 5), where, **kwargs)  # some bytes reach the temp file
        with open(where, "ab") as f:
            f.write(b"partial")
        raise OSError("disk full (injected)")

    monkeypatch.setattr(durable.pq, "write_table", crash_midway)
    with pytest.raises(OSError, match="injected"):
        io.write_partitioned(tmp_path, "events", _events(80, DAY, 2.0))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["part-0.parquet"]  # temp file cleaned up
    assert pq.read_table(path).num_rows == 50
    assert path.stat().st_mode & 0o044 == 0o044 & durable.FILE_MODE  # published files are not owner-only


def test_interrupted_prepare_keeps_the_published_directory(tmp_path, monkeypatch):
    cfg = config.load("synthetic_tiny", {"users": 40, "pins": 100, "boards": 10, "days": 20, "eval_days": 5})
    d = tmp_path / "d"
    prepare(cfg, d, progress=False)
    old_events = io.read_table(d, "events")
    old_meta = io.read_meta(d)
    real_write = pq.write_table
    calls = {"n": 0}

    def fail_on_tenth(table, where, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt  # as if the user pressed ^C mid-way through the events
        real_write(table, where, **kwargs)

    monkeypatch.setattr(durable.pq, "write_table", fail_on_tenth)
    new_cfg = config.load("synthetic_tiny", {"users": 40, "pins": 100, "boards": 10, "days": 12, "eval_days": 5,
                                             "seed": 3})
    with pytest.raises(KeyboardInterrupt):
        prepare(new_cfg, d, progress=False)
    monkeypatch.undo()
    # every partition is whole (old or new), no day was deleted, the old meta.json is still published
    assert io.read_meta(d) == old_meta
    days_now = io.partitions(d, "events")
    assert set(io.partitions(d, "events")) >= {str(x) for x in np.unique(io.day_of(
        old_events.column("timestamp").to_numpy()))}
    for day in days_now:
        pq.read_table(io.partition_path(d, "events", day))
    assert not list(d.rglob("*.tmp"))
    # a complete re-run replaces the table and drops the days the new data no longer has
    prepare(new_cfg, d, progress=False)
    assert len(io.partitions(d, "events")) <= 12
    assert config.read_saved(d).seed == 3


def test_reprepare_with_another_dataset_drops_stale_ground_truth(tmp_path):
    d = tmp_path / "d"
    prepare(config.load("synthetic_tiny", {"users": 40, "pins": 100, "boards": 10, "days": 20, "eval_days": 5}), d,
            progress=False)
    assert (d / "ground_truth" / "pin_topics.parquet").exists()
    report = prepare(config.load("ml100k"), d, progress=False)
    assert report.rows["pins"] == 1682 and io.read_meta(d)["dataset"] == "ml-100k"
    assert not list((d / "ground_truth").glob("*.parquet"))
    assert io.partitions(d, "events")[0] == "1997-09-20"  # the synthetic days are gone


WRITER = """
import sys, time
import numpy as np, pyarrow as pa
from components.data import durable, io
n = int(sys.argv[2])
t = pa.table({"user_id": pa.array(np.arange(n), pa.int64()), "pin_id": pa.array(np.arange(n), pa.int64()),
              "action_type": pa.array(np.full(n, "repin")), "surface": pa.array(np.full(n, "homefeed")),
              "timestamp": pa.array(np.full(n, 1704067200 + 5), pa.int64()),
              "duration_s": pa.array(np.full(n, 2.0, np.float32))})
io.write_partitioned(sys.argv[1], "events", t)
path = io.partition_path(sys.argv[1], "events", "2024-01-01")
print("writing", flush=True)
while True:  # what write_partitioned does for each day, back to back
    durable.atomic_write_parquet(t, path)
"""


def test_killed_writer_never_leaves_a_half_written_partition(tmp_path):
    """SIGKILL a real process that rewrites a large partition in a loop; readers see a whole file."""
    io.write_partitioned(tmp_path, "events", _events(50, DAY, 1.0))
    path = io.partition_path(tmp_path, "events", "2024-01-01")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for delay in (0.05, 0.3, 0.7):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "400000"], stdout=subprocess.PIPE,
                                env=env, cwd=REPO)
        assert proc.stdout.readline().strip() == b"writing", "the writer did not start"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        t = pq.read_table(path)  # a whole Parquet file: the old one or a new one
        assert t.num_rows in (50, 400_000)
        assert t.column("duration_s").to_numpy().min() in (1.0, 2.0)
    # at least one kill landed inside a write (its temp file is left behind), and temp files are never
    # taken for partitions
    assert list(path.parent.glob(".part-0.parquet.*.tmp"))
    assert io.partitions(tmp_path, "events") == ["2024-01-01"]
