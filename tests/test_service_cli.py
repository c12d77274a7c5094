"""Bad input to the serving CLI (#15): each case runs `homefeed ...` in a subprocess and must end with a clear
error naming the field / file / server, exit code 2 and no Python traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.serving.triton import free_port

ROOT = Path(__file__).resolve().parents[1]


def _homefeed(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "components.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=180, env={**os.environ, "HOMEFEED_QUIET": "1", **(env or {})})


def _preprocess(tmp_path: Path) -> Path:
    """A well-formed preprocess.json (the contract's fields), so the command gets as far as Milvus."""
    p = tmp_path / "export" / "preprocess.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"dense": {"names": ["d_a"], "mean": [0.0], "std": [1.0]},
                             "sparse": {"names": ["s_a"], "cardinalities": [3]}, "surfaces": ["homefeed"],
                             "tasks": ["save"], "dims": {"d_user": 4, "d_pin": 4, "n_dense": 1, "n_sparse": 1}}))
    return p


CASES = {
    "k_zero": (["--k", "0"], "k: must be between 1 and 200, got 0"),
    "k_over_limit": (["--k", "100000"], "k: must be between 1 and 200, got 100000"),
    "candidates_zero": (["--candidates", "0"], "candidates: must be between 1 and 2000, got 0"),
    "candidates_negative": (["--candidates", "-5"], "candidates: must be between 1 and 2000, got -5"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_recommend_limits(case, tmp_path):
    args, message = CASES[case]
    r = _homefeed("recommend", "--user", "1", "--preprocess", str(_preprocess(tmp_path)), *args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


def test_malformed_preprocess_json(tmp_path):
    bad = tmp_path / "preprocess.json"
    bad.write_text('{"dense": {"names": [')
    r = _homefeed("recommend", "--user", "1", "--preprocess", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{bad}: not valid JSON" in r.stderr
    bad.write_text('{"dense": {"names": []}, "sparse": {"names": []}, "surfaces": ["homefeed"], "tasks": []}')
    r = _homefeed("recommend", "--user", "1", "--preprocess", str(bad))
    assert r.returncode == 2 and "field 'dims' missing" in r.stderr and "Traceback" not in r.stderr


def test_milvus_lite_path_typo_is_an_error_and_creates_nothing(tmp_path):
    typo = tmp_path / "servign" / "milvus.db"
    r = _homefeed("recommend", "--user", "1", "--preprocess", str(_preprocess(tmp_path)), "--milvus", str(typo))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{typo}: no Milvus Lite database at this path" in r.stderr
    assert not typo.exists() and not typo.parent.exists()


def test_unreachable_milvus_server(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    r = _homefeed("recommend", "--user", "1", "--preprocess", str(_preprocess(tmp_path)), "--milvus", uri)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"milvus: Milvus at {uri}" in r.stderr


def test_serve_recommend_needs_a_token_and_a_readable_token_file(tmp_path):
    env = {"HOMEFEED_API_TOKEN": ""}
    missing = tmp_path / "nope" / "token"
    r = _homefeed("serve", "recommend", "--port", str(free_port()), "--token-file", str(missing), env=env)
    assert r.returncode == 2 and f"cannot read secret file {missing}" in r.stderr and "Traceback" not in r.stderr
    r = _homefeed("serve", "recommend", "--port", str(free_port()), env=env)
    assert r.returncode == 2 and "HOMEFEED_API_TOKEN is not set" in r.stderr and "Traceback" not in r.stderr


def test_embed_set_current_rejects_a_path_escape(tmp_path):
    r = _homefeed("embed", "set-current", "--store", str(tmp_path), "--version", "x/../../../escaped")
    assert r.returncode == 2 and "not a valid name" in r.stderr and "Traceback" not in r.stderr


HOLD = "import sys, time\nfrom pymilvus import MilvusClient\nMilvusClient(uri=sys.argv[1])\nprint('held', flush=True)\ntime.sleep(120)\n"


def test_milvus_lite_held_by_another_process_is_one_clear_error(tmp_path):
    """A Milvus Lite file another process holds open (a running `homefeed serve recommend --stack local`): the
    command names that, exit 2, without milvus_lite's own traceback before it."""
    db = tmp_path / "milvus.db"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(db)], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = _homefeed("recommend", "--user", "1", "--preprocess", str(_preprocess(tmp_path)), "--milvus", str(db))
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "Failed to start MilvusLite" not in r.stderr, r.stderr
    assert f"{db}: the Milvus Lite database is held by another process" in r.stderr
