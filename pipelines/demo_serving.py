"""The demo's serving half: tritonserver over the exported ranker and the recommend service over the demo's stores.

``serve_and_measure`` starts both (recorded by process group in ``<out>/serving.json``), asks for a few users'
recommendations and times a batch of requests per stage (``<out>/recommend_latency.json``); ``stop_serving``
stops what a demo left running, each server only while its recorded process is still the one the demo started.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from components.data.durable import atomic_write_json
from components.stackconfig import SecretRef, dump_stack, load_stack
from pipelines.demo_console import Console, rel_path

DEMO_USERS = 3
LATENCY_REQUESTS = 60  # recommend requests timed per stage for the report
SERVING_FILE = "serving.json"


def _post(url: str, token: str, body: dict[str, Any], timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the recommend service exited with code {proc.returncode}; see {rel_path(log)}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as e:
            last = e.read().decode(errors="replace")[:300]
        except OSError as e:
            last = str(e)
        time.sleep(1.0)
    raise RuntimeError(f"the recommend service was not ready within {timeout_s:.0f} s ({last}); see {rel_path(log)}")


def write_stack(out: Path, daily: dict[str, Any], triton_url: str, repository: Path) -> tuple[Path, Path]:
    """The demo's stores as a stack file (the ``local`` profile with the demo's paths) and a fresh bearer token
    file (mode 0600) it references: what ``homefeed serve recommend`` and ``homefeed recommend`` read."""
    p = daily["parameters"]
    secrets_dir = out / "secrets"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    token_file = secrets_dir / "api-token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(16))
    cfg = load_stack("local")
    cfg.feast.repo = str(Path(p["feature_repo"]).resolve())
    cfg.milvus.uri = str(Path(p["milvus_uri"]).resolve())
    cfg.embeddings.root = str(Path(p["embeddings_root"]).resolve())
    cfg.triton.url, cfg.triton.protocol, cfg.triton.repository = triton_url, "grpc", str(repository.resolve())
    cfg.service.token = SecretRef(file=str(token_file))
    return dump_stack(cfg, out / "stack.yaml"), token_file


def serve_and_measure(out: Path, training: dict[str, Any], daily: dict[str, Any], console: Console,
                      users: int = DEMO_USERS, requests: int = LATENCY_REQUESTS) -> dict[str, Any]:
    """Start tritonserver over the exported ranker and the recommend service over the demo's stores (recorded
    in ``<out>/serving.json`` by process group); ask it for a few users' recommendations and time
    ``requests`` more per stage (``<out>/recommend_latency.json``)."""
    # the serving imports come after the output is routed to the log (import-time warnings)
    import numpy as np

    from components.data.tables import VersionedStore
    from components.serving.model_repository import materialize
    from components.serving.triton import TritonServer, free_port

    export_dir = Path(training["artifacts"]["export-ranker"]["exported"]["path"])
    repo = materialize(export_dir, out / "triton_repository", target="python_onnx")
    server = TritonServer(repo, log_path=out / "tritonserver.log").start()
    record: dict[str, Any] = {"processes": [{"name": "tritonserver", "pgid": server.process.pid,
                                             "match": "tritonserver"}]}
    atomic_write_json(record, out / SERVING_FILE)
    stack_file, token_file = write_stack(out, daily, server.grpc_url, repo)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = out / "service.log"
    with log.open("ab") as f:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "homefeed"), "serve", "recommend", "--stack",
                                 str(stack_file), "--host", "127.0.0.1", "--port", str(port)],
                                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    record["processes"].append({"name": "recommend service", "pgid": proc.pid, "match": "serve recommend"})
    record.update({"url": url, "stack": str(stack_file), "token_file": str(token_file)})
    atomic_write_json(record, out / SERVING_FILE)
    _wait_ready(url, proc, log)
    console.line(f"serving: recommend service {url} (log {rel_path(log)}) over tritonserver {server.grpc_url}, "
                 f"Feast SQLite, Milvus Lite; stack file {rel_path(stack_file)}")

    token = token_file.read_text().strip()
    table = VersionedStore(Path(daily["parameters"]["embeddings_root"]) / "users").read()
    rng = np.random.default_rng(0)
    picked = sorted(rng.choice(table.ids, size=min(users, len(table)), replace=False).tolist())
    shown, stages = [], {}
    for user in picked:
        status, body = _post(f"{url}/v1/recommend", token, {"user_id": int(user), "k": 10, "surface": "homefeed"})
        if status != 200:
            raise RuntimeError(f"POST {url}/v1/recommend for user {user}: HTTP {status} {body}")
        shown.append(body)
        top = ", ".join(str(it["pin_id"]) for it in body["items"][:5])
        console.line(f"  POST /v1/recommend user {user}: top pins {top}"
                     + (f" (fallback: {body['fallback']})" if body.get("fallback") else ""))
    for user in rng.choice(table.ids, size=requests, replace=True).tolist():
        t = time.perf_counter()
        status, body = _post(f"{url}/v1/recommend", token, {"user_id": int(user), "k": 10, "surface": "homefeed"})
        if status != 200:
            raise RuntimeError(f"POST {url}/v1/recommend for user {user}: HTTP {status} {body}")
        for stage, ms in body["timings_ms"].items():
            stages.setdefault(stage, []).append(float(ms))
        stages.setdefault("http round trip", []).append(1000 * (time.perf_counter() - t))
    path = atomic_write_json({"requests": requests, "k": 10, "users": len(table), "url": url, "stages": stages,
                              "recommendations": shown}, out / "recommend_latency.json")
    p50 = {k: float(np.percentile(v, 50)) for k, v in stages.items()}
    console.line(f"  {requests} requests, p50 per stage: " + ", ".join(f"{k} {v:.1f} ms" for k, v in p50.items()))
    return {"latency": str(path), "users": picked, "url": url, "stack": str(stack_file),
            "token_file": str(token_file)}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def stop_serving(out: Path) -> list[str]:
    """Stop the servers a demo in ``out`` left running (``serving.json``): each by its process group, only if
    the recorded process is still the one the demo started (its command line matches). Returns their names."""
    # pymilvus, redis, psycopg, imported after the output is routed to the log (import-time warnings)
    from components.stack.processes import stop_group

    path = out / SERVING_FILE
    if not path.exists():
        return []
    stopped = []
    for p in reversed(json.loads(path.read_text()).get("processes", [])):
        if p["match"] in _cmdline(p["pgid"]):
            left = stop_group(p["pgid"], signal.SIGTERM, grace_s=15.0)
            if left:
                raise RuntimeError(f"{p['name']} (process group {p['pgid']}) still running: {left}")
            stopped.append(p["name"])
    path.unlink()
    return stopped
