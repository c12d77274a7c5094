"""Start and stop a real local ``tritonserver`` (the binary inside the nvidia-pytriton wheel).

The wheel's server has only the python backend. Its stub embeds the Python of the Triton environment
(``$HOMEFEED_TRITON_VENV``, default ``<repo>/.venv-triton``: numpy<2, onnxruntime), so the server runs
with that environment's ``bin`` first on PATH and ``LD_LIBRARY_PATH`` starting with that interpreter's
own lib directory (else another libpython loads and multiprocessing breaks). The server binds
127.0.0.1 on free ports, runs in its own process group (stubs included) and ``stop()`` ends the whole
group: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class TritonError(RuntimeError):
    """The server could not start or answer; the message carries the tail of its log."""


def triton_venv() -> Path:
    return Path(os.environ.get("HOMEFEED_TRITON_VENV") or ROOT / ".venv-triton")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class _Dist:
    server: Path
    libs: Path
    backend_lib: Path
    backend_utils: Path
    stub: Path
    python_libdir: Path


def _distribution(venv: Path) -> _Dist:
    python = venv / "bin" / "python"
    if not python.exists():
        raise TritonError(f"{venv}: no Triton environment (make venv-triton, or set HOMEFEED_TRITON_VENV)")
    out = subprocess.run([str(python), "-c", "import sys, sysconfig, pytriton, os; "
                          "print(os.path.dirname(pytriton.__file__)); print(sysconfig.get_config_var('LIBDIR')); "
                          "print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise TritonError(f"{python}: cannot import pytriton: {out.stderr.strip()[-500:]}")
    pkg, libdir, version = out.stdout.split()
    dist = Path(pkg) / "tritonserver"
    d = _Dist(server=dist / "bin" / "tritonserver", libs=Path(pkg).parent / "nvidia_pytriton.libs",
              backend_lib=dist / "backends" / "python" / "libtriton_python.so",
              backend_utils=dist / "backends" / "python" / "triton_python_backend_utils.py",
              stub=dist / "python_backend_stubs" / version / "triton_python_backend_stub", python_libdir=Path(libdir))
    for f in (d.server, d.backend_lib, d.stub):
        if not f.exists():
            raise TritonError(f"{f}: missing from the nvidia-pytriton distribution in {venv}")
    return d


@dataclass
class TritonServer:
    """A running tritonserver over ``model_repository``: ``start()``, ``url``/``grpc_url``, ``stop()``."""

    model_repository: Path
    http_port: int = 0  # 0 -> a free port
    grpc_port: int = 0
    metrics_port: int = 0  # Prometheus metrics (the preprocess model's bad-input counters)
    venv: Path | None = None
    log_path: Path | None = None
    verbose: bool = False
    process: subprocess.Popen | None = field(default=None, init=False)
    _work: Path | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def metrics(self) -> str:
        """The server's Prometheus metrics text."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            return r.read().decode()

    def command(self, backends: Path) -> list[str]:
        prefix = f"homefeed{os.getpid()}_{uuid.uuid4().hex[:6]}"
        return [str(self._dist.server), f"--model-repository={Path(self.model_repository).resolve()}",
                f"--backend-directory={backends}", "--http-address=127.0.0.1", f"--http-port={self.http_port}",
                "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}", "--allow-metrics=true",
                "--allow-gpu-metrics=false", "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
                "--strict-readiness=true", "--exit-on-error=true", "--exit-timeout-secs=5",
                f"--log-verbose={1 if self.verbose else 0}",
                f"--backend-config=python,shm-region-prefix-name={prefix}",
                "--backend-config=python,shm-default-byte-size=4194304"]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        venv = (self.venv or triton_venv()).resolve()
        env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (str(self._dist.python_libdir), str(self._dist.libs),
                                                      env.get("LD_LIBRARY_PATH", "")) if p)
        env["VIRTUAL_ENV"] = str(venv)
        env.pop("PYTHONPATH", None)
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def start(self, timeout_s: float = 180.0) -> TritonServer:
        repo = Path(self.model_repository)
        if not repo.is_dir():
            raise TritonError(f"{repo}: model repository not found")
        self._dist = _distribution((self.venv or triton_venv()).resolve())
        self._work = Path(tempfile.mkdtemp(prefix="homefeed-triton-"))
        backends = self._work / "backends" / "python"
        backends.mkdir(parents=True)
        os.symlink(self._dist.backend_lib, backends / "libtriton_python.so")
        os.symlink(self._dist.backend_utils, backends / "triton_python_backend_utils.py")
        shutil.copy2(self._dist.stub, backends / "triton_python_backend_stub")
        self.http_port = self.http_port or free_port()
        self.grpc_port = self.grpc_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        self.log_path = Path(self.log_path or Path(tempfile.gettempdir()) / f"homefeed-tritonserver-{uuid.uuid4().hex[:8]}.log")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(self._work / "backends"), env=self.environment(),
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, cwd=self._work)
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonError(f"tritonserver exited with code {self.process.returncode} before it was ready "
                                  f"(log {self.log_path}):\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.25)
        raise TritonError(f"tritonserver not ready after {timeout_s:.0f} s (log {self.log_path}):\n{self.log_tail()}")

    def stop(self, grace_s: float = 15.0) -> None:
        """End the server's whole process group (python backend stubs included)."""
        p = self.process
        if p is not None:
            pgid = p.pid  # started with start_new_session: the server leads its own process group
            _signal_group(pgid, signal.SIGTERM)
            try:
                p.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(pgid, signal.SIGKILL)  # stubs may outlive the server by a moment
            p.wait(timeout=grace_s)
            self.process = None
        if self._work is not None:  # the log stays (outside the work dir) for post-mortems
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
