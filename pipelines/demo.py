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

The terminal plumbing (quiet output, a line per pipeline task) is ``pipelines/demo_console.py``; starting,
measuring and stopping the servers is ``pipelines/demo_serving.py``; this file runs the stages and writes the
evaluation files, the report and the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

from components.data.durable import atomic_write_json
from components.evaluation import papers
from components.evaluation.result import EvalResult, read_result, write_result
from pipelines.demo_console import QUALITY, Console, quiet_output, rel_path, run_pipeline
from pipelines.demo_serving import serve_and_measure, stop_serving

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
COMMAND = "python -m pipelines.demo"
LOWER_IS_BETTER = re.compile(r"(loss|_s$|seconds|time|wait|memory|_mb$)", re.I)


def _metrics(summary: dict[str, Any], task: str, output: str = "metrics") -> dict[str, Any]:
    return summary["artifacts"].get(task, {}).get(output, {}).get("metadata", {})


def headline_metrics(training: dict[str, Any]) -> str:
    """The README's headline metrics of a training run: PinnerFormer Recall@10 (the papers' and the README's
    K) and the ranker's AUC(save) and HIT@3/save (a metric a step did not log is left out)."""
    pf, ev = _metrics(training, "train-pinnerformer"), _metrics(training, "evaluate-ranker")
    shown = [(label, m[k]) for label, m, k in (("PinnerFormer Recall@10", pf, "recall@10"),
                                               ("ranker AUC(save)", ev, "auc_save"), ("HIT@3/save", ev, "hit3_save"))
             if isinstance(m.get(k), int | float)]
    return ", ".join(f"{label} {v:.3f}" for label, v in shown)


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
                    "experiment": experiment, "run": rel_path(training["run_dir"])}
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
    token = rel_path(serving["token_file"])
    python = rel_path(sys.executable)
    lines = ["", "Summary",
             f"  report     {report}  (open it in a browser; `make report` rebuilds it, with `make bench` results)",
             f"  logs       {rel_path(log) if log else 'shown above (--verbose)'}; pipeline runs under {rel_path(out / 'kfp')}"]
    if kept:
        lines += [f"  query      curl -s -X POST {serving['url']}/v1/recommend -H \"Authorization: Bearer $(cat {token})\" "
                  f"-H 'Content-Type: application/json' -d '{{\"user_id\": {user}, \"k\": 10, \"surface\": \"homefeed\"}}'",
                  f"  stack      {rel_path(serving['stack'])} (Feast SQLite, Milvus Lite, Triton); readiness: curl "
                  f"{serving['url']}/readyz, metrics: curl {serving['url']}/metrics",
                  "  stop       " + ("make demo-stop" if rel_path(out) == "out/demo" else
                                     f"{python} -m pipelines.demo --stop-serving --out {rel_path(out)}")
                  + "   (tritonserver and the recommend service)"]
    else:
        lines += [f"  stack      {rel_path(serving['stack'])}: every server is stopped (run without --stop to keep them)"]
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
    out = Path(args.out).resolve()
    if args.stop_serving:  # before kfp and the steps are imported (minutes on a loaded machine)
        stopped = stop_serving(out)
        print(f"stopped: {', '.join(stopped)}" if stopped else f"{rel_path(out)}: no demo servers running")
        return 0
    # kfp and every step, imported after the output is routed to the log (import-time warnings)
    from pipelines.runner import check_params, parse_params

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
                console.line(f"the full output is in {rel_path(log_path)}")
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

    console.line(f"homefeed demo on {dataset}" + (f"; step output -> {rel_path(log_path)}" if log_path else ""),
                 stamp=False)
    pipeline_func("daily", local=True)  # both pipelines compile before anything runs (fail in seconds, not minutes)
    console.line(f"training pipeline (kfp.local, {dataset})")
    training = run_pipeline("training", out, params, console)
    console.line(f"training pipeline done in {training['seconds']:.0f} s: {rel_path(training['run_dir'])}; "
                 + headline_metrics(training))

    console.line("daily embedding pipeline for the first held-out day")
    daily = run_pipeline("daily", out, None, console)
    counts = [a.get("stats", {}).get("metadata", {}).get("users") for a in daily["artifacts"].values()]
    users = max((c for c in counts if isinstance(c, int | float) and not isinstance(c, bool)),
                default=0)  # the task that writes the merged user table (embed-users, or merge-users when sharded)
    console.line(f"daily run for {daily['parameters']['date']} done in {daily['seconds']:.0f} s: "
                 f"{rel_path(daily['run_dir'])}; {int(users)} users in the merged table")

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
