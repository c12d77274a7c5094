"""The stack config and the ``server`` profile for real: Feast on Valkey (Redis) with its SQL registry on
PostgreSQL, ``feast serve`` over HTTP, the Milvus server with authorization; credentials read, wrong ones
refused naming the store; reads never fail during a materialization; a re-run of a date corrects Redis."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from pymilvus import MilvusClient

from components import stack, stackconfig
from components.data import io
from components.data.baseline import content_embeddings
from components.data.tables import write_table
from components.serving import feast_store
from components.serving import milvus_index as mi
from components.stack import milvus_server, servers
from components.stack.processes import alive, stop_group
from components.stackconfig import StackConfigError, load_stack, parse_stack

ROOT = Path(__file__).resolve().parents[1]


# ---- the config (no servers) ----------------------------------------------------------------------

def test_profiles_parse_and_generate_the_feast_config():
    local, server = load_stack("local"), load_stack("server")
    assert local.feast.online_store.type == "sqlite" and local.feast.registry.type == "file"
    assert server.feast.online_store.type == "redis" and server.feast.registry.type == "sql"
    assert server.milvus.token == stackconfig.SecretRef(env="MILVUS_TOKEN")
    fs = stackconfig.feature_store_yaml(server)
    assert fs["online_store"]["connection_string"] == "127.0.0.1:6379,password=${REDIS_PASSWORD}"
    assert fs["registry"]["path"] == "postgresql+psycopg://postgres:${FEAST_REGISTRY_PASSWORD}@127.0.0.1:5432/postgres"
    assert fs["registry"]["serve_features_while_materializing"] is True
    # the template repo's feature_store.yaml is what the local profile generates
    template = yaml.safe_load((ROOT / "feature_repo" / "feature_store.yaml").read_text())
    assert template == stackconfig.feature_store_yaml(local)
    # the cluster example (what the Helm chart renders) is a valid stack file naming Redis and the SQL registry
    cluster = load_stack(ROOT / "components" / "configs" / "stack" / "cluster-example.yaml")
    assert cluster.feast.online_store.type == "redis" and cluster.feast.registry.type == "sql"


def test_secret_values_come_from_env_or_file_only(tmp_path, monkeypatch):
    raw = yaml.safe_load((stackconfig.profile_path("server")).read_text())
    literal = {**raw, "milvus": {**raw["milvus"], "token": "root:Milvus"}}
    with pytest.raises(StackConfigError, match="milvus.token: a literal secret is not allowed"):
        parse_stack(literal, "s.yaml")
    in_url = {**raw, "feast": {**raw["feast"], "registry": {"type": "sql", "path": "postgresql://u:pw@h/db"}}}
    with pytest.raises(StackConfigError, match="feast.registry.path: holds a literal password"):
        parse_stack(in_url, "s.yaml")
    with pytest.raises(StackConfigError, match="feast.online_store.type: 'memcached' is not one of sqlite, redis"):
        parse_stack({**raw, "feast": {**raw["feast"], "online_store": {"type": "memcached"}}}, "s.yaml")
    with pytest.raises(StackConfigError, match=r"s.yaml: milvus: unknown key\(s\) tokn"):
        parse_stack({**raw, "milvus": {"tokn": {"env": "X"}}}, "s.yaml")
    with pytest.raises(StackConfigError, match="milvus.keep_collections: must be >= 1"):
        parse_stack({**raw, "milvus": {**raw["milvus"], "keep_collections": 0}}, "s.yaml")
    cfg = parse_stack(raw, "s.yaml")
    monkeypatch.delenv("MILVUS_TOKEN", raising=False)
    with pytest.raises(stackconfig.SecretError, match="milvus.token: environment variable MILVUS_TOKEN is not set"):
        cfg.milvus_token()
    monkeypatch.setenv("MILVUS_TOKEN", "root:abc")
    assert cfg.milvus_token() == "root:abc"
    ref = stackconfig.SecretRef(file=str(tmp_path / "missing"))
    with pytest.raises(stackconfig.SecretError, match="missing"):
        ref.resolve("service.token")
    with pytest.raises(StackConfigError, match="no such stack file or profile"):
        load_stack("nope")


def test_stack_show_cli_and_bad_stack_file_exit_2(tmp_path, capsys):
    from components import cli

    assert cli.main(["stack", "show", "--stack", "server"]) == 0
    assert "connection_string: 127.0.0.1:6379" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("milvus: {token: hunter2}\n")
    assert cli.main(["index", "list", "--stack", str(bad)]) == 2
    assert "milvus.token: a literal secret is not allowed" in capsys.readouterr().err


# ---- the server profile ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tables(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("stack_tables")
    pins, users = content_embeddings(tiny_data)
    fixed = dataclasses.replace(users, embeddings=-users.embeddings, model_version="fixed")
    return {"pins": pins, "users": users, "fixed": fixed, "day": io.partitions(tiny_data, "impressions")[-1],
            "p_pins": write_table(pins, root / "pins.parquet"), "p_users": write_table(users, root / "users.parquet"),
            "p_fixed": write_table(fixed, root / "fixed.parquet")}


def _publish(cfg, data, t, users_path) -> Path:
    repo = feast_store.init_repo(cfg.feast.repo, stack=cfg)
    feast_store.write_sources(repo, data, t["day"], users_path, t["p_pins"])
    feast_store.apply(repo, cfg)
    feast_store.materialize(repo, t["day"], cfg)
    return repo


def test_credentials_are_read_and_wrong_ones_refused(server_stack, tmp_path):
    cfg = server_stack
    assert cfg.feast.online_store.password.file and cfg.milvus.token.file  # references, never values
    text = Path(cfg.source).read_text()
    for secret in (cfg.redis_password(), cfg.milvus_token(), cfg.feast.registry.password.resolve()):
        assert secret not in text
    repo = feast_store.init_repo(tmp_path / "repo", stack=cfg)
    assert "${HOMEFEED_FEAST_REDIS_PASSWORD}" in (repo / "feature_store.yaml").read_text()
    feast_store.open_store(repo, cfg)  # the right secrets work
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    bad = dataclasses.replace(cfg, feast=dataclasses.replace(
        cfg.feast, online_store=dataclasses.replace(cfg.feast.online_store, password=stackconfig.SecretRef(file=str(wrong)))))
    with pytest.raises(feast_store.FeatureStoreError, match=f"Redis online store at {cfg.feast.online_store.connection_string}: "
                       "authentication failed"):
        feast_store.open_store(repo, bad)
    bad = dataclasses.replace(cfg, feast=dataclasses.replace(
        cfg.feast, registry=dataclasses.replace(cfg.feast.registry, password=stackconfig.SecretRef(file=str(wrong)))))
    with pytest.raises(feast_store.FeatureStoreError, match=r"Feast SQL registry at postgresql\+psycopg://postgres:\*\*\*@.*"
                       "password authentication failed") as e:
        feast_store.open_store(repo, bad)
    assert "not-the-password" not in str(e.value)
    client = mi.connect(cfg.milvus.uri, cfg.milvus_token())
    client.list_collections()
    mi.disconnect(client, cfg.milvus.uri)
    for token in ("root:not-the-password", None):
        with pytest.raises(mi.MilvusIndexError, match=f"Milvus at {cfg.milvus.uri}: authentication failed"):
            c = mi.connect(cfg.milvus.uri, token)
            c.list_collections()  # in case the client connects lazily


def test_feast_on_redis_and_sql_registry_and_the_feature_server(server_stack, tiny_data, tables):
    """The stack's own project: what `feast serve` serves over HTTP equals what the SDK reads."""
    cfg, users, pins = server_stack, tables["users"], tables["pins"]
    repo = _publish(cfg, tiny_data, tables, tables["p_users"])
    got, found = feast_store.online_user_embeddings(repo, users.ids[:20], store=feast_store.open_store(repo, cfg))
    assert found.all()
    np.testing.assert_array_equal(got, users.embeddings[:20])
    ids = [int(u) for u in users.ids[:20]]
    body = json.dumps({"feature_service": "ranker_v1", "entities": {"user_id": ids, "pin_id": [int(p) for p in pins.ids[:20]]},
                       "full_feature_names": True}).encode()
    deadline = time.monotonic() + 60  # feast serve refreshes its registry copy every cache_ttl_seconds
    while True:
        req = urllib.request.Request(f"{cfg.feast.server_url}/get-online-features", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                out = json.loads(r.read())
            break
        except urllib.error.HTTPError as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"feast serve: {e.code} {e.read()[:500]}") from e
            time.sleep(1)
    names = out["metadata"]["feature_names"]
    http = {n: res["values"] for n, res in zip(names, out["results"])}
    sdk = feast_store.open_store(repo, cfg).get_online_features(
        features=feast_store.open_store(repo, cfg).get_feature_service("ranker_v1"),
        entity_rows=[{"user_id": u, "pin_id": int(p)} for u, p in zip(ids, pins.ids[:20])], full_feature_names=True).to_dict()
    assert set(http) == set(sdk)
    for name in sdk:
        if name.endswith("embedding"):
            np.testing.assert_allclose(np.array(http[name], np.float32), np.array(sdk[name], np.float32), rtol=1e-6)
        else:
            assert http[name] == sdk[name], name
    np.testing.assert_allclose(np.array(http["user_embedding__embedding"], np.float32), users.embeddings[:20], rtol=1e-6)


@pytest.mark.parametrize("profile", ["local", "server"])
def test_reads_never_fail_during_materialize_and_a_rerun_corrects(profile, server_stack, tiny_data, tables, tmp_path):
    """A reader thread during a materialization (the view goes MATERIALIZING): zero errors. Then a re-run of the
    same date with corrected embeddings replaces what the first run wrote (Redis included)."""
    cfg = load_stack("local") if profile == "local" else stack.isolated(server_stack, f"reader_{tmp_path.name[-6:]}", tmp_path)
    cfg.feast.repo = str(tmp_path / "feature_repo")
    users = tables["users"]
    repo = _publish(cfg, tiny_data, tables, tables["p_users"])
    store = feast_store.open_store(repo, cfg)
    stop, reads, errors = threading.Event(), [], []

    def reader():
        while not stop.is_set():
            try:
                emb, found = feast_store.online_user_embeddings(repo, users.ids[:5], store=store)
                reads.append(bool(found.all()))
            except Exception as e:  # noqa: BLE001 - counted: the test asserts there are none
                errors.append(repr(e))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        feast_store.write_sources(repo, tiny_data, tables["day"], tables["p_fixed"], None)
        loaded = feast_store.materialize(repo, tables["day"], cfg)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert errors == [] and len(reads) > 0 and all(reads), (errors[:3], len(reads))
    assert all(v.endswith("(reload)") for v in loaded.values())
    got, found = feast_store.online_user_embeddings(repo, users.ids[:20], store=feast_store.open_store(repo, cfg))
    assert found.all()
    np.testing.assert_array_equal(got, tables["fixed"].embeddings[:20])


def test_index_on_the_milvus_server_keeps_and_rolls_back(server_stack, tables, tmp_path):
    cfg = stack.isolated(server_stack, f"idx_{tmp_path.name[-6:]}", tmp_path)
    token = cfg.milvus_token()
    pins = tables["pins"]
    v2 = dataclasses.replace(pins, embeddings=pins.embeddings[::-1].copy(), model_version="v2")
    c1 = mi.build_index(cfg.milvus.uri, tables["p_pins"], alias=cfg.milvus.alias, token=token, keep=2)
    c2 = mi.build_index(cfg.milvus.uri, write_table(v2, tmp_path / "v2.parquet"), alias=cfg.milvus.alias,
                        token=token, keep=2)
    assert mi.list_index(cfg.milvus.uri, cfg.milvus.alias, token) == (c2, [c2, c1])
    stack_file = stackconfig.dump_stack(cfg, tmp_path / "stack.yaml")
    from components import cli

    assert cli.main(["index", "rollback", "--stack", str(stack_file)]) == 0
    index = mi.PinIndex(cfg.milvus.uri, cfg.milvus.alias, token=token)
    try:
        assert mi.served_collection(index.client, cfg.milvus.alias) == c1
        assert (index.search(pins.embeddings[:5], 3)[0][:, 0] == pins.ids[:5]).all()
    finally:
        index.close()


def test_a_stopped_server_restarts_on_its_port_with_its_data_and_password(server_stack):
    """components.stack.stop_server / restart (the fault drills of tests/test_service.py): Valkey stopped, then
    started again from the recorded state: same endpoint, a new process group, the password from the same secret
    file, and the keys it held (saved on SIGTERM, loaded at start). An unknown name is an error naming the
    recorded servers."""
    import redis

    state = Path(server_stack.source).parent
    before = {p.name: p for p in stack.recorded_processes(state)}
    host, port = server_stack.feast.online_store.connection_string.rsplit(":", 1)
    password = server_stack.feast.online_store.password.resolve()

    def client(pw: str | None = password) -> redis.Redis:
        return redis.Redis(host=host, port=int(port), password=pw, socket_connect_timeout=2)

    c = client()
    c.set("homefeed:restart-probe", "kept")
    c.close()
    stack.stop_server(state, "valkey")
    assert alive(before["valkey"].pgid) == []
    with pytest.raises(redis.exceptions.ConnectionError):
        client().ping()
    back = stack.restart(state, "valkey")
    assert back.endpoint == before["valkey"].endpoint and back.pgid != before["valkey"].pgid
    assert {p.name: p.pgid for p in stack.recorded_processes(state)}["valkey"] == back.pgid  # recorded for `stack down`
    c = client()
    try:
        assert c.get("homefeed:restart-probe") == b"kept"
        c.delete("homefeed:restart-probe")
    finally:
        c.close()
    with pytest.raises(redis.exceptions.AuthenticationError):
        client("wrong").ping()
    with pytest.raises(stack.StackError, match="no server 'nope' recorded; recorded: .*valkey"):
        stack.restart(state, "nope")


def test_a_milvus_start_whose_binary_dies_before_it_is_ready_is_started_again(server_stack):
    """milvus-server's launcher keeps running when the standalone binary under it dies, so a start could wait out
    its whole timeout (a restart under load did: a goroutine dump after /healthz answered). Here the binary of a restart
    is killed (by its pid) as soon as it runs: the start sees it gone, keeps its logs, starts again and comes up
    on the same endpoint with the same password."""
    state = Path(server_stack.source).parent
    binary_dir = str(state / "milvus" / "bin")
    killed: list[int] = []
    done = threading.Event()

    def kill_the_first_binary() -> None:
        while not done.is_set() and not killed:
            for d in Path("/proc").iterdir():
                try:
                    argv = (d / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if d.name.isdigit() and argv[:3] == [f"{binary_dir}/milvus".encode(), b"run", b"standalone"]:
                    os.kill(int(d.name), signal.SIGKILL)
                    killed.append(int(d.name))
                    return
            time.sleep(0.05)

    stack.stop_server(state, "milvus")
    watcher = threading.Thread(target=kill_the_first_binary, daemon=True)
    watcher.start()
    try:
        back = stack.restart(state, "milvus")
    finally:
        done.set()
        watcher.join()
    assert len(killed) == 1
    kept = state / "milvus" / "logs" / "crashed-start-1"
    assert kept.is_dir() and (kept / "milvus-stderr.log").exists()
    assert back.endpoint == server_stack.milvus.uri
    client = MilvusClient(uri=back.endpoint, token=server_stack.milvus_token(), timeout=10)
    try:
        client.list_collections()
    finally:
        client.close()


def test_wait_names_a_server_that_died_under_its_launcher(tmp_path):
    """The detection itself, on a real process tree: a launcher whose child prints a Go-style panic and exits
    while the launcher sleeps on; _wait raises ServerCrashed quoting the panic and stops the launcher's group."""
    logs = tmp_path / "logs"
    logs.mkdir()
    child = "import sys, time; time.sleep(1); print('panic: boom', file=sys.stderr, flush=True); sys.exit(2)"
    launcher = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}], "
                f"stderr=open({str(logs / 'milvus-stderr.log')!r}, 'w')); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", launcher], start_new_session=True)
    try:
        with pytest.raises(servers.ServerCrashed, match=r"standalone binary \(pid \d+\) exited: milvus-stderr.log: panic: boom"):
            servers._wait("x", proc, tmp_path / "x.log", lambda: False, 60,
                          crashed=milvus_server._milvus_binary_exited(proc.pid, logs))
        assert alive(proc.pid) == []
    finally:
        stop_group(proc.pid)
        proc.wait()
