"""The recommend service for real on the ``server`` stack profile: `homefeed serve recommend --stack S` in its own
process in front of Feast on Valkey (Redis online store) + its SQL registry on PostgreSQL, the Milvus 2.3.5 server and
a tritonserver, all from the session's ``server_stack`` fixture (tests/conftest.py; this module gets its own Feast
project and Milvus alias on those servers, and adds Triton to the stack). One service is shared by every test of
this module; every process is started on 127.0.0.1 / free ports and stopped by its process group.

Covered: auth (401), request validation (400/422 naming the field), unknown user -> popular pins, /readyz and
/metrics (with homefeed_serving_version_info), 8 concurrent clients while a daily run (embed + materialize + index
build + alias switch) runs underneath (zero 5xx; every response ranked by the ensemble or marked as a fallback),
SIGKILL of the daily run at each step, pin embeddings of another PinSage model refused with the reason, and Triton,
Milvus and Redis (Valkey) stopped and restarted on the same port (components.stack.stop_server / restart): /readyz
unready naming the dependency, 503 naming it (Milvus, Triton) or the feature-store fallback said in the response
(Redis), then recovery. HOMEFEED_SERVICE_LOAD_S sets the load duration (default 20 s; the issue's 60 s with
HOMEFEED_SERVICE_LOAD_S=60).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from components import cli, stack
from components.data import io
from components.data.baseline import content_embeddings
from components.data.tables import VersionedStore
from components.serving import milvus_index as mi
from components.serving import model_repository
from components.serving.contract import find_preprocess
from components.serving.recommend import RecommendConfig, Recommender
from components.serving.triton import free_port
from components.stack.processes import alive
from components.stackconfig import SecretRef, ServiceConfig, dump_stack, load_stack

ROOT = Path(__file__).resolve().parents[1]
LOAD_S = float(os.environ.get("HOMEFEED_SERVICE_LOAD_S", "20"))
pytestmark = pytest.mark.slow

# The daily run as its own process against the module's stack file: new embedding versions (same model, new
# content), Feast apply + materialize of the date (Redis), a new collection on the Milvus server and the alias
# switch. Prints a marker line before each step; "STEP alias" once every row is inserted (flush, index build, load
# and the alias switch follow).
DAILY = '''
import sys
import numpy as np
from components import cli
from components.data.tables import EmbeddingTable, VersionedStore
from components.serving import milvus_index as mi
from components.stackconfig import load_stack
emb, stack_file, data, base, date, seed = sys.argv[1:]
print("STEP embed", flush=True)
for name in ("users", "pins"):
    store = VersionedStore(f"{emb}/{name}")
    t = store.read(base)
    e = t.embeddings + 0.05 * np.random.default_rng(int(seed)).normal(size=t.embeddings.shape)
    e = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)
    store.publish(EmbeddingTable(t.ids, e, t.model_version, t.created_at, t.id_column), date, set_current=True)
print("STEP materialize", flush=True)
assert cli.main(["features", "apply", "--stack", stack_file, "--data", data, "--date", date,
                 "--user-embeddings", f"{emb}/users", "--pin-embeddings", f"{emb}/pins"]) == 0
assert cli.main(["features", "materialize", "--stack", stack_file, "--date", date]) == 0
print("STEP index", flush=True)
cfg = load_stack(stack_file)


def inserted(done, total):
    if done == total:
        print("STEP alias", flush=True)


mi.build_index(cfg.milvus.uri, f"{emb}/pins", alias=cfg.milvus.alias, on_batch=inserted,
               keep=cfg.milvus.keep_collections, token=cfg.milvus_token())
print("STEP done", flush=True)
'''


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 30) -> None:
    """Stop a process started with start_new_session=True and everything in its group; wait for them."""
    if proc.poll() is None or alive(proc.pid):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    end = time.monotonic() + grace
    while alive(proc.pid) and time.monotonic() < end:
        time.sleep(0.3)
    if alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    end = time.monotonic() + 15  # the group's other members are reaped by init a moment after SIGKILL
    while alive(proc.pid) and time.monotonic() < end:
        time.sleep(0.2)
    assert alive(proc.pid) == []


@pytest.fixture(scope="module")
def world(server_stack, tiny_data, tiny_ranker_export, tmp_path_factory):
    root = tmp_path_factory.mktemp("service")
    state = Path(server_stack.source).parent
    cfg = stack.isolated(server_stack, "service", root)
    pins, users = content_embeddings(tiny_data)  # stand-ins for PinnerFormer tables (one model version: content-v1)
    days = io.partitions(tiny_data, "impressions")
    base, date = days[-2], days[-1]
    emb = Path(cfg.embeddings.root)
    VersionedStore(emb / "users").publish(users, base)
    VersionedStore(emb / "pins").publish(pins, base)
    # the session's tiny ranker, trained on the same content embeddings (content-v1; tests/conftest.py)
    repo = model_repository.materialize(tiny_ranker_export / "export", root / "triton_repository")
    service = None
    try:
        triton = stack.add_triton(state, repo)
        cfg.triton.url, cfg.triton.protocol, cfg.triton.repository = triton.triton.url, "grpc", str(repo)
        cfg.service = ServiceConfig(token=SecretRef(env="HOMEFEED_API_TOKEN"), max_k=50, max_candidates=300)
        stack_file = dump_stack(cfg, root / "stack.yaml")
        assert cli.main(["features", "apply", "--stack", str(stack_file), "--data", str(tiny_data), "--date", base,
                         "--user-embeddings", str(emb / "users"), "--pin-embeddings", str(emb / "pins")]) == 0
        assert cli.main(["features", "materialize", "--stack", str(stack_file), "--date", base]) == 0
        assert cli.main(["index", "build", "--stack", str(stack_file), "--embeddings", str(emb / "pins")]) == 0
        token = secrets.token_urlsafe(24)  # generated per run, never committed
        port = free_port()
        log = open(root / "service.log", "wb")
        service = subprocess.Popen([sys.executable, "-m", "components.cli", "serve", "recommend", "--stack",
                                    str(stack_file), "--host", "127.0.0.1", "--port", str(port), "--concurrency", "4",
                                    "--candidates", "100"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "HOMEFEED_API_TOKEN": token}, start_new_session=True)
        log.close()
        url = f"http://127.0.0.1:{port}"
        w = {"root": root, "url": url, "token": token, "state": state, "stack_file": stack_file, "cfg": cfg,
             "emb": emb, "data": tiny_data, "base": base, "date": date, "users": users, "service": service}
        _wait_ready(w, 300)
        yield w
    finally:
        if service is not None:
            _stop(service)
        if any(p.name == "triton" for p in stack.recorded_processes(state)):
            stack.stop_server(state, "triton")  # the stores stay up for the session's other modules


def _wait_ready(w, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        assert w["service"].poll() is None, (w["root"] / "service.log").read_text()[-3000:]
        try:
            r = requests.get(w["url"] + "/readyz", timeout=60)
            last = r.json()
            if r.status_code == 200:
                return last
        except requests.RequestException as e:  # not listening yet, or busy opening its first connections
            last = repr(e)
        time.sleep(0.5)
    pytest.fail(f"service not ready after {timeout} s: {last}\n{(w['root'] / 'service.log').read_text()[-3000:]}")


def _post(w, body, token: str | None = "ok", session=None, raw: bytes | None = None) -> requests.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {w['token'] if token == 'ok' else token}"}
    s = session or requests
    if raw is not None:
        return s.post(w["url"] + "/v1/recommend", data=raw, headers={**headers, "Content-Type": "application/json"},
                      timeout=60)
    return s.post(w["url"] + "/v1/recommend", json=body, headers=headers, timeout=60)


def _user(w, i: int = 7) -> int:
    return int(w["users"].ids[i])


def _ranked(out: dict) -> bool:
    return out["fallback"] is None and all(it["probabilities"] is not None for it in out["items"])


def test_recommend_ranks_with_probabilities_versions_and_timings(world):
    r = _post(world, {"user_id": _user(world), "k": 10, "surface": "homefeed", "exclude": []})
    assert r.status_code == 200, r.text
    out = r.json()
    assert _ranked(out) and len(out["items"]) == 10
    scores = [it["score"] for it in out["items"]]
    assert scores == sorted(scores, reverse=True)
    assert set(out["items"][0]["probabilities"]) >= {"save"} and -1 <= out["items"][0]["similarity"] <= 1
    assert out["versions"]["user_embeddings"] == "content-v1" == out["versions"]["ranker_user_embeddings"]
    assert out["versions"]["index_collection"].startswith(f"{world['cfg'].milvus.alias}_content_v1_")
    assert set(out["timings_ms"]) >= {"feast_user", "milvus", "feast_features", "triton", "total"}
    excluded = [it["pin_id"] for it in out["items"][:3]]
    again = _post(world, {"user_id": _user(world), "k": 10, "exclude": excluded}).json()
    assert not set(excluded) & {it["pin_id"] for it in again["items"]}


def test_unknown_user_gets_popular_pins_and_is_told(world):
    r = _post(world, {"user_id": 10**12, "k": 5})
    assert r.status_code == 200
    out = r.json()
    assert out["fallback"] == "unknown_user" and len(out["items"]) == 5
    assert all(it["score"] is None for it in out["items"])


@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_no_or_wrong_token_is_401(world, token):
    r = _post(world, {"user_id": 1}, token=token)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert "bearer token" in r.json()["message"]


BAD = [
    ({"user_id": 1, "k": 0}, 422, "k: must be between 1 and 50"),
    ({"user_id": 1, "k": 51}, 422, "k: must be between 1 and 50"),
    ({"user_id": 1, "candidates": 301}, 422, "candidates: must be between 1 and 300"),
    ({"user_id": 1, "candidates": -5}, 422, "candidates: must be between 1 and 300"),
    ({"user_id": 1, "surface": "nowhere"}, 422, "surface: unknown surface 'nowhere'"),
    ({"user_id": "abc"}, 422, "user_id: expected an integer"),
    ({"user_id": 1, "k": 2.5}, 422, "k: expected an integer"),
    ({"user_id": 1, "exclude": "7"}, 422, "exclude: expected a list"),
    ({"k": 3}, 422, "user_id: required"),
    ({"user_id": 1, "kk": 3}, 422, "kk: unknown field"),
    ([1, 2], 400, "body: expected a JSON object"),
]


@pytest.mark.parametrize("body,status,message", BAD, ids=[m.split(":")[0] + str(i) for i, (_, _, m) in enumerate(BAD)])
def test_bad_requests_name_the_field(world, body, status, message):
    r = _post(world, body)
    assert r.status_code == status, r.text
    assert message in r.json()["message"]


def test_malformed_json_is_400(world):
    r = _post(world, None, raw=b'{"user_id": 1,')
    assert r.status_code == 400 and r.json()["message"].startswith("body: not valid JSON")


def test_health_ready_and_metrics(world):
    assert requests.get(world["url"] + "/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(world["url"] + "/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["not_ready"] == []
    assert set(ready.json()["dependencies"]) == {"feast", "milvus", "triton"}
    _post(world, {"user_id": _user(world), "k": 3})
    text = requests.get(world["url"] + "/metrics", timeout=10).text
    for name in ('homefeed_requests_total{endpoint="/v1/recommend",status="200"}',
                 'homefeed_request_errors_total{error_class="unauthorized"}',
                 'homefeed_request_errors_total{error_class="bad_request"}',
                 'homefeed_fallbacks_total{reason="unknown_user"}',
                 'homefeed_stage_latency_seconds_bucket{le="0.05",stage="triton"}',
                 "homefeed_request_latency_seconds_count", 'homefeed_dependency_up{dependency="triton"} 1.0'):
        assert name in text, name
    out = _post(world, {"user_id": _user(world), "k": 3}).json()
    v = out["versions"]
    info = [line for line in requests.get(world["url"] + "/metrics", timeout=10).text.splitlines()
            if line.startswith("homefeed_serving_version_info{")]
    assert len(info) == 1 and info[0].endswith(" 1.0"), info  # one series: the versions now served
    for label, value in (("ranker_version", v["ranker"]), ("user_embedding_version", v["user_embeddings"]),
                         ("pin_index_collection", v["index_collection"])):
        assert f'{label}="{value}"' in info[0], (label, info)


def test_pin_embeddings_of_another_model_are_refused_with_the_reason(world, tmp_path):
    """The ranker records the PinSage table it was trained on (preprocess.json embedding_versions.pin); the
    feature store's pin embeddings of another model never reach it: the candidates in retrieval order, said so."""
    pre = json.loads(find_preprocess(world["cfg"].triton.repository).read_text())
    assert pre["embedding_versions"]["pin"] == "content-v1"  # what the ranker was trained on
    pre["embedding_versions"]["pin"] = "pinsage-0123456789ab"  # as if trained on another PinSage model
    (tmp_path / "preprocess.json").write_text(json.dumps(pre))
    stack_cfg = load_stack(world["stack_file"])
    uid = _user(world, 21)
    with Recommender(RecommendConfig.from_stack(stack_cfg, candidates=100)) as good:
        assert good.recommend(uid, 5).fallback is None
    with Recommender(RecommendConfig.from_stack(stack_cfg, preprocess=tmp_path / "preprocess.json",
                                                candidates=100)) as other:
        rec = other.recommend(uid, 5)
    assert rec.fallback == "incompatible_pin_embeddings" and len(rec.items) == 5
    assert all(it["score"] is None and it["probabilities"] is None and it["similarity"] is not None
               for it in rec.items)
    sims = [it["similarity"] for it in rec.items]
    assert sims == sorted(sims, reverse=True)
    assert "feature store pin embeddings of 'content-v1'" in rec.message
    assert "trained on 'pinsage-0123456789ab'" in rec.message and rec.versions["pin_embeddings"] == "content-v1"


def _daily(w, seed: int) -> subprocess.Popen:
    script = w["root"] / "daily.py"
    script.write_text(DAILY)
    return subprocess.Popen([sys.executable, str(script), str(w["emb"]), str(w["stack_file"]), str(w["data"]),
                             w["base"], w["date"], str(seed)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "HOMEFEED_QUIET": "1",
                                                           "PYTHONPATH": str(ROOT)}, start_new_session=True)


def _served(w) -> str:
    cfg = w["cfg"]
    client = mi.connect(cfg.milvus.uri, cfg.milvus_token())
    try:
        return mi.served_collection(client, cfg.milvus.alias)
    finally:
        client.close()


def _load(w, stop: threading.Event, results: list, clients: int = 8) -> list[threading.Thread]:
    users = w["users"].ids

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with requests.Session() as s:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    r = _post(w, {"user_id": int(rng.choice(users)), "k": 10}, session=s)
                    results.append((r.status_code, time.perf_counter() - t0, r.json()))
                except requests.RequestException as e:
                    results.append((0, time.perf_counter() - t0, {"error": str(e)}))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    return threads


def test_load_while_a_daily_run_publishes(world, record_property):
    before = _served(world)
    stop, results = threading.Event(), []
    threads = _load(world, stop, results)
    t0 = time.monotonic()
    run = _daily(world, seed=1)
    out, _ = run.communicate(timeout=600)
    daily_s = time.monotonic() - t0
    time.sleep(max(0.0, LOAD_S - daily_s))
    stop.set()
    for t in threads:
        t.join(60)
    assert run.returncode == 0, out.decode()[-3000:]
    after = _served(world)
    assert after != before  # the run switched the alias while the clients were asking
    statuses = [s for s, _, _ in results]
    assert len(results) >= 8 and statuses.count(200) == len(statuses), {s: statuses.count(s) for s in set(statuses)}
    bodies = [b for _, _, b in results]
    assert all(_ranked(b) or b["fallback"] for b in bodies)
    lat = np.array([t for _, t, _ in results]) * 1000
    fallbacks = {b["fallback"]: sum(x["fallback"] == b["fallback"] for x in bodies) for b in bodies if b["fallback"]}
    stats = {"requests": len(results), "seconds": round(max(LOAD_S, daily_s), 1), "clients": 8,
             "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
             "daily_run_s": round(daily_s, 1), "fallbacks": fallbacks, "5xx": 0}
    record_property("service_load", json.dumps(stats))
    print(f"\nservice load during a daily run: {stats}")
    # the service follows the switch: a later answer comes from the new collection
    deadline = time.monotonic() + 30
    while _post(world, {"user_id": _user(world), "k": 3}).json()["versions"]["index_collection"] != after:
        assert time.monotonic() < deadline
        time.sleep(0.5)


@pytest.mark.parametrize("step", ["embed", "materialize", "index", "alias"])
def test_sigkill_of_the_daily_run_at_each_step_keeps_serving(world, step):
    marker = f"STEP {step}"  # alias: every row is inserted; flush, index build, load and the alias switch follow
    served = _served(world)
    users_current = VersionedStore(world["emb"] / "users").current()
    run = _daily(world, seed=10 + ["embed", "materialize", "index", "alias"].index(step))
    seen = b""
    while marker.encode() not in seen:
        chunk = run.stdout.read1(4096) if hasattr(run.stdout, "read1") else run.stdout.read(1)
        assert chunk, f"daily run ended before {marker}: {seen.decode()[-2000:]}"
        seen += chunk
    time.sleep(0.3 if step != "alias" else 0.0)
    _stop(run, signal.SIGKILL)
    run.stdout.close()
    now = _served(world)
    if step != "alias":
        assert now == served  # killed before the switch: the previous collection serves
    else:
        assert now in (served, now)
    assert VersionedStore(world["emb"] / "users").read() is not None  # CURRENT names a complete table
    if step == "embed":
        assert VersionedStore(world["emb"] / "users").current() in (users_current, world["date"])
    for _ in range(5):
        r = _post(world, {"user_id": _user(world, 11), "k": 5})
        assert r.status_code == 200, r.text
        out = r.json()
        assert _ranked(out) or out["fallback"]
    if step == "alias":  # the last kill: the next run completes and serves
        run = _daily(world, seed=20)
        out, _ = run.communicate(timeout=600)
        assert run.returncode == 0, out.decode()[-3000:]
        final = _served(world)
        deadline = time.monotonic() + 30
        while _post(world, {"user_id": _user(world), "k": 3}).json()["versions"]["index_collection"] != final:
            assert time.monotonic() < deadline
            time.sleep(0.5)


def _wait_unready(w, dependency: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = requests.get(w["url"] + "/readyz", timeout=60)
        body = r.json()
        if r.status_code == 503 and dependency in body["not_ready"]:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.5)


def test_triton_stopped_then_back(world):
    stack.stop_server(world["state"], "triton")
    body = _wait_unready(world, "triton")
    assert body["dependencies"]["triton"].startswith("unavailable:") and body["dependencies"]["feast"] == "ok"
    r = _post(world, {"user_id": _user(world), "k": 5})
    assert r.status_code == 503 and r.json()["dependency"] == "triton", r.text
    assert r.json()["message"].startswith("triton:")
    assert _post(world, {"user_id": 10**12, "k": 5}).status_code == 200  # popular pins need no Triton
    back = stack.restart(world["state"], "triton")
    assert back.endpoint == world["cfg"].triton.url  # the same port: the service reconnects where it was
    _wait_ready(world, 120)
    r = _post(world, {"user_id": _user(world), "k": 5})
    assert r.status_code == 200 and _ranked(r.json())


def test_milvus_stopped_then_back(world):
    stack.stop_server(world["state"], "milvus")
    body = _wait_unready(world, "milvus")
    assert body["dependencies"]["milvus"].startswith("unavailable:")
    r = _post(world, {"user_id": _user(world), "k": 5})
    assert r.status_code == 503 and r.json()["dependency"] == "milvus", r.text
    back = stack.restart(world["state"], "milvus")
    assert back.endpoint == world["cfg"].milvus.uri
    _wait_ready(world, 180)
    deadline = time.monotonic() + 120
    while (r := _post(world, {"user_id": _user(world), "k": 5})).status_code != 200:
        assert time.monotonic() < deadline, r.text
        time.sleep(1)
    assert _ranked(r.json())


def test_redis_stopped_then_back(world):
    """The online store down: /readyz names feast; requests are answered by the documented feature-store
    fallbacks (docs/service.md), never a 5xx: a user this process has seen gets its last good embedding and the
    candidates in retrieval order, an unseen one the popular pins. Valkey back on the same port with its data:
    ranked again."""
    uid = _user(world, 5)
    assert _ranked(_post(world, {"user_id": uid, "k": 5}).json())  # the user's embedding is now cached
    stack.stop_server(world["state"], "valkey")
    body = _wait_unready(world, "feast")
    assert body["dependencies"]["feast"].startswith("unavailable:") and "redis" in body["dependencies"]["feast"].lower(), body
    assert body["dependencies"]["milvus"].startswith("ok") and body["dependencies"]["triton"] == "ok"
    seen = _post(world, {"user_id": uid, "k": 5})
    assert seen.status_code == 200, seen.text
    out = seen.json()
    assert out["fallback"] == "ranker_features_unavailable" and len(out["items"]) == 5, out
    assert "feature store read of ranker features failed" in out["message"]
    unseen = _post(world, {"user_id": 10**12 + 1, "k": 5})
    assert unseen.status_code == 200 and unseen.json()["fallback"] == "feature_store_unavailable", unseen.text
    assert "feature store read failed" in unseen.json()["message"]
    metrics = requests.get(world["url"] + "/metrics", timeout=10).text
    assert 'homefeed_dependency_up{dependency="feast"} 0.0' in metrics
    back = stack.restart(world["state"], "valkey")
    assert back.endpoint == world["cfg"].feast.online_store.connection_string
    _wait_ready(world, 120)
    r = _post(world, {"user_id": uid, "k": 5})
    assert r.status_code == 200 and _ranked(r.json()), r.text  # the restarted store still holds the features
