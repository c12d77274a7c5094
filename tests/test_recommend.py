"""The whole recommend path for real, driven through the CLI: Feast (SQLite) -> Milvus Lite -> Feast -> a real
tritonserver started by `homefeed serve triton` in its own process."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from components import cli
from components.data import io
from components.data.baseline import content_embeddings
from components.data.tables import write_table
from components.models import ranker_inputs
from components.serving.recommend import RecommendConfig, Recommender

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stack(tiny_data, tiny_ranker_export, tmp_path_factory):
    root = tmp_path_factory.mktemp("recommend")
    pins, users = content_embeddings(tiny_data)  # stand-ins for PinSage / PinnerFormer tables (same 64-d space)
    write_table(pins, root / "pins.parquet")
    write_table(users, root / "users.parquet")
    for part in ("model", "export"):  # the run's tiny ranker_tiny and its export (tests/conftest.py)
        (root / part).symlink_to(tiny_ranker_export / part)
    day = io.partitions(tiny_data, "impressions")[-1]
    repo = root / "feature_repo"
    assert cli.main(["features", "apply", "--repo", str(repo), "--data", str(tiny_data), "--date", day,
                     "--user-embeddings", str(root / "users.parquet"), "--pin-embeddings", str(root / "pins.parquet")]) == 0
    assert cli.main(["features", "materialize", "--repo", str(repo), "--date", day]) == 0
    milvus = str(root / "milvus.db")
    assert cli.main(["index", "build", "--uri", milvus, "--embeddings", str(root / "pins.parquet")]) == 0
    ready = root / "ready.json"
    serve = subprocess.Popen([sys.executable, "-m", "components.cli", "serve", "triton", "--export", str(root / "export"),
                              "--repository", str(root / "triton_repository"), "--ready-file", str(ready)],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while not ready.exists():
        if serve.poll() is not None or time.monotonic() > deadline:
            os.killpg(serve.pid, signal.SIGKILL)
            pytest.fail(f"homefeed serve triton did not get ready:\n{serve.stdout.read().decode()}")
        time.sleep(0.2)
    endpoints = json.loads(ready.read_text())
    yield {"root": root, "repo": repo, "milvus": milvus, "endpoints": endpoints, "pins": pins, "users": users,
           "data": tiny_data}
    serve.send_signal(signal.SIGTERM)  # the command stops its server's whole process group
    assert serve.wait(timeout=60) == 0
    with pytest.raises(ProcessLookupError):
        os.kill(endpoints["pid"], 0)


def _cfg(stack, **kw) -> RecommendConfig:
    return RecommendConfig(feature_repo=stack["repo"], milvus_uri=stack["milvus"], triton_url=stack["endpoints"]["grpc"],
                           preprocess=stack["root"] / "triton_repository", **kw)


def test_recommend_runs_the_whole_path(stack):
    users, pins = stack["users"], stack["pins"]
    uid = int(users.ids[7])
    with Recommender(_cfg(stack, candidates=100)) as rec:
        out = rec.recommend(uid, k=20)
        assert not out.cold_start and len(out.items) == 20
        scores = [it["score"] for it in out.items]
        assert scores == sorted(scores, reverse=True)
        # retrieval: the similarities are the real cosine of the user and pin embeddings
        for it in out.items:
            want = float(users.embeddings[7] @ pins.lookup(np.array([it["pin_id"]]))[0][0])
            assert it["similarity"] == pytest.approx(want, abs=1e-4)
        # candidates are the nearest pins: every returned pin is within the exact top-100 (HNSW may miss a few)
        exact = set(pins.ids[np.argsort(-(pins.embeddings @ users.embeddings[7]))[:120]].tolist())
        assert {it["pin_id"] for it in out.items} <= exact
        # ranking: the scores are the trained model's on the same features
        top = np.array([it["pin_id"] for it in out.items])
        raw, _ = rec.ranker_inputs(uid, top, dt.datetime.now(dt.UTC))
        np.testing.assert_array_equal(raw["user_embedding"][0], users.embeddings[7])
        np.testing.assert_array_equal(raw["pin_embedding"], pins.lookup(top)[0])
        from components.models.ranker import load_model

        model, _, _ = load_model(stack["root"] / "model")
        pre = rec.pre
        x = (ranker_inputs.normalize_dense(raw["dense"], pre["dense"]["mean"], pre["dense"]["std"]),
             ranker_inputs.clamp_sparse(raw["sparse"], pre["sparse"]["cardinalities"]), raw["surface"],
             raw["user_embedding"], raw["pin_embedding"])
        with torch.no_grad():
            _, score = model.predict(*(torch.from_numpy(np.ascontiguousarray(a)) for a in x))
        np.testing.assert_allclose([it["score"] for it in out.items], score[:, 0].numpy(), atol=1e-5)
        assert set(out.items[0]["probabilities"]) == set(pre["tasks"])
        assert set(out.timings_ms) >= {"feast_user", "milvus", "feast_features", "triton", "total"}


def test_unknown_user_gets_popular_pins_and_is_told(stack):
    with Recommender(_cfg(stack)) as rec:
        out = rec.recommend(10**9, k=5)
    assert out.cold_start and "cold start" in out.message and str(10**9) in out.message
    assert len(out.items) == 5 and all(it["score"] is None for it in out.items)
    assert len({it["pin_id"] for it in out.items}) == 5


def test_recommend_cli_prints_ranked_pins(stack, capsys):
    uid = int(stack["users"].ids[3])
    rc = cli.main(["recommend", "--user", str(uid), "--k", "5", "--feature-repo", str(stack["repo"]),
                   "--milvus", stack["milvus"], "--triton", stack["endpoints"]["http"], "--protocol", "http",
                   "--repository", str(stack["root"] / "triton_repository"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["user_id"] == uid and not out["cold_start"] and len(out["items"]) == 5
    assert [it["rank"] for it in out["items"]] == [1, 2, 3, 4, 5]


def test_recommend_cli_names_an_unreachable_triton(stack, capsys):
    from components.serving.triton import free_port

    url = f"127.0.0.1:{free_port()}"
    rc = cli.main(["recommend", "--user", "1", "--feature-repo", str(stack["repo"]), "--milvus", stack["milvus"],
                   "--triton", url, "--protocol", "http", "--repository", str(stack["root"] / "triton_repository")])
    assert rc == 2 and f"Triton at {url} (http) is not reachable" in capsys.readouterr().err
