"""Milvus standalone (the ``milvus==2.3.5`` wheel's ``milvus-server``) with authorization enabled, for the
``server`` profile: the default ``root:Milvus`` password is replaced by a generated one at start, the embedded etcd
gets its own ports, and the wheel's binaries are unpacked once per user. The wheel's launcher keeps running when the
standalone binary under it dies, so a start watches the binary itself and tries once more when it dies before the
server is ready.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pymilvus import MilvusClient

from components.serving.triton import free_port
from components.stack.processes import StackError, group_states, wait_port_free
from components.stack.servers import Proc, ServerCrashed, _spawn, _tail, _wait

__all__ = ["MILVUS_CONFIG", "MILVUS_START_ATTEMPTS", "start_milvus"]


def _link_milvus_binaries(bin_dir: Path) -> None:
    """Unpack the wheel's lzma-compressed server binaries (~500 MB) once into a user cache and symlink them
    into ``bin_dir`` with their checksum files, so a new data directory does not decompress them again
    (tens of seconds of CPU per start)."""
    import milvus  # the dev extras' 500 MB server wheel: imported only when a server stack starts

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "homefeed" / f"milvus-{milvus.__version__}"
    if not (cache / "bin" / "milvus.lzma.md5").exists():
        tmp = cache.with_name(f"{cache.name}.tmp{os.getpid()}")
        milvus._initialize_data_files(str(tmp))
        try:
            tmp.replace(cache)
        except OSError:  # another process unpacked it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    bin_dir.mkdir(parents=True, exist_ok=True)
    for f in (cache / "bin").iterdir():
        link = bin_dir / f.name
        if not link.exists():
            link.symlink_to(f)


# Milvus settings the stack's server starts with (the wheel's --extra-config key=value; a cluster sets the same keys
# in the Milvus chart's config). A segment seals at sealProportion (0.23) x maxSize: at the default 512 MB that is
# ~450k 64-d pins, so a 500k or 1M catalogue became 2-3 segments, which Milvus then compacts and re-indexes in the
# background after the alias has moved, and every segment is one more HNSW search per query (bench_milvus_search.py
# with 16 MB segments: five segments, the idle server at 0.79 cores, top-500 search 21.8 ms p50 vs 12.5 ms in one
# segment; docs/service.md). At 2048 MB one segment holds ~1.8M 64-d pins (~450k at d = 256).
MILVUS_CONFIG: dict[str, str] = {"dataCoord.segment.maxSize": "2048"}


def start_milvus(state: Path, password: str, timeout_s: float = 420.0, port: int | None = None,
                 etcd_ports: tuple[int, int] | None = None, config: dict[str, str] | None = None) -> Proc:
    """The Milvus 2.3.5 standalone server with authorization; user ``root``'s password set to ``password``.

    ``port`` and ``etcd_ports`` (a restart): start again on the same data directory, proxy and etcd ports; the
    password was set by the first start and is only checked. ``config``: Milvus settings (dotted keys of its
    milvus.yaml) instead of :data:`MILVUS_CONFIG` (a benchmark's other segment size)."""
    restart = port is not None
    exe = Path(sys.executable).parent / "milvus-server"
    if not exe.exists():
        raise StackError(f"{exe}: missing; install the dev extras (milvus==2.3.5)")
    data = state / "milvus"
    _link_milvus_binaries(data / "bin")
    if restart:
        wait_port_free(port, reuse_addr=False)
    else:
        port = free_port()
    log = state / "logs" / "milvus.log"
    # The embedded etcd listens on etcd's default client/peer ports (2379/2380) unless given a config file:
    # two servers on one machine (or anything else on 2380) would collide. Milvus reads etcd.config.path from
    # the environment (ETCD_CONFIG_PATH).
    etcd_client, etcd_peer = etcd_ports or (free_port(), free_port())
    etcd_conf = state / "milvus-etcd.yaml"
    etcd_conf.write_text(f"listen-client-urls: http://127.0.0.1:{etcd_client}\n"
                         f"advertise-client-urls: http://127.0.0.1:{etcd_client}\n"
                         f"listen-peer-urls: http://127.0.0.1:{etcd_peer}\n"
                         f"initial-advertise-peer-urls: http://127.0.0.1:{etcd_peer}\n"
                         f"initial-cluster: default=http://127.0.0.1:{etcd_peer}\n")
    env = {**os.environ, "ETCD_CONFIG_PATH": str(etcd_conf)}
    settings = [arg for key, value in (MILVUS_CONFIG if config is None else config).items()
                for arg in ("--extra-config", f"{key}={value}")]
    cmd = [str(exe), "--data", str(data), "--proxy-port", str(port), "--etcd-port", str(etcd_client),
           "--authorization-enabled", "true", *settings]
    uri = f"http://127.0.0.1:{port}"
    changed = {"done": restart}

    def ready() -> bool:
        if not changed["done"]:
            client = MilvusClient(uri=uri, token="root:Milvus", timeout=5)
            try:
                client.update_password("root", "Milvus", password)
            finally:
                client.close()
            changed["done"] = True
        client = MilvusClient(uri=uri, token=f"root:{password}", timeout=5)
        try:
            client.list_collections()
            return True
        finally:
            client.close()

    # The standalone binary can die while starting (seen once in a restart on a loaded 2-core machine: a goroutine
    # dump after /healthz answered) and the launcher then waits forever: that is detected and the start tried again.
    deadline = time.monotonic() + timeout_s
    crashes: list[str] = []
    while True:
        proc = _spawn("milvus", cmd, log, env=env)
        try:
            _wait("milvus-server", proc, log, ready, max(deadline - time.monotonic(), 1.0),
                  crashed=_milvus_binary_exited(proc.pid, data / "logs"))
            break
        except ServerCrashed as e:
            crashes.append(f"{e}; its logs kept in {_keep_logs(data / 'logs', len(crashes) + 1)}")
            if len(crashes) >= MILVUS_START_ATTEMPTS or time.monotonic() > deadline:
                raise ServerCrashed("\n".join(crashes)) from None
            print(f"{crashes[-1]}; starting it again", file=sys.stderr, flush=True)
            wait_port_free(port, reuse_addr=False)
        except StackError as e:  # the wrapper's log is a banner: add the standalone server's own log
            logs = sorted((data / "logs").glob("*.log"), key=lambda f: f.stat().st_mtime)
            raise StackError(f"{e}\n{logs[-1] if logs else data / 'logs'}:\n{_tail(logs[-1], 40) if logs else ''}") from None
    # the unpacked server binaries and data (~500 MB) go with the stack
    return Proc("milvus", proc.pid, uri, str(log), cleanup=[str(data)],
                extra={"etcd_client": str(etcd_client), "etcd_peer": str(etcd_peer)})


MILVUS_START_ATTEMPTS = 2  # a start whose standalone binary dies before it is ready is tried once more


def _milvus_binary_exited(launcher: int, logs: Path) -> Callable[[], str | None]:
    """For :func:`_wait`: why the standalone binary under milvus-server's launcher (process group ``launcher``)
    is gone, else None. The launcher never reaps it, so an exited binary stays a zombie of the group (or, seen
    running before, is no longer there); the reason quotes the first panic or fatal line of its logs."""
    seen: list[int] = []

    def crashed() -> str | None:
        children = {pid: state for pid, state in group_states(launcher).items() if pid != launcher}
        exited = [pid for pid, state in children.items() if state == "Z"]
        if not exited and (children or not seen):  # running, or not started yet
            seen[:] = seen or list(children)
            return None
        pid = (exited or seen)[0]
        return f"the standalone binary (pid {pid}) exited: {_first_fatal(logs) or 'no panic or fatal line in its logs'}"

    return crashed


def _first_fatal(logs: Path) -> str:
    """The first line of milvus-stderr.log / milvus-stdout.log that reports a panic or a fatal error."""
    for name in ("milvus-stderr.log", "milvus-stdout.log"):
        try:
            lines = (logs / name).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith(("panic:", "fatal error:")) or "[FATAL]" in line or "[PANIC]" in line:
                return f"{name}: {line[:300]}"
    return ""


def _keep_logs(logs: Path, attempt: int) -> Path:
    """Copy the standalone binary's logs aside before a new start truncates them; return where."""
    kept = logs / f"crashed-start-{attempt}"
    kept.mkdir(parents=True, exist_ok=True)
    for f in logs.glob("milvus-std*.log"):
        shutil.copy2(f, kept / f.name)
    return kept
