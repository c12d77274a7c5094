"""``homefeed report [--eval out/eval] [--bench out/bench.json] [--out out/report.html] [--markdown FILE]``."""

from __future__ import annotations

import argparse


def _report(args: argparse.Namespace) -> int:
    from components.report import build_report

    info = build_report(args.eval, args.bench, args.out, args.markdown)
    print(f"wrote {info['html']}: {info['evaluations']} evaluations, {info['benchmarks']} benchmarks"
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
    parser.add_argument("--out", default="out/report.html", help="the HTML page to write (default out/report.html)")
    parser.add_argument("--markdown", default=None, help="also write a Markdown summary here (for the README)")
    parser.set_defaults(func=_report)
