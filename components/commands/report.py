"""``homefeed report [--eval out/eval] [--bench out/bench.json] [--runs out/demo] [--out out/report.html]
[--markdown FILE]``."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from components.report import build_report


def _report(args: argparse.Namespace) -> int:
    info = build_report(args.eval, args.bench, args.out, args.markdown, runs_dir=args.runs or None)
    print(f"wrote {info['html']}: {info['evaluations']} evaluations, {info['benchmarks']} benchmarks, "
          f"{info['curves']} training curves, {info['images']} figures"
          + (f"; Markdown summary {info['markdown']}" if info["markdown"] else ""))
    for note in info["notes"]:
        print(f"  missing: {note}")
    return 0


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    action = groups["report"]
    parser = action.group_parser
    action.required = False  # `homefeed report` itself builds the report
    action.help = argparse.SUPPRESS  # no subcommands: keep COMMAND out of the usage line
    parser.add_argument("--eval", default="out/eval", help="folder of evaluation JSON files (default out/eval)")
    parser.add_argument("--bench", default="out/bench.json", help="benchmark results (default out/bench.json)")
    parser.add_argument("--runs", default="out/demo", help="folder of training runs / a demo folder: loss curves, "
                        "pin projection, recommend latency (default out/demo; '' for none)")
    parser.add_argument("--out", default="out/report.html", help="the HTML page to write (default out/report.html)")
    parser.add_argument("--markdown", default=None, help="also write a Markdown summary here (for the README)")
    parser.set_defaults(func=_report)
    register_bench(groups)


def _bench_run(args: argparse.Namespace) -> int:
    bench_dir = Path(__file__).resolve().parents[2] / "tests" / "bench"
    if not bench_dir.is_dir():
        raise FileNotFoundError(f"{bench_dir}: the benchmarks live in a source checkout (tests/bench)")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(bench_dir), "-o", "addopts=", "-s"]
    if args.k:
        cmd += ["-k", args.k]
    print("running: " + " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=bench_dir.parents[1])


def register_bench(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups["bench"].add_parser("run", help="run the benchmarks (what `make bench` runs); writes out/bench.json and out/bench.md")
    p.add_argument("-k", default=None, help="only benchmarks matching this pytest -k expression")
    p.set_defaults(func=_bench_run)
