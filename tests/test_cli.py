"""The ``homefeed`` console script end to end (a real subprocess of the installed entry point)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from _shared import prepare_output

from components.data import io

REPO = Path(__file__).resolve().parents[1]
HOMEFEED = Path(sys.executable).parent / "homefeed"


def homefeed(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    if not HOMEFEED.exists():
        pytest.fail(f"console script {HOMEFEED} is not installed (pip install -e . makes it)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(HOMEFEED), *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"homefeed {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_lists_the_command_groups():
    out = homefeed("--help").stdout
    for group in ("data", "train", "embed", "features", "index", "serve", "recommend", "pipeline", "bench", "report"):
        assert group in out
    assert "prepare" in homefeed("data", "--help").stdout



def test_group_modules_table_matches_what_each_module_registers():
    """cli.GROUP_MODULES (the modules imported for a group) names exactly the modules that add commands to it."""
    import argparse
    import importlib

    from components import cli

    registers: dict[str, set[str]] = {g: set() for g in cli.GROUPS}

    class Touched(dict):  # the groups a module's register() reaches for
        def __getitem__(self, g):
            registers[g].add(self.module)
            return super().__getitem__(g)

    for mod in cli.COMMAND_MODULES:
        parser = argparse.ArgumentParser()
        top = parser.add_subparsers()
        groups = Touched()
        groups.module = mod
        for g in cli.GROUPS:
            gp = top.add_parser(g)
            dict.__setitem__(groups, g, gp.add_subparsers())
            dict.__getitem__(groups, g).group_parser = gp
        importlib.import_module(f"components.commands.{mod}").register(groups)
    assert {g: set(m) for g, m in cli.GROUP_MODULES.items()} == registers


def test_a_light_command_does_not_import_torch():
    """`homefeed data validate` builds only the data group's commands: no torch, LightGBM or Kubernetes import."""
    code = ("import sys; from components.cli import main; rc = main(['data', 'validate', '/nonexistent-dir']); "
            "print(rc, sorted(m for m in ('torch', 'lightgbm', 'kubernetes') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.stdout.split("\n")[-2] == "2 []", proc.stdout + proc.stderr
    assert "not a directory" in proc.stderr and "Traceback" not in proc.stderr

def test_prepare_and_validate_ml100k(ml100k_data):
    """The session's ML-100k directory is made by the console script (tests/_shared.py build_ml100k_data)."""
    d = ml100k_data
    assert "preparing ml-100k" in prepare_output(d)
    out = homefeed("data", "validate", str(d)).stdout
    for line in ("| pins | 1,682 |", "| users | 943 |", "| events | 100,000 |", "| boards | 5,925 |",
                 "| date range | 1997-09-20 .. 1998-04-22 |", "| eval split | from 1998-03-25"):
        assert line in out, out
    assert "| action mix | closeup 34.2%, click 27.2%, repin 21.2%, hide 17.5% |" in out
    assert "impressions" in out and out.rstrip().endswith("valid")
    assert (d / "config.yaml").exists() and "dataset: ml-100k" in (d / "config.yaml").read_text()
    summary = json.loads(homefeed("data", "validate", str(d), "--json").stdout)
    assert summary["rows"]["events"] == 100_000 and summary["summary"]["users"] == 943


def test_synthetic_flags_and_bad_data_exit_nonzero(tmp_path):
    d = tmp_path / "syn"
    homefeed("data", "prepare", "--dataset", "synthetic", "--experiment", "synthetic_tiny", "--users", "60",
             "--pins", "150", "--boards", "12", "--days", "20", "--seed", "5", "--set", "eval_days=5",
             "--out", str(d))
    out = homefeed("data", "validate", str(d)).stdout
    assert "| users | 60 |" in out and "| pins | 150 |" in out and "| boards | 12 |" in out
    assert "seed: 5" in (d / "config.yaml").read_text()

    day = io.partitions(d, "events")[0]
    part = io.partition_path(d, "events", day)
    t = pq.read_table(part)
    n = t.num_rows
    i = t.schema.get_field_index("duration_s")
    dur = t["duration_s"].to_numpy().copy()
    dur[:2] = -1.0
    pq.write_table(t.set_column(i, "duration_s", pc.cast(dur, "float32")), part)
    shutil.copy(d / "pins.parquet", tmp_path / "pins.bak")
    pins = pq.read_table(d / "pins.parquet")
    pq.write_table(pins.drop_columns(["features"]), d / "pins.parquet")

    bad = homefeed("data", "validate", str(d), check=False)
    assert bad.returncode == 2
    assert "valid\n" not in bad.stdout
    assert "error: invalid data" in bad.stderr
    assert f"events/dt={day}/part-0.parquet: column 'duration_s': 2 of {n} rows are negative" in bad.stderr
    assert "pins.parquet: missing column 'features'" in bad.stderr and "all 150 rows" in bad.stderr

    shutil.copy(tmp_path / "pins.bak", d / "pins.parquet")
    still_bad = homefeed("data", "validate", str(d), check=False)
    assert still_bad.returncode == 2 and "pins.parquet" not in still_bad.stderr


@pytest.mark.parametrize("args, message", [
    (["data", "prepare", "--experiment", "synthetic_tiny", "--set", "bogus=1", "--out", "{tmp}/x"],
     "unknown key 'bogus' for DataConfig"),
    (["data", "prepare", "--experiment", "synthetic_tiny", "--set", "users=many", "--out", "{tmp}/x"],
     "key 'users' expects an int, got 'many'"),
    (["data", "prepare", "--experiment", "ranker_tiny", "--out", "{tmp}/x"],
     "experiment 'ranker_tiny' is a ranker experiment, expected a data one"),
    (["data", "validate", "{tmp}/does-not-exist"], "does-not-exist: not a directory"),
    (["data", "prepare", "--dataset", "ml-100k", "--users", "5", "--out", "{tmp}/x"],
     "--users: only for --dataset synthetic"),
])
def test_cli_errors_are_clear(tmp_path, args, message):
    proc = homefeed(*[a.format(tmp=tmp_path) for a in args], check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
