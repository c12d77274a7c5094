"""Local training runs: ``torchrun`` subprocesses (gloo) on this machine.

:func:`run_local` starts one torchrun agent (``--nproc_per_node`` ranks) or, with ``num_nodes > 1``, that
many agents rendezvousing on 127.0.0.1; every rank runs ``components.launch.worker``; rank 0's result is
returned. Output is streamed (prefixed ``[node i]`` for several agents); a failure raises LaunchError with
the first exception line and the last output of the failed node; every process started is killed on exit.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from components.launch.call import LaunchError, TrainCall


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(call: TrainCall, nproc_per_node: int, num_nodes: int = 1, node_rank: int = 0,
                     master_port: int = 29500, result_path: str | Path = "",
                     python: str = sys.executable) -> list[str]:
    """The ``torchrun`` command line of one node (agent)."""
    if nproc_per_node < 1 or num_nodes < 1:
        raise LaunchError(f"nproc_per_node and num_nodes must be >= 1, got {nproc_per_node}, {num_nodes}")
    cmd = [python, "-m", "torch.distributed.run", f"--nproc_per_node={nproc_per_node}", f"--nnodes={num_nodes}"]
    if num_nodes == 1:
        cmd += ["--standalone"]
    else:
        cmd += [f"--node_rank={node_rank}", "--master_addr=127.0.0.1", f"--master_port={master_port}"]
    cmd += ["-m", "components.launch.worker", "--call", call.to_json()]
    if result_path:
        cmd += ["--result", str(result_path)]
    return cmd


def _pump(stream, prefix: str, tail: list[str]) -> None:
    for line in iter(stream.readline, ""):
        tail.append(line)
        del tail[:-300]
        print(f"{prefix}{line}", end="", flush=True)


def _first_exception(lines: list[str]) -> str:
    """The first ``SomethingError: message`` line of a rank's traceback (torchrun's own summary follows it)."""
    for line in lines:
        m = re.match(r"\s*(?:\[[^\]]*\]:?\s*)?([A-Za-z_.]*(?:Error|Exception|Interrupt)\b.*)", line)
        if m and "ChildFailedError" not in m.group(1):
            return m.group(1).strip()
    return "no exception line in the output"


def run_local(call: TrainCall, nproc_per_node: int = 1, num_nodes: int = 1, timeout_s: float | None = None,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``call`` under ``torchrun`` (gloo) on this machine; return rank 0's result.

    ``num_nodes > 1`` starts that many torchrun agents here (a multi-node rendezvous on 127.0.0.1).
    Output is streamed with a ``[node i]`` prefix; a non-zero exit raises :class:`LaunchError`.
    """
    out_dir = call.kwargs.get(call.out_kwarg)
    result_dir = Path(out_dir) if out_dir else Path.cwd()
    result_dir.mkdir(parents=True, exist_ok=True)
    result_path = result_dir / f".launch-result-{uuid.uuid4().hex[:8]}.json"
    port = free_port()
    penv = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(env or {})}
    procs, threads, tails = [], [], []
    try:
        for node in range(num_nodes):
            cmd = torchrun_command(call, nproc_per_node, num_nodes, node, port, result_path if node == 0 else "")
            print("running:", shlex.join(cmd), flush=True)
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                    env=penv)
            tail: list[str] = []
            t = threading.Thread(target=_pump, args=(proc.stdout, f"[node {node}] " if num_nodes > 1 else "", tail),
                                 daemon=True)
            t.start()
            procs.append(proc)
            threads.append(t)
            tails.append(tail)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for proc in procs:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.1)
            try:
                proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired as e:
                raise LaunchError(f"{call.entry}: torchrun did not finish within {timeout_s} s") from e
        for t in threads:
            t.join(timeout=5)
        failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
        if failed:
            node, rc = failed[0]
            raise LaunchError(f"{call.entry} ({call.experiment}): torchrun node {node} exited with code {rc}: "
                              f"{_first_exception(tails[node])}; last output:\n{''.join(tails[node][-15:])}")
        if not result_path.exists():
            raise LaunchError(f"{call.entry}: rank 0 finished but wrote no result ({result_path})")
        return json.loads(result_path.read_text())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        result_path.unlink(missing_ok=True)


