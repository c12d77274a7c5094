"""``homefeed pipeline compile|run|submit``: the Kubeflow pipelines from the command line."""

from __future__ import annotations

import argparse
import json

from pipelines.runner import compile_pipelines, parse_params, run_local, submit


def _compile(args: argparse.Namespace) -> int:
    for path in compile_pipelines(args.out, None if args.pipeline == "all" else [args.pipeline]):
        print(f"compiled: {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    if not args.local:
        print("error: only --local runs are supported here; use `homefeed pipeline submit --host URL` for a cluster")
        return 2
    summary = run_local(args.pipeline, args.out, parse_params(args.params))
    print(f"pipeline {summary['pipeline']} finished in {summary['seconds']} s; artifacts under {summary['run_dir']}")
    print(f"summary: {args.out}/{args.pipeline}-run.json")
    return 0


def _submit(args: argparse.Namespace) -> int:
    run_id = submit(args.pipeline, args.host, parse_params(args.params), experiment=args.experiment_name)
    print(json.dumps({"run_id": run_id}) if args.json else f"submitted run {run_id}")
    return 0


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    g = groups["pipeline"]
    c = g.add_parser("compile", help="compile the cluster pipelines to YAML (kfp-kubernetes settings included)")
    c.add_argument("pipeline", nargs="?", default="all", choices=["all", "training", "daily"])
    c.add_argument("--out", default="out/pipelines", help="output folder (default out/pipelines)")
    c.set_defaults(func=_compile)

    r = g.add_parser("run", help="run a pipeline with kfp.local (tiny experiments by default)")
    r.add_argument("pipeline", choices=["training", "daily"])
    r.add_argument("--local", action="store_true", help="run on this machine with kfp.local (SubprocessRunner)")
    r.add_argument("--out", default="out/local", help="run folder: kfp artifacts, stores, run summary (default out/local)")
    r.add_argument("--param", dest="params", action="append", default=[], metavar="NAME=VALUE",
                   help="pipeline parameter (repeatable, YAML value), e.g. --param data_experiment=ml100k")
    r.set_defaults(func=_run)

    s = g.add_parser("submit", help="submit a pipeline to a Kubeflow Pipelines API and print the run id")
    s.add_argument("pipeline", choices=["training", "daily"])
    s.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://ml-pipeline-ui.kubeflow:80")
    s.add_argument("--param", dest="params", action="append", default=[], metavar="NAME=VALUE")
    s.add_argument("--experiment-name", default="homefeed")
    s.add_argument("--json", action="store_true", help="print {\"run_id\": ...}")
    s.set_defaults(func=_submit)
