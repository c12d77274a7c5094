"""Process groups and ports of the stack's servers: is a group alive, stop it, wait for a port to be free."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path


class StackError(RuntimeError):
    """A server of the stack could not start or stop; the message names it and carries its log tail."""


def group_states(pgid: int) -> dict[int, str]:
    """The processes of a process group and their states (``Z``: exited, not yet reaped by its parent), from /proc."""
    states = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                states[int(d.name)] = fields[0]
    return states


def alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    return [pid for pid, state in group_states(pgid).items() if state != "Z"]


def stop_group(pgid: int, sig: int = signal.SIGTERM, grace_s: float = 20.0) -> list[int]:
    """Signal a process group, wait for it to end, SIGKILL what is left; return pids still alive (none)."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return []
    deadline = time.monotonic() + grace_s
    while alive(pgid) and time.monotonic() < deadline:
        _reap(pgid)
        time.sleep(0.2)
    if alive(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
    _reap(pgid)
    return alive(pgid)


def wait_port_free(port: int, timeout_s: float = 120.0, reuse_addr: bool = True) -> None:
    """Wait until ``port`` on 127.0.0.1 can be bound again: nothing listens there any more. Servers that bind with
    SO_REUSEADDR (Valkey, PostgreSQL, uvicorn, Triton) can bind over the stopped server's TIME_WAIT sockets;
    ``reuse_addr=False`` also waits those out (up to a minute): milvus-server probes its --proxy-port without it
    and would silently move to the next free port."""
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if reuse_addr:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise StackError(f"127.0.0.1:{port} still in use after {timeout_s:.0f} s; cannot restart on the same port")
        time.sleep(1)


def endpoint_port(endpoint: str) -> int:
    return int(endpoint.rstrip("/").rsplit(":", 1)[1])


def _reap(pid: int) -> None:
    """Collect the exit status if the group leader is our child (else it stays a zombie until we exit)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def remove(paths: list[str]) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)
