"""The recommend service for real: `homefeed serve recommend --stack S` in its own process, in front of Feast (SQLite
online store), a real Milvus 2.3.5 server (a separate process, so a daily run can build the next index while the
service searches the current one) and a real tritonserver. One stack and one service are shared by every test of
this module (module fixture); every process is started on 127.0.0.1 / free ports and stopped by its process group.

Covered: auth (401), request validation (400/422 naming the field), unknown user -> popular pins, /readyz and
/metrics, 8 concurrent clients while a daily run (embed + materialize + index build + alias switch) runs underneath
(zero 5xx; every response ranked by the ensemble or marked as a fallback), SIGKILL of the daily run at each step,
and Triton / Milvus stopped and restarted (503 naming the dependency, /readyz unready, recovery).
HOMEFEED_SERVICE_LOAD_S sets the load duration (default 20 s; the issue's 60 s with HOMEFEED_SERVICE_LOAD_S=60).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from components import cli, config
from components.data import io
from components.data.baseline import content_embeddings
from components.data.tables import VersionedStore
from components.serving import milvus_index as mi
from components.serving.recommend import LastGood, RecommendConfig, Recommender
from components.serving.triton import free_port
from components.stack.servers import alive
from components.stackconfig import (
    FeastConfig,
    MilvusConfig,
    SecretRef,
    ServiceConfig,
    StackConfig,
    TritonConfig,
    dump_stack,
    load_stack,
)

ROOT = Path(__file__).resolve().parents[1]
LOAD_S = float(os.environ.get("HOMEFEED_SERVICE_LOAD_S", "20"))
pytestmark = pytest.mark.slow

# The daily run as its own process: new embedding versions (same model, new content), Feast apply + materialize
# of the date, a new Milvus collection and the alias switch. Prints a marker before each step.
DAILY = '''
import sys
import numpy as np
from components import cli
from components.data.tables import EmbeddingTable, VersionedStore
emb, repo, data, base, date, uri, seed = sys.argv[1:]
print("STEP embed", flush=True)
for name in ("users", "pins"):
    store = VersionedStore(f"{emb}/{name}")
    t = store.read(base)
    e = t.embeddings + 0.05 * np.random.default_rng(int(seed)).normal(size=t.embeddings.shape)
    e = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)
    store.publish(EmbeddingTable(t.ids, e, t.model_version, t.created_at, t.id_column), date, set_current=True)
print("STEP materialize", flush=True)
assert cli.main(["features", "apply", "--repo", repo, "--data", data, "--date", date,
                 "--user-embeddings", f"{emb}/users", "--pin-embeddings", f"{emb}/pins"]) == 0
assert cli.main(["features", "materialize", "--repo", repo, "--date", date]) == 0
print("STEP index", flush=True)
assert cli.main(["index", "build", "--uri", uri, "--embeddings", f"{emb}/pins"]) == 0
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


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # no SO_REUSEADDR, as milvus-server binds
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class Milvus:
    """A real Milvus standalone server (milvus==2.3.5) that can be stopped and started again on its data."""

    def __init__(self, data: Path):
        self.data, self.port, self.proc = data, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        # milvus-server takes --proxy-port as where to start looking for a free port: after a stop, wait until the
        # port is bindable again (the killed server's sockets sit in TIME_WAIT for up to a minute)
        deadline = time.monotonic() + 120
        while not _bindable(self.port):
            assert time.monotonic() < deadline, f"port {self.port} still in use"
            time.sleep(1)
        exe = Path(sys.executable).parent / "milvus-server"
        log = open(self.data / "server.log", "ab")
        self.proc = subprocess.Popen([str(exe), "--data", str(self.data / "milvus"), "--proxy-port", str(self.port)],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + 240
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"milvus-server exited:\n{(self.data / 'server.log').read_text()[-3000:]}")
            try:
                client = mi.connect(self.uri)
                client.list_collections()
                client.close()
                return
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def stop(self) -> None:
        _stop(self.proc)


class Triton:
    """`homefeed serve triton` on fixed ports (so a restart comes back where the service looks)."""

    def __init__(self, root: Path, export: Path):
        self.root, self.export = root, export
        self.http, self.grpc = free_port(), free_port()
        self.proc = None

    def start(self, materialize: bool = True) -> None:
        ready = self.root / "triton_ready.json"
        ready.unlink(missing_ok=True)
        args = ["--export", str(self.export)] if materialize else []
        self.proc = subprocess.Popen([sys.executable, "-m", "components.cli", "serve", "triton", *args,
                                      "--repository", str(self.root / "triton_repository"), "--http-port",
                                      str(self.http), "--grpc-port", str(self.grpc), "--ready-file", str(ready)],
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 180
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                _stop(self.proc, signal.SIGKILL)
                pytest.fail("homefeed serve triton did not get ready")
            time.sleep(0.2)

    def stop(self) -> None:
        _stop(self.proc)


@pytest.fixture(scope="module")
def world(tiny_data, tmp_path_factory):
    from components.serving.export import export_ranker
    from components.training.ranker import train

    root = tmp_path_factory.mktemp("service")
    pins, users = content_embeddings(tiny_data)  # stand-ins for PinnerFormer tables (one model version: content-v1)
    days = io.partitions(tiny_data, "impressions")
    base, date = days[-2], days[-1]
    emb = root / "embeddings"
    VersionedStore(emb / "users").publish(users, base)
    VersionedStore(emb / "pins").publish(pins, base)
    train(config.load("ranker_tiny"), tiny_data, root / "model")  # on the content embeddings (content-v1)
    export_ranker(root / "model", root / "export", data_dir=tiny_data)
    repo = root / "feature_repo"
    assert cli.main(["features", "apply", "--repo", str(repo), "--data", str(tiny_data), "--date", base,
                     "--user-embeddings", str(emb / "users"), "--pin-embeddings", str(emb / "pins")]) == 0
    assert cli.main(["features", "materialize", "--repo", str(repo), "--date", base]) == 0
    (root / "milvus").mkdir()
    milvus = Milvus(root / "milvus")
    triton = Triton(root, root / "export")
    service = None
    try:
        milvus.start()
        assert cli.main(["index", "build", "--uri", milvus.uri, "--embeddings", str(emb / "pins")]) == 0
        triton.start()
        stack = StackConfig(feast=FeastConfig(repo=str(repo)), milvus=MilvusConfig(uri=milvus.uri),
                            triton=TritonConfig(url=f"127.0.0.1:{triton.grpc}", protocol="grpc",
                                                repository=str(root / "triton_repository")),
                            service=ServiceConfig(token=SecretRef(env="HOMEFEED_API_TOKEN"), max_k=50,
                                                  max_candidates=300))
        stack_file = dump_stack(stack, root / "stack.yaml")
        token = secrets.token_urlsafe(24)  # generated per run, never committed
        port = free_port()
        log = open(root / "service.log", "wb")
        service = subprocess.Popen([sys.executable, "-m", "components.cli", "serve", "recommend", "--stack",
                                    str(stack_file), "--host", "127.0.0.1", "--port", str(port), "--concurrency", "4",
                                    "--candidates", "100"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "HOMEFEED_API_TOKEN": token}, start_new_session=True)
        log.close()
        url = f"http://127.0.0.1:{port}"
        w = {"root": root, "url": url, "token": token, "milvus": milvus, "triton": triton, "emb": emb, "repo": repo,
             "data": tiny_data, "base": base, "date": date, "users": users, "service": service}
        _wait_ready(w, 300)
        yield w
    finally:
        for part in (service, triton.proc, milvus.proc):
            if part is not None:
                _stop(part)
        shutil.rmtree(root / "milvus" / "milvus", ignore_errors=True)  # ~500 MB of server binaries and data


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
    assert out["versions"]["index_collection"].startswith("pins_content_v1_")
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


def test_feature_store_failure_falls_back_and_says_so(world, tmp_path):
    """Feast failing (here: an instance of the same repo whose SQLite online store cannot be opened) never fails
    the request: the user's last good embedding from the shared cache, or the popular pins, each marked."""
    stack = load_stack(world["root"] / "stack.yaml")
    broken = tmp_path / "feature_repo"
    shutil.copytree(world["repo"], broken, ignore=shutil.ignore_patterns("online.db"))
    (broken / "state" / "online.db").mkdir()  # sqlite cannot open a directory: every online read fails
    cache = LastGood()
    uid = _user(world, 21)
    with Recommender(RecommendConfig.from_stack(stack, candidates=100), cache=cache) as good:
        assert good.recommend(uid, 5).fallback is None  # fills the cache
    with Recommender(RecommendConfig.from_stack(stack, feature_repo=broken, candidates=100), cache=cache) as bad:
        cached = bad.recommend(uid, 5)
        cold = bad.recommend(_user(world, 22), 5)
    # the user embedding from the cache, then the ranker-feature read fails too: retrieval order, said so
    assert cached.fallback == "ranker_features_unavailable" and len(cached.items) == 5
    assert all(it["similarity"] is not None and it["probabilities"] is None for it in cached.items)
    assert "feature store read of ranker features failed" in cached.message
    assert cold.fallback == "feature_store_unavailable" and len(cold.items) == 5 and cold.items[0]["score"] is None
    assert "feature store read failed" in cold.message


def _daily(w, seed: int) -> subprocess.Popen:
    script = w["root"] / "daily.py"
    script.write_text(DAILY)
    return subprocess.Popen([sys.executable, str(script), str(w["emb"]), str(w["repo"]), str(w["data"]), w["base"],
                             w["date"], w["milvus"].uri, str(seed)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "HOMEFEED_QUIET": "1",
                                                           "PYTHONPATH": str(ROOT)}, start_new_session=True)


def _served(w) -> str:
    client = mi.connect(w["milvus"].uri)
    try:
        return mi.served_collection(client)
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
    marker = {"embed": "STEP embed", "materialize": "STEP materialize", "index": "STEP index",
              "alias": "inserted"}[step]  # `inserted n/n`: every row is in; flush, index, load, alias switch follow
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
    world["triton"].stop()
    body = _wait_unready(world, "triton")
    assert body["dependencies"]["triton"].startswith("unavailable:") and body["dependencies"]["feast"] == "ok"
    r = _post(world, {"user_id": _user(world), "k": 5})
    assert r.status_code == 503 and r.json()["dependency"] == "triton", r.text
    assert r.json()["message"].startswith("triton:")
    assert _post(world, {"user_id": 10**12, "k": 5}).status_code == 200  # popular pins need no Triton
    world["triton"].start(materialize=False)
    _wait_ready(world, 120)
    r = _post(world, {"user_id": _user(world), "k": 5})
    assert r.status_code == 200 and _ranked(r.json())


def test_milvus_stopped_then_back(world):
    world["milvus"].stop()
    body = _wait_unready(world, "milvus")
    assert body["dependencies"]["milvus"].startswith("unavailable:")
    r = _post(world, {"user_id": _user(world), "k": 5})
    assert r.status_code == 503 and r.json()["dependency"] == "milvus", r.text
    world["milvus"].start()
    _wait_ready(world, 180)
    deadline = time.monotonic() + 120
    while (r := _post(world, {"user_id": _user(world), "k": 5})).status_code != 200:
        assert time.monotonic() < deadline, r.text
        time.sleep(1)
    assert _ranked(r.json())
