"""``homefeed stack up|down``: start the servers a stack profile needs, write the resolved stack file, stop them.

``up("server", state_dir)`` generates the secrets (``state_dir/secrets/*``, mode 0600), starts Valkey,
PostgreSQL and the Milvus server in parallel, then ``feast serve`` (and tritonserver when a model
repository is given), every one on 127.0.0.1 and a free port, and writes ``state_dir/stack.yaml``: a
StackConfig naming those endpoints, secrets by ``{file: ...}`` reference, every path absolute. The other
commands read it (``--stack state_dir/stack.yaml``). ``state_dir/processes.json`` records each server's
process group (``recorded_processes(state_dir)`` reads it); ``down(state_dir)`` ends them by process group
(from any process) and checks that none is left. ``up("local", state_dir)`` starts only Triton (if asked): the
local stores are files.

``running(profile, state_dir)`` is the context manager tests use; ``add_triton`` starts Triton later on a
running stack (a test trains the ranker after the stores are up). ``stop_server(state_dir, name)`` stops one
server and ``restart(state_dir, name)`` starts it again on its recorded port, data directory and password
reference, so its clients reconnect to the same endpoint (fault drills; tests/test_service.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from components.stack.milvus_server import start_milvus
from components.stack.processes import StackError, alive, endpoint_port, remove, stop_group
from components.stack.servers import Proc, start_feast_serve, start_postgres, start_triton, start_valkey
from components.stackconfig import PROFILES, SecretRef, StackConfig, dump_stack, feast_secret_env, load_stack

STACK_FILE = "stack.yaml"
PROCESSES_FILE = "processes.json"
__all__ = ["StackError", "up", "down", "running", "add_triton", "recorded_processes", "stop_server", "restart", "STACK_FILE"]


def _secret_file(state: Path, name: str) -> SecretRef:
    d = state / "secrets"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    path = d / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16))
    return SecretRef(file=str(path))


def recorded_processes(state_dir: str | Path) -> list[Proc]:
    """The servers ``up``/``add_triton``/``restart`` recorded in ``state_dir/processes.json`` (empty when none).

    Not named ``processes``: a package attribute of that name would hide the submodule
    ``components.stack.processes`` (``import components.stack.processes`` would then reach this function)."""
    f = Path(state_dir) / PROCESSES_FILE
    return [Proc(**p) for p in json.loads(f.read_text())] if f.exists() else []


def _record(state: Path, procs: list[Proc]) -> None:
    tmp = state / f".{PROCESSES_FILE}.tmp"
    tmp.write_text(json.dumps([p.to_dict() for p in procs], indent=2))
    tmp.replace(state / PROCESSES_FILE)


def _base(profile: str, state: Path) -> StackConfig:
    cfg = load_stack(profile)
    cfg.feast.repo = str(state / "feature_repo")
    cfg.embeddings.root = str(state / "embeddings")
    cfg.triton.repository = str(state / "triton_repository")
    cfg.service.token = _secret_file(state, "api-token")
    if profile == "local":
        cfg.milvus.uri = str(state / "milvus.db")
    return cfg


def up(profile: str, state_dir: str | Path, triton_repository: str | Path | None = None,
       feast_server: bool = True) -> StackConfig:
    """Start what ``profile`` needs; write and return ``state_dir/stack.yaml``. On any failure every server
    started so far is stopped before the error propagates."""
    # feast is heavy (its import took 88 of the 277 s `make demo-stop` spent at load 9) and only up() needs it:
    # `import components.stack.processes` (demo-stop, stack down, the tests' process checks) must not pay for it
    from components.serving import feast_store

    if profile not in PROFILES:
        raise StackError(f"unknown profile '{profile}'; expected one of {', '.join(PROFILES)}")
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    if any(alive(p.pgid) for p in recorded_processes(state)):
        raise StackError(f"{state}: a stack is already running there; `homefeed stack down --state {state}` first")
    cfg = _base(profile, state)
    procs: list[Proc] = []
    try:
        if profile == "server":
            redis_pw, pg_pw, milvus_pw = (_secret_file(state, n) for n in ("redis-password", "postgres-password",
                                                                             "milvus-password"))
            with ThreadPoolExecutor(3) as pool:  # the three stores start in parallel
                futures = {"valkey": pool.submit(start_valkey, state, redis_pw.resolve()),
                           "postgres": pool.submit(start_postgres, state, pg_pw.resolve()),
                           "milvus": pool.submit(start_milvus, state, milvus_pw.resolve())}
                errors = []
                for name, fut in futures.items():
                    try:
                        procs.append(fut.result())
                    except Exception as e:  # noqa: BLE001 - collect, stop the others, then report
                        errors.append(f"{name}: {e}")
                _record(state, procs)
                if errors:
                    raise StackError("; ".join(errors))
            by = {p.name: p for p in procs}
            cfg.feast.online_store.connection_string = by["valkey"].endpoint
            cfg.feast.online_store.password = redis_pw
            cfg.feast.registry.path = f"postgresql+psycopg://postgres@{by['postgres'].endpoint}/postgres"
            cfg.feast.registry.password = pg_pw
            token_file = state / "secrets" / "milvus-token"  # user:password, as MilvusClient(token=) takes it
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"root:{milvus_pw.resolve()}")
            cfg.milvus.uri = by["milvus"].endpoint
            cfg.milvus.token = SecretRef(file=str(token_file))
            feast_store.init_repo(cfg.feast.repo, stack=cfg)
            if feast_server:
                procs.append(start_feast_serve(Path(cfg.feast.repo), feast_secret_env(cfg), state,
                                               registry_ttl_s=cfg.feast.registry.cache_ttl_seconds))
                cfg.feast.server_url = procs[-1].endpoint
                _record(state, procs)
        else:
            feast_store.init_repo(cfg.feast.repo, stack=cfg)
            cfg.feast.server_url = ""
        cfg.source = str(state / STACK_FILE)
        dump_stack(cfg, state / STACK_FILE)
        if triton_repository is not None:
            cfg = add_triton(state, triton_repository)
    except BaseException:
        _stop(procs)
        (state / PROCESSES_FILE).unlink(missing_ok=True)
        raise
    return cfg


def add_triton(state_dir: str | Path, repository: str | Path) -> StackConfig:
    """Start tritonserver over ``repository`` on a running stack; record it and update the stack file."""
    state = Path(state_dir).resolve()
    cfg = load_stack(state / STACK_FILE)
    _stop([p for p in recorded_processes(state) if p.name == "triton"])  # one Triton per stack: never orphan the previous
    proc = start_triton(Path(repository), state)
    _record(state, [p for p in recorded_processes(state) if p.name != "triton"] + [proc])
    cfg.triton.url, cfg.triton.protocol, cfg.triton.repository = proc.endpoint, "grpc", str(Path(repository).resolve())
    dump_stack(cfg, state / STACK_FILE)
    cfg.source = str(state / STACK_FILE)
    return cfg


def _recorded(state: Path, name: str) -> Proc:
    by = {p.name: p for p in recorded_processes(state)}
    if name not in by:
        raise StackError(f"{state}: no server '{name}' recorded; recorded: {', '.join(by) or 'none'}")
    return by[name]


def stop_server(state_dir: str | Path, name: str) -> None:
    """Stop the recorded server ``name`` (valkey, postgres, milvus, feast-serve, triton) by its process group;
    its data, port and secrets stay, so :func:`restart` brings it back. Valkey saves its data on the way out."""
    state = Path(state_dir).resolve()
    p = _recorded(state, name)
    left = stop_group(p.pgid, signal.Signals(p.stop_signal))
    if left:
        raise StackError(f"{name} (process group {p.pgid}) still running after SIGKILL: {left}")


def restart(state_dir: str | Path, name: str) -> Proc:
    """Start the recorded server ``name`` again (stopping it first if it still runs) on the same port, data
    directory and password reference (``state_dir/secrets``), record its new process group and return it.
    The endpoints in ``stack.yaml`` stay valid: clients reconnect where they were."""
    state = Path(state_dir).resolve()
    old = _recorded(state, name)
    if alive(old.pgid):
        stop_server(state, name)
    cfg = load_stack(state / STACK_FILE)
    port = endpoint_port(old.endpoint)
    if name == "valkey":
        proc = start_valkey(state, cfg.feast.online_store.password.resolve("feast.online_store.password"), port=port)
    elif name == "postgres":
        proc = start_postgres(state, cfg.feast.registry.password.resolve("feast.registry.password"), port=port)
    elif name == "milvus":
        etcd = (int(old.extra["etcd_client"]), int(old.extra["etcd_peer"]))
        proc = start_milvus(state, _secret_file(state, "milvus-password").resolve("milvus password"), port=port,
                            etcd_ports=etcd)
    elif name == "feast-serve":
        proc = start_feast_serve(Path(cfg.feast.repo), feast_secret_env(cfg), state,
                                 registry_ttl_s=cfg.feast.registry.cache_ttl_seconds, port=port)
    elif name == "triton":
        ports = (endpoint_port(old.extra["http"]), port, int(old.extra["metrics"]))
        proc = start_triton(Path(old.extra.get("repository") or cfg.triton.repository), state, ports=ports)
        remove(old.cleanup)  # the stopped server's scratch directory (backend copies)
    else:
        raise StackError(f"{name}: no restart for this server")
    proc.cleanup = sorted(set(old.cleanup) | set(proc.cleanup)) if name != "triton" else proc.cleanup
    _record(state, [proc if p.name == name else p for p in recorded_processes(state)])
    return proc


def _stop(procs: list[Proc]) -> list[str]:
    """Stop in reverse start order; returns descriptions of anything left alive."""
    left = []
    for p in reversed(procs):
        pids = stop_group(p.pgid, signal.Signals(p.stop_signal))
        if pids:
            left.append(f"{p.name} (process group {p.pgid}: {pids})")
        else:
            remove(p.cleanup)
    return left


def down(state_dir: str | Path, purge: bool = False) -> list[str]:
    """Stop every server recorded in ``state_dir`` by process group; ``purge`` also removes the state
    (data, secrets). Returns the names stopped; raises if any process is left."""
    state = Path(state_dir).resolve()
    procs = recorded_processes(state)
    left = _stop(procs)
    if left:
        raise StackError(f"{state}: still running after SIGKILL: {', '.join(left)}")
    (state / PROCESSES_FILE).unlink(missing_ok=True)
    if purge:
        remove([str(state)])
    return [p.name for p in procs]


@contextmanager
def running(profile: str, state_dir: str | Path, triton_repository: str | Path | None = None,
            feast_server: bool = True, purge: bool = True) -> Iterator[StackConfig]:
    """``up`` on entry, ``down`` on exit (even on errors)."""
    cfg = up(profile, state_dir, triton_repository=triton_repository, feast_server=feast_server)
    try:
        yield cfg
    finally:
        down(state_dir, purge=purge)


def isolated(cfg: StackConfig, name: str, root: str | Path) -> StackConfig:
    """A copy of a running stack for one test or run: its own Feast project (Redis keys and registry rows are
    per project), repo instance, Milvus alias and embedding root; the servers are shared."""
    c = dataclasses.replace(cfg, feast=dataclasses.replace(cfg.feast, project=name, repo=str(Path(root) / "feature_repo")),
                            milvus=dataclasses.replace(cfg.milvus, alias=f"{name}_pins"),
                            embeddings=dataclasses.replace(cfg.embeddings, root=str(Path(root) / "embeddings")))
    c.source = cfg.source
    return c
