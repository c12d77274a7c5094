"""The report: ``homefeed report`` gathers evaluations, training runs, the demo's measurements and the
benchmarks into one self-contained HTML page (figures embedded as PNG data URIs), and optionally a Markdown
summary for the README.

- :mod:`components.report.inputs` reads what exists (every input optional; a missing one becomes a note);
- :mod:`components.report.plots` draws the figures;
- :mod:`components.report.page` lays out the page;
- :mod:`components.report.fmt` formats numbers and writes ``out/bench.md`` (shared with tests/bench).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.data.durable import atomic_write_bytes
from components.report.fmt import bench_markdown, flatten, fmt_number, fmt_value, is_stats
from components.report.inputs import gather
from components.report.page import render, render_markdown

__all__ = ["bench_markdown", "build_report", "flatten", "fmt_number", "fmt_value", "is_stats"]


def build_report(eval_dir: str | Path = "out/eval", bench_path: str | Path = "out/bench.json",
                 out: str | Path = "out/report.html", markdown: str | Path | None = None,
                 runs_dir: str | Path | None = "out/demo") -> dict[str, Any]:
    """Write the HTML report (and the Markdown summary if ``markdown``); return what went in.

    ``runs_dir``: a folder of training runs (``train_log.jsonl`` files below it); a demo folder also gives
    the pin projection and the recommend latency through its ``demo.json``.
    """
    inputs = gather(eval_dir, bench_path, runs_dir)
    sources = {"evaluations": str(eval_dir), "benchmarks": str(bench_path)}
    if runs_dir is not None:
        sources["runs"] = str(runs_dir)
    page = render(inputs, sources)
    atomic_write_bytes(out, page.encode())
    if markdown is not None:
        atomic_write_bytes(markdown, render_markdown(inputs).encode())
    return {"html": str(out), "markdown": str(markdown) if markdown else None, "evaluations": len(inputs.evals),
            "benchmarks": len(inputs.bench.get("benchmarks", {})) if inputs.bench else 0,
            "curves": len(inputs.curves), "projection": inputs.projection is not None,
            "latency_stages": len(inputs.latency), "notes": inputs.notes,
            "images": page.count("src='data:image/png;base64,")}
