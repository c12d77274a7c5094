"""``make demo``: the whole platform on this machine, end to end, quietly.

1. the training pipeline on MovieLens-100k through ``kfp.local`` (data, PinSage, PinnerFormer, ranker,
   evaluation, ONNX export, Feast registration, Milvus index): one line per step with its time and artefact;
2. one daily embedding run (the first held-out day: incremental users, new pin versions, alias switch);
3. serving: a local Triton server over the exported ranker, Feast (SQLite) and Milvus Lite; recommendations
   for a few users and the recommend path's latency per stage over a batch of requests;
4. the report ``out/report.html``: the pipeline's model metrics (as ``EvalResult`` files), loss curves, the
   pin embedding projection, the measured latency, the benchmarks when ``make bench`` has run;
5. every server stopped (also on failure or Ctrl-C), then a summary: where the report is, how to query.

Quiet by default: everything the steps print (the local runner's executor JSON, training logs, the Triton
server) goes to ``<out>/demo.log``; ``--verbose`` shows it all. A progress bar follows each pipeline on a
terminal. Everything goes under ``out/demo`` (``--out``); the report under ``out/``. ``--tiny`` runs on the
synthetic tiny dataset instead (a couple of minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from components.data.durable import atomic_write_json
from components.evaluation import papers
from components.evaluation.result import EvalResult, read_result, write_result
from components.progress import Progress
from components.stackconfig import SecretRef, dump_stack, load_stack

# Model sizes for the demo on ML-100k: the papers' architectures, trained briefly so the demo fits in
# minutes on 2 cores (`homefeed eval <model>` runs the full comparisons).
DEMO_TRAINING = {
    "data_experiment": "ml100k",
    "pinsage_experiment": "pinsage_tiny",
    "pinnerformer_experiment": "pinnerformer_tiny",
    "ranker_experiment": "ranker_tiny",
    "pinsage_overrides": ["epochs=2"],
    "pinnerformer_overrides": ["epochs=2"],
    "ranker_overrides": ["epochs=2"],
    "user_backfill_days": 90,  # a new user store replays the last 90 event days (users as of their last activity)
    "min_auc": 0.5,
}
DEMO_USERS = 3
LATENCY_REQUESTS = 60  # recommend requests timed per stage for the report
COMMAND = "python -m pipelines.demo"
QUALITY = re.compile(r"(recall|hit|mrr|auc|ndcg|precision|accuracy|topic)", re.I)
RUNNING = re.compile(r"Executing task \W*(?:\x1b\[[0-9;]*m)?'([\w.-]+)'")
LOWER_IS_BETTER = re.compile(r"(loss|_s$|seconds|time|wait|memory|_mb$)", re.I)


class Console:
    """The demo's own lines, ``[mm:ss] text``, on the terminal (and copied into the log)."""

    def __init__(self, stream: TextIO, log: TextIO | None = None):
        self.stream = stream
        self.log = log
        self.t0 = time.perf_counter()
        self.lines = 0

    def elapsed(self) -> str:
        s = int(time.perf_counter() - self.t0)
        return f"{s // 60:02d}:{s % 60:02d}"

    def line(self, text: str, bar: Any = None, stamp: bool = True) -> None:
        out = f"[{self.elapsed()}] {text}" if stamp else text
        if bar is not None:
            bar.write(out)
        else:
            print(out, file=self.stream, flush=True)
        if self.log is not None:
            print(f"### demo: {out}", file=self.log, flush=True)
        self.lines += out.count("\n") + 1


@contextlib.contextmanager
def quiet_output(log_path: Path, verbose: bool) -> Iterator[TextIO]:
    """Route file descriptors 1 and 2 (this process and every subprocess it starts: kfp.local's executor
    JSON, the steps' logs, tritonserver) into ``log_path``; yield a stream on the original terminal for the
    demo's own lines. With ``verbose`` nothing is redirected."""
    if verbose:
        yield sys.stdout
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(1), "w", buffering=1)
    with open(log_path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield console
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            console.close()


def _rel(path: str | Path) -> str:
    p = Path(os.path.abspath(path))  # not resolve(): a venv's python is a symlink to the system one
    with contextlib.suppress(ValueError):
        return str(p.relative_to(Path.cwd()))
    return str(p)


TRAINING_KEYS = ("final_loss", "steps", "loss")
PLUMBING_KEYS = {"num_nodes", "nproc_per_node", "world_size", "params_equal_across_ranks", "params_in_sync"}


def _task_outputs(task_dir: Path) -> str:
    """What a finished task produced, from its ``executor_output.json``: its quality metrics if it logged
    any, else its training loss and steps, else its artefacts with their first counts."""
    doc = json.loads((task_dir / "executor_output.json").read_text())
    quality, training, produced = {}, {}, []
    for name, a in doc.get("artifacts", {}).items():
        for art in a.get("artifacts", []):
            nums = {k: v for k, v in (art.get("metadata") or {}).items()
                    if isinstance(v, int | float) and not isinstance(v, bool) and k not in PLUMBING_KEYS}
            quality.update({k: v for k, v in nums.items() if QUALITY.search(k)})
            training.update({k: nums[k] for k in TRAINING_KEYS if k in nums})
            if name != "metrics":
                counts = ", ".join(f"{k} {v:g}" for k, v in list(nums.items())[:2])
                produced.append(f"{name} ({counts})" if counts else name)
    if quality:
        return ", ".join(f"{k} {v:.3f}" for k, v in list(quality.items())[:3])
    if training:
        return ", ".join(f"{k} {v:.4g}" for k, v in training.items())
    return "; ".join(produced)


class TaskWatcher(threading.Thread):
    """Follows a local pipeline run: a line per finished task (time, artefact, quality metrics) and a bar."""

    def __init__(self, root: Path, prefix: str, names: dict[str, str], console: Console, bar: Any,
                 log_path: Path | None = None):
        super().__init__(daemon=True)
        self.root, self.prefix, self.names, self.console, self.bar = root, prefix, names, console, bar
        self.log_path = log_path
        self.offset = log_path.stat().st_size if log_path and log_path.exists() else 0
        self.started = time.time()
        self.last = time.perf_counter()
        self.task_started: dict[str, float] = {}
        self.seen: set[str] = set()
        self.stop_event = threading.Event()

    def follow_log(self) -> None:
        """The runner logs ``Executing task 'name'`` when a task starts: its start time and the bar's text."""
        if self.log_path is None or not self.log_path.exists():
            return
        with self.log_path.open("rb") as f:
            f.seek(self.offset)
            raw = f.read()
        self.offset += len(raw)
        text = raw.decode(errors="replace")
        for task in RUNNING.findall(text):
            self.task_started.setdefault(task, time.perf_counter())
            self.bar.set_description(f"{self.prefix.removeprefix('homefeed-')}: {self.names.get(task, task)}")

    def poll(self) -> None:
        self.follow_log()
        runs = [p for p in self.root.glob(f"{self.prefix}-*") if p.is_dir() and p.stat().st_mtime >= self.started - 1]
        if not runs:
            return
        run = max(runs, key=lambda p: p.stat().st_mtime)
        done = sorted((p for p in run.iterdir() if (p / "executor_output.json").exists() and p.name not in self.seen),
                      key=lambda p: (p / "executor_output.json").stat().st_mtime)
        for task in done:
            self.seen.add(task.name)
            now = time.perf_counter()
            began = max(self.task_started.get(task.name, self.last), self.last)
            try:
                produced = _task_outputs(task)
            except (OSError, ValueError):
                produced = ""
            name = self.names.get(task.name, task.name)
            width = max(len(n) for n in self.names.values())
            self.console.line(f"  {name:<{width}} {now - began:5.0f} s  {produced}", self.bar)
            self.last = now
            self.bar.update(1)

    def run(self) -> None:
        while not self.stop_event.wait(0.5):
            with contextlib.suppress(OSError):
                self.poll()

    def finish(self) -> None:
        self.stop_event.set()
        self.join()
        with contextlib.suppress(OSError):
            self.poll()


def run_pipeline(name: str, out: Path, params: dict[str, Any] | None, console: Console) -> dict[str, Any]:
    """``run_local`` with a line per task and a progress bar on the terminal."""
    # kfp and every step, imported after the output is routed to the log (import-time warnings)
    from pipelines.runner import PIPELINES, pipeline_func, run_local

    tasks = pipeline_func(name, local=True).pipeline_spec.root.dag.tasks
    names = {t: tasks[t].task_info.name or t for t in tasks if not tasks[t].component_ref.name.startswith("comp-importer")}
    with Progress(total=len(names), desc=name, unit="step", file=console.stream) as bar:
        log = out / "demo.log"
        watcher = TaskWatcher(out / "kfp", PIPELINES[name], names, console, bar, log if console.log else None)
        watcher.start()
        try:
            return run_local(name, out, params)
        finally:
            watcher.finish()


# ---------------------------------------------------------------------------------------------------------
# Serving, evaluation files, report
# ---------------------------------------------------------------------------------------------------------


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
            raise RuntimeError(f"the recommend service exited with code {proc.returncode}; see {_rel(log)}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as e:
            last = e.read().decode(errors="replace")[:300]
        except OSError as e:
            last = str(e)
        time.sleep(1.0)
    raise RuntimeError(f"the recommend service was not ready within {timeout_s:.0f} s ({last}); see {_rel(log)}")


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
    console.line(f"serving: recommend service {url} (log {_rel(log)}) over tritonserver {server.grpc_url}, "
                 f"Feast SQLite, Milvus Lite; stack file {_rel(stack_file)}")

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


def _metrics(summary: dict[str, Any], task: str, output: str = "metrics") -> dict[str, Any]:
    return summary["artifacts"].get(task, {}).get(output, {}).get("metadata", {})


def write_evaluations(training: dict[str, Any], eval_dir: Path, dataset: str) -> list[Path]:
    """One ``EvalResult`` per model from the metrics the training pipeline's steps logged (one trained model,
    one seed: a table, not a comparison). Only quality metrics: the steps' counters (times, data wait) stay in
    the run summary, which the report shows as operational counters. A model whose step logged no quality
    metric gets no file; a result written by ``homefeed eval`` is left as it is."""
    params = training["parameters"]
    sources = {"pinsage": ("train-pinsage", params["pinsage_experiment"]),
               "pinnerformer": ("train-pinnerformer", params["pinnerformer_experiment"]),
               "ranker": ("evaluate-ranker", params["ranker_experiment"])}
    written = []
    for model, (task, experiment) in sources.items():
        logged = {k: v for k, v in _metrics(training, task).items()
                  if QUALITY.search(k) and isinstance(v, int | float) and not isinstance(v, bool)}
        if not logged:
            continue
        path = eval_dir / f"{model}_{dataset}.json"
        if path.exists():
            try:
                if not read_result(path).command.startswith(COMMAND):
                    continue  # a full comparison from `homefeed eval`: keep it
            except ValueError:
                pass  # an older format: replaced by this run's result
        protocol = {"source": f"the training pipeline's {task} step (one trained model, one seed)",
                    "experiment": experiment, "run": _rel(training["run_dir"])}
        cfg = training["artifacts"].get(f"train-{model}", {}).get("model", {}).get("metadata", {}).get("config", {})
        if model == "pinnerformer" and "eval_pool" in cfg:
            protocol.update({"candidate pool": int(cfg["eval_pool"]),
                             "future window days": int(cfg.get("future_window_days", 14))})
        r = EvalResult(model, dataset, COMMAND, protocol=protocol,
                       metrics={k: "lower" if LOWER_IS_BETTER.search(k) else "higher" for k in logged})
        r.add(f"{experiment} (pipeline)", 0, **logged)
        r.papers = papers.for_result(model, protocol)  # shown beside ours only when the protocol matches
        written.append(write_result(r, eval_dir))
    return written


def report_inputs(out: Path, training: dict[str, Any], daily: dict[str, Any], serving: dict[str, Any]) -> Path:
    """``<out>/demo.json``: what the report reads beyond the evaluations (data, pin embeddings, latency)."""
    pins = (daily["artifacts"].get("merge-pins") or training["artifacts"]["embed-pins"])["embeddings"]
    info = {"training_run": training["run_dir"], "daily_run": daily["run_dir"],
            "data_dir": training["artifacts"]["prepare-data"]["data"]["path"],
            "pin_embeddings": pins["metadata"].get("table", ""), "recommend_latency": serving.get("latency", "")}
    return atomic_write_json(info, out / "demo.json")


def summary_lines(report: str, out: Path, log: Path | None, serving: dict[str, Any], kept: bool) -> list[str]:
    """What a person can do next: open the report, query the service and the stack, stop the servers."""
    user = (serving.get("users") or [1])[0]
    token = _rel(serving["token_file"])
    python = _rel(sys.executable)
    lines = ["", "Summary",
             f"  report     {report}  (open it in a browser; `make report` rebuilds it, with `make bench` results)",
             f"  logs       {_rel(log) if log else 'shown above (--verbose)'}; pipeline runs under {_rel(out / 'kfp')}"]
    if kept:
        lines += [f"  query      curl -s -X POST {serving['url']}/v1/recommend -H \"Authorization: Bearer $(cat {token})\" "
                  f"-H 'Content-Type: application/json' -d '{{\"user_id\": {user}, \"k\": 10, \"surface\": \"homefeed\"}}'",
                  f"  stack      {_rel(serving['stack'])} (Feast SQLite, Milvus Lite, Triton); readiness: curl "
                  f"{serving['url']}/readyz, metrics: curl {serving['url']}/metrics",
                  "  stop       " + ("make demo-stop" if _rel(out) == "out/demo" else
                                     f"{python} -m pipelines.demo --stop-serving --out {_rel(out)}")
                  + "   (tritonserver and the recommend service)"]
    else:
        lines += [f"  stack      {_rel(serving['stack'])}: every server is stopped (run without --stop to keep them)"]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/demo", help="demo folder (default out/demo; replaced on each run)")
    ap.add_argument("--report", default="out/report.html", help="report path (default out/report.html)")
    ap.add_argument("--eval-dir", default="out/eval", help="evaluation JSON folder (default out/eval)")
    ap.add_argument("--bench", default=None, help="benchmark results for the report (default: beside the report)")
    ap.add_argument("--tiny", action="store_true", help="synthetic tiny data instead of ML-100k (fast)")
    ap.add_argument("--set", dest="params", action="append", default=[], metavar="NAME=VALUE",
                    help="a training pipeline parameter, e.g. --set 'ranker_overrides=[epochs=1]' (repeatable)")
    ap.add_argument("--stop", action="store_true", help="stop tritonserver and the recommend service at the end "
                    "(default: leave them serving, the summary says how to query and stop them)")
    ap.add_argument("--stop-serving", action="store_true", help="only stop the servers a previous demo in --out left")
    ap.add_argument("--verbose", "-v", action="store_true", help="show every step's output (default: to the log)")
    args = ap.parse_args(argv)
    # kfp and every step, imported after the output is routed to the log (import-time warnings)
    from pipelines.runner import check_params, parse_params

    out = Path(args.out).resolve()
    if args.stop_serving:
        stopped = stop_serving(out)
        print(f"stopped: {', '.join(stopped)}" if stopped else f"{_rel(out)}: no demo servers running")
        return 0
    try:
        overrides = parse_params(args.params)
        check_params("training", overrides)
    except ValueError as e:
        ap.error(str(e))  # exit 2, the message names the parameter
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    stop_serving(out)  # a previous demo's servers, before their folder goes
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    log_path = None if args.verbose else out / "demo.log"
    params = {**(DEMO_TRAINING if not args.tiny else {}), **overrides}
    dataset = "synthetic" if args.tiny else "ml-100k"
    with quiet_output(out / "demo.log", args.verbose) as stream:
        console = Console(stream, log=None if args.verbose else sys.stdout)
        ok = False
        try:
            code = _run(args, out, params, dataset, console, log_path)
            ok = True
            return code
        except KeyboardInterrupt:
            console.line("interrupted")
            return 130
        except Exception as e:  # the full traceback goes to the log; the terminal gets one line
            traceback.print_exc()
            console.line(f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            if log_path:
                console.line(f"the full output is in {_rel(log_path)}")
            return 1
        finally:
            if args.stop or not ok:
                stopped = stop_serving(out)
                if stopped and not ok:
                    console.line(f"stopped {', '.join(stopped)}")


def _run(args: argparse.Namespace, out: Path, params: dict[str, Any], dataset: str, console: Console,
         log_path: Path | None) -> int:
    # matplotlib, kfp and every step, imported after the output is routed to the log (import-time warnings)
    from components.report import build_report
    from pipelines.runner import pipeline_func

    console.line(f"homefeed demo on {dataset}" + (f"; step output -> {_rel(log_path)}" if log_path else ""),
                 stamp=False)
    pipeline_func("daily", local=True)  # both pipelines compile before anything runs (fail in seconds, not minutes)
    console.line(f"training pipeline (kfp.local, {dataset})")
    training = run_pipeline("training", out, params, console)
    ev = _metrics(training, "evaluate-ranker")
    console.line(f"training pipeline done in {training['seconds']:.0f} s: {_rel(training['run_dir'])}; "
                 f"ranker AUC(save) {ev.get('auc_save', float('nan')):.3f}")

    console.line("daily embedding pipeline for the first held-out day")
    daily = run_pipeline("daily", out, None, console)
    counts = [a.get("stats", {}).get("metadata", {}).get("users") for a in daily["artifacts"].values()]
    users = max((c for c in counts if isinstance(c, int | float) and not isinstance(c, bool)),
                default=0)  # the task that writes the merged user table (embed-users, or merge-users when sharded)
    console.line(f"daily run for {daily['parameters']['date']} done in {daily['seconds']:.0f} s: "
                 f"{_rel(daily['run_dir'])}; {int(users)} users in the merged table")

    serving = serve_and_measure(out, training, daily, console)

    eval_dir = Path(args.eval_dir)
    written = write_evaluations(training, eval_dir, dataset)
    report_inputs(out, training, daily, serving)
    bench = Path(args.bench) if args.bench else Path(args.report).parent / "bench.json"
    info = build_report(eval_dir=eval_dir, bench_path=bench, out=args.report, runs_dir=out)
    console.line(f"report -> {args.report}: {info['images']} figures, {info['evaluations']} evaluations "
                 f"({len(written)} from this run), {info['curves']} loss curves"
                 + ("" if info["benchmarks"] else "; no benchmarks yet (make bench)"))
    if args.stop:
        stop_serving(out)
    (out / "demo-summary.json").write_text(json.dumps(
        {"training_run": training["run_dir"], "daily_run": daily["run_dir"], "report": info["html"],
         "log": str(log_path) if log_path else None, "elapsed": console.elapsed(), "serving": serving,
         "kept_serving": not args.stop}, indent=2))
    console.line(f"done in {console.elapsed()}" + ("; every server stopped" if args.stop else
                                                   "; tritonserver and the recommend service keep serving"))
    for line in summary_lines(args.report, out, log_path, serving, kept=not args.stop):
        console.line(line, stamp=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
