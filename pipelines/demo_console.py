"""The demo's terminal: its own stamped lines, everything else routed to a log, a line per finished pipeline task.

``quiet_output`` sends file descriptors 1 and 2 (this process and every subprocess: kfp.local's executor JSON, the
steps' logs, tritonserver) to ``<out>/demo.log`` and hands back a stream on the original terminal; ``Console``
writes ``[mm:ss] text`` lines there; ``run_pipeline`` runs a pipeline through ``kfp.local`` with a progress bar
and a ``TaskWatcher`` that prints one line per finished task (its time, then its headline metrics, else its
training loss, else the artefacts it produced).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from components.progress import Progress

QUALITY = re.compile(r"(recall|hit|mrr|auc|ndcg|precision|accuracy|topic)", re.I)
# the metrics the README's result tables lead with, in the order a task's line shows them (up to three); a task
# that logged none of them shows its first three quality metrics. Recall@1/2/5 are 0 at demo size (a handful of
# held-out users scored against 1,000 candidates), Recall@10 is the papers' and the README's headline, Recall@100 moves.
HEADLINE = ("recall@10", "recall@100", "hit@10", "mrr", "auc_save", "hit3_save", "auc_mean")
SCORED = "eval_users_scored"  # how many users a Recall@K is over (said on the line: a handful at demo size)
RUNNING = re.compile(r"Executing task \W*(?:\x1b\[[0-9;]*m)?'([\w.-]+)'")
TRAINING_KEYS = ("final_loss", "steps", "loss")
PLUMBING_KEYS = {"num_nodes", "nproc_per_node", "world_size", "params_equal_across_ranks", "params_in_sync"}


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


def rel_path(path: str | Path) -> str:
    """``path`` relative to the working directory when under it (what the demo prints), else absolute."""
    p = Path(os.path.abspath(path))  # not resolve(): a venv's python is a symlink to the system one
    with contextlib.suppress(ValueError):
        return str(p.relative_to(Path.cwd()))
    return str(p)


def headline(quality: dict[str, float]) -> str:
    """The quality metrics a line shows: the ``HEADLINE`` ones a task logged (else its first three), with how many
    users a Recall@K is over."""
    shown = [k for k in HEADLINE if k in quality][:3] or [k for k in quality if k != SCORED][:3]
    text = ", ".join(f"{k} {quality[k]:.3f}" for k in shown)
    if SCORED in quality and any(k.startswith("recall@") for k in shown):
        text += f" ({int(quality[SCORED])} users scored)"
    return text


def _task_outputs(task_dir: Path) -> str:
    """What a finished task produced, from its ``executor_output.json``: its quality metrics if it logged
    any, else its training loss and steps, else its artefacts with their first counts."""
    doc = json.loads((task_dir / "executor_output.json").read_text())
    quality, training, produced = {}, {}, []
    for name, a in doc.get("artifacts", {}).items():
        for art in a.get("artifacts", []):
            nums = {k: v for k, v in (art.get("metadata") or {}).items()
                    if isinstance(v, int | float) and not isinstance(v, bool) and k not in PLUMBING_KEYS}
            quality.update({k: v for k, v in nums.items() if QUALITY.search(k) or k == SCORED})
            training.update({k: nums[k] for k in TRAINING_KEYS if k in nums})
            if name != "metrics":
                counts = ", ".join(f"{k} {v:g}" for k, v in list(nums.items())[:2])
                produced.append(f"{name} ({counts})" if counts else name)
    if set(quality) - {SCORED}:
        return headline(quality)
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
