"""Every CLI class of docs/bad-input.md through the ``homefeed`` command line: exit code 2, the message
names the file/column/field, and no Python traceback reaches the user.

The classes run in one subprocess (``DRIVER``) that imports the CLI once and calls its entry point,
``components.cli:main`` (what the console script runs), once per class with file descriptors 1 and 2
redirected, so a traceback printed by any layer (or by a child process) is seen. Importing the CLI
takes several seconds, so one process for ~30 classes keeps this CI-sized; a few classes also run
through the installed console script itself to show both behave the same. Also here: ``data prepare``
SIGKILLed mid-run leaves the previous output intact, and ``replace_dir`` swaps never leave the target
missing, even when the swapping process is SIGKILLed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.data import durable, io
from components.serving import ranker_io

REPO = Path(__file__).resolve().parents[1]
HOMEFEED = Path(sys.executable).parent / "homefeed"

DRIVER = r"""
import json, os, sys, tempfile, traceback
from components.cli import main

results = []
for argv in json.load(open(sys.argv[1])):
    out = tempfile.TemporaryFile()
    saved = os.dup(1), os.dup(2)
    sys.stdout.flush(); sys.stderr.flush()
    os.dup2(out.fileno(), 1); os.dup2(out.fileno(), 2)
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse errors, explicit exits
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    except BaseException:  # what the interpreter would print and exit 1 with
        traceback.print_exc()
        rc = 1
    sys.stdout.flush(); sys.stderr.flush()
    os.dup2(saved[0], 1); os.dup2(saved[1], 2)
    out.seek(0)
    results.append({"argv": argv, "rc": rc, "output": out.read().decode(errors="replace")})
json.dump(results, open(sys.argv[2], "w"))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HOMEFEED_QUIET": "1", "PYTHONPATH": str(REPO)}


def run_classes(argvs: list[list[str]], tmp: Path) -> list[dict]:
    (tmp / "argv.json").write_text(json.dumps(argvs))
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp / "argv.json"), str(tmp / "out.json")],
                          capture_output=True, text=True, env=_env(), cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp / "out.json").read_text())


# ---------------------------------------------------------------------------------------------
# Corruptions of a valid data directory (a copy of the session's synthetic_tiny)
# ---------------------------------------------------------------------------------------------


def _first(d: Path, name: str = "events") -> Path:
    return io.partition_path(d, name, io.partitions(d, name)[0])


def _rewrite(path: Path, fn: Callable[[pa.Table], pa.Table]) -> None:
    pq.write_table(fn(pq.read_table(path)), path)


def _set(path: Path, col: str, fn: Callable[[pa.ChunkedArray], pa.Array]) -> None:
    _rewrite(path, lambda t: t.set_column(t.schema.get_field_index(col), col, fn(t[col])))


def _values(col: pa.ChunkedArray, row: int, value: object) -> pa.Array:
    v = col.to_pylist()
    v[row] = value
    return pa.array(v, col.type)


def _future(d: Path) -> None:
    t = pq.read_table(_first(d))
    ts = pa.array(np.full(t.num_rows, 4_070_908_800 + 60), pa.int64())  # 2099-01-01
    durable.atomic_write_parquet(t.set_column(t.schema.get_field_index("timestamp"), "timestamp", ts),
                            d / "events" / "dt=2099-01-01" / "part-0.parquet")


def _duplicate_events(d: Path) -> None:
    _rewrite(_first(d), lambda t: pa.concat_tables([t, t.slice(0, 1), t.slice(0, 1)]))


def _shared_request(d: Path) -> None:
    """One row of a request (with two or more rows) gets another user."""
    part = _first(d, "impressions")
    t = pq.read_table(part)
    req, users = t["request_id"].to_numpy(), t["user_id"].to_numpy()
    row = int(np.flatnonzero(req[1:] == req[:-1])[0]) + 1  # the second row of a request
    other = int(users[users != users[row]][0])
    _set(part, "user_id", lambda c: _values(c, row, other))


def _non_utf8(d: Path) -> None:
    part = _first(d)
    t = pq.read_table(part)
    raw = [s.encode() for s in t["surface"].to_pylist()]
    raw[2] = b"home\xff\xfe"
    _rewrite(part, lambda t: t.set_column(t.schema.get_field_index("surface"), "surface",
                                          pa.array(raw, pa.binary()).view(pa.string())))


def _every_partition_double(d: Path) -> None:
    for key in io.partitions(d, "events"):
        _set(io.partition_path(d, "events", key), "duration_s", lambda c: pc.cast(c, pa.float64()))


def _mixed_granularity(d: Path) -> None:
    t = pq.read_table(_first(d))
    month = str(io.month_of(t["timestamp"][0].as_py()))
    durable.atomic_write_parquet(t, d / "events" / f"dt={month}" / "part-0.parquet")


def _empty_partition(d: Path) -> None:
    _rewrite(_first(d), lambda t: t.slice(0, 0))


# (name, corruption of a copy of the data dir, expected text in the error)
DATA_CLASSES: list[tuple[str, Callable[[Path], None], str]] = [
    ("missing table", lambda d: (d / "boards.parquet").unlink(), "boards.parquet: missing (table 'boards'"),
    ("missing column", lambda d: _rewrite(d / "pins.parquet", lambda t: t.drop_columns(["features"])),
     "pins.parquet: missing column 'features'"),
    ("wrong dtype", lambda d: _set(d / "pins.parquet", "pin_id", lambda c: pc.cast(c, pa.float64())),
     "pins.parquet: column 'pin_id' has type double, expected int64"),
    ("NaN duration", lambda d: _set(_first(d), "duration_s", lambda c: _values(c, 1, float("nan"))),
     "column 'duration_s': 1 of"),
    ("negative duration", lambda d: _set(_first(d), "duration_s", lambda c: _values(c, 0, -4.0)),
     "are negative (expected >= 0)"),
    ("absurd duration 3e38", lambda d: _set(_first(d), "duration_s", lambda c: _values(c, 0, 3e38)),
     "are above the maximum 86400"),
    ("timestamp out of range", lambda d: _set(_first(d), "timestamp", lambda c: _values(c, 0, 12)),
     "are out of range (expected unix seconds"),
    ("timestamp in the wrong partition", lambda d: _set(_first(d), "timestamp", lambda c: pc.add(c, 5 * 86_400)),
     "fall outside the partition's day"),
    ("future partition dt=2099-01-01", _future, "events/dt=2099-01-01/part-0.parquet: column 'timestamp'"),
    ("partition named dt=garbage", lambda d: shutil.copytree(_first(d).parent, d / "events" / "dt=garbage"),
     "events/dt=garbage: partition 'dt=garbage' is not of the form dt=YYYY-MM-DD or dt=YYYY-MM"),
    ("stray part-1.parquet with another schema",
     lambda d: pq.write_table(pa.table({"junk": [1, 2]}), _first(d).parent / "part-1.parquet"),
     "/part-1.parquet: missing column 'user_id'"),
    ("duplicate events", _duplicate_events, "repeat an earlier row in every column (duplicate events"),
    ("request_id shared by two users", _shared_request, "request_id values have more than one user_id"),
    ("duplicate primary key", lambda d: _rewrite(d / "users.parquet", lambda t: pa.concat_tables([t, t.slice(0, 1)])),
     "users.parquet: column 'user_id': 1 of"),
    ("edge to an unknown pin", lambda d: _set(d / "pin_boards.parquet", "pin_id", lambda c: _values(c, 0, 10**12)),
     "point at unknown pins"),
    ("empty partition", _empty_partition, "table 'events' is empty: 0 rows"),
    ("truncated Parquet file", lambda d: _first(d).write_bytes(_first(d).read_bytes()[:100]),
     "cannot be read as Parquet"),
    ("non-UTF-8 strings", _non_utf8, "hold strings that are not valid UTF-8"),
    ("meta.json not JSON", lambda d: (d / "meta.json").write_bytes(b"{\xff"), "meta.json: not valid JSON"),
    ("meta.json missing a key", lambda d: io.write_meta(d, {k: v for k, v in io.read_meta(d).items()
                                                            if k != "feature_dim"}),
     "meta.json: missing key 'feature_dim'"),
    ("one problem in every partition", _every_partition_double,
     "column 'duration_s' has type double, expected float"),
    ("day and month partitions mixed", _mixed_granularity, "mixes day and month partitions"),
]


def test_data_classes_exit_2_with_the_file_named_and_no_traceback(tiny_data, tmp_path):
    argvs = []
    for i, (_name, corrupt, _expect) in enumerate(DATA_CLASSES):
        d = tmp_path / f"case{i}"
        shutil.copytree(tiny_data, d)
        corrupt(d)
        argvs.append(["data", "validate", str(d)])
    argvs.append(["data", "validate", str(tmp_path / "no-such-dir")])
    results = run_classes(argvs, tmp_path)
    expects = [(n, e) for n, _, e in DATA_CLASSES] + [("not a directory", "no-such-dir: not a directory")]
    for (name, expect), r in zip(expects, results):
        assert r["rc"] == 2, f"{name}: exit {r['rc']}\n{r['output']}"
        assert "Traceback" not in r["output"], f"{name}:\n{r['output']}"
        assert "error: invalid data" in r["output"] and expect in r["output"], f"{name}:\n{r['output']}"
    grouped = results[[n for n, _, _ in DATA_CLASSES].index("one problem in every partition")]["output"]
    days = len(io.partitions(tiny_data, "events"))
    assert grouped.count("duration_s") == 1 and f"events ({days} files, first events/dt=" in grouped


def _fake_export(root: Path, tamper: bool = False, manifest: bool = True) -> Path:
    """An export dir with a real-shaped preprocess.json; the ONNX bytes never get parsed (the digest check
    comes first)."""
    root.mkdir(parents=True)
    (root / "model.onnx").write_bytes(b"onnx bytes")
    pre = {"dims": {"n_dense": 1, "n_sparse": 1, "d_user": 2, "d_pin": 2, "n_tasks": 1},
           "dense": {"names": ["d_x"], "mean": [0.0], "std": [1.0]}, "sparse": {"names": ["s_x"], "cardinalities": [3]},
           "tasks": ["save"], "surfaces": ["homefeed"]}
    (root / "preprocess.json").write_text(json.dumps(pre))
    if manifest:
        ranker_io.write_manifest(root, ["model.onnx", "preprocess.json"])
    if tamper:
        (root / "model.onnx").write_bytes(b"onnx bytes, modified")
    return root


def test_prepare_serving_and_config_classes(tiny_data, tmp_path):
    published = tmp_path / "published"
    shutil.copytree(tiny_data, published)
    before = {p.relative_to(published): p.read_bytes() for p in published.rglob("*") if p.is_file()}
    not_data = tmp_path / "home"
    not_data.mkdir()
    (not_data / "notes.txt").write_text("keep me")
    tiny = ["data", "prepare", "--dataset", "synthetic", "--experiment", "synthetic_tiny"]
    classes = [
        ("negative --users", [*tiny, "--users", "-5", "--out", str(tmp_path / "x")], "key 'users' expects int >= 1"),
        ("NaN feature noise, refused at load", [*tiny, "--set", "feature_noise=.nan", "--out", str(tmp_path / "n")],
         "key 'feature_noise' expects float >= 0, got nan"),
        # a finite noise so large that float32 features overflow: only validation of the built sibling sees it
        ("overflowing feature noise, previous output kept",
         [*tiny, "--set", "feature_noise=1.0e+300", "--out", str(published)],
         "pins.parquet: column 'features': 800 of 800 rows hold NaN or infinite values"),
        ("--out is a folder that is not a data directory", [*tiny, "--out", str(not_data)],
         "is not a homefeed data directory"),
        ("days <= eval_days", [*tiny, "--days", "3", "--set", "eval_days=5", "--out", str(tmp_path / "y")],
         "days=3 must be greater than eval_days=5"),
        ("unknown --set key", [*tiny, "--set", "no_such_key=1", "--out", str(tmp_path / "z")],
         "unknown key 'no_such_key'"),
        ("tampered export", ["serve", "triton", "--export", str(_fake_export(tmp_path / "e1", tamper=True)),
                             "--repository", str(tmp_path / "r1"), "--materialize-only"],
         "model.onnx: SHA-256"),
        ("export without a manifest", ["serve", "triton", "--export", str(_fake_export(tmp_path / "e2", manifest=False)),
                                       "--repository", str(tmp_path / "r2"), "--materialize-only"],
         "manifest.json: missing"),
        ("export dir missing", ["serve", "triton", "--export", str(tmp_path / "nothing"),
                                "--repository", str(tmp_path / "r3"), "--materialize-only"],
         "model.onnx: missing"),
    ]
    results = run_classes([argv for _, argv, _ in classes], tmp_path)
    for (name, _, expect), r in zip(classes, results):
        assert r["rc"] == 2, f"{name}: exit {r['rc']}\n{r['output']}"
        assert "Traceback" not in r["output"], f"{name}:\n{r['output']}"
        assert expect in r["output"], f"{name}:\n{r['output']}"
    after = {p.relative_to(published): p.read_bytes() for p in published.rglob("*") if p.is_file()}
    assert after == before  # the failed prepare did not touch the published directory
    assert (not_data / "notes.txt").read_text() == "keep me" and not (tmp_path / "r1").exists()
    assert not [p for p in tmp_path.iterdir() if ".building-" in p.name]  # no temporary siblings left


def test_the_console_script_behaves_the_same(tmp_path):
    """Two classes through the installed ``homefeed`` executable itself (each start imports the whole CLI)."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "meta.json").write_text("{")
    cases = [(["data", "validate", str(d)], "meta.json: not valid JSON"),
             (["serve", "triton", "--export", str(_fake_export(tmp_path / "e", tamper=True)), "--repository",
               str(tmp_path / "r"), "--materialize-only"], "SHA-256")]
    for argv, expect in cases:
        proc = subprocess.run([str(HOMEFEED), *argv], capture_output=True, text=True, env=_env(), cwd=REPO,
                              timeout=600)
        assert proc.returncode == 2 and expect in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_fix_types_through_the_cli(tiny_data, tmp_path):
    d = tmp_path / "d"
    shutil.copytree(tiny_data, d)
    _set(d / "pins.parquet", "features", lambda c: pc.cast(c, pa.list_(pa.float64())))
    before, fixed = run_classes([["data", "validate", str(d)], ["data", "validate", "--fix-types", str(d)]], tmp_path)
    assert before["rc"] == 2 and "column 'features' has type list<" in before["output"], before["output"]
    assert fixed["rc"] == 0, fixed["output"]
    assert "column 'features' cast from list<double> to list<float>" in fixed["output"]
    assert fixed["output"].rstrip().endswith("valid")


# ---------------------------------------------------------------------------------------------
# SIGKILL: a killed prepare or directory swap never leaves the published output broken or missing
# ---------------------------------------------------------------------------------------------


def test_sigkilled_prepare_leaves_the_previous_output(tiny_data, tmp_path):
    published = tmp_path / "data"
    shutil.copytree(tiny_data, published)
    before = {p.relative_to(published): p.read_bytes() for p in published.rglob("*") if p.is_file()}
    argv = [sys.executable, "-m", "components.cli", "data", "prepare", "--dataset", "synthetic", "--experiment",
            "synthetic_tiny", "--set", "seed=9", "--out", str(published)]
    proc = subprocess.Popen(argv, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(tmp_path.glob(".data.building-*/*")):
        time.sleep(0.05)  # kill once it is building (its temporary sibling has files)
    assert proc.poll() is None, "prepare finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    after = {p.relative_to(published): p.read_bytes() for p in published.rglob("*") if p.is_file()}
    assert after == before
    # the next prepare clears the dead run's sibling and publishes
    from components import config
    from components.data.prepare import prepare

    prepare(config.load("synthetic_tiny", {"users": 30, "pins": 60, "boards": 6, "days": 8, "eval_days": 2}),
            published, progress=False)
    assert io.read_meta(published)["dataset"] == "synthetic" and len(io.partitions(published, "events")) <= 8
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


SWAPPER = """
import sys
from pathlib import Path
from components.data import durable
dst, i = Path(sys.argv[1]), 0
print("swapping", flush=True)
while True:
    i += 1
    src = dst.with_name(f".new-{i}")
    src.mkdir()
    for k in range(20):
        (src / f"f{k}").write_text(str(i))
    (src / "DONE").write_text(str(i))
    durable.replace_dir(src, dst)
"""


def test_replace_dir_never_leaves_the_target_missing_even_when_killed(tmp_path):
    dst = tmp_path / "published"
    dst.mkdir()
    for k in range(20):
        (dst / f"f{k}").write_text("0")
    (dst / "DONE").write_text("0")
    proc = subprocess.Popen([sys.executable, "-c", SWAPPER, str(dst)], env=_env(), cwd=REPO, stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"swapping"
    seen, missing = set(), 0
    stop = time.monotonic() + 3.0
    while time.monotonic() < stop:
        try:
            seen.add((dst / "DONE").read_text())
            (dst / "f7").read_text()
        except FileNotFoundError:
            missing += 1  # the folder (or a file of it) was not there at that instant
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert missing == 0
    assert len(seen) > 3, f"the swapper made too few swaps to test anything: {seen}"
    final = (dst / "DONE").read_text()
    assert {(dst / f"f{k}").read_text() for k in range(20)} == {final}  # the folder is whole after the kill
