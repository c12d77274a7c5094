"""The report page: one static HTML file, every figure embedded as a PNG data URI, no script.

Sections, in order: model quality (one block per ``EvalResult``: quality metrics only, mean ± std [95% CI] per
variant, metric@K curves, bars with seed intervals, orderings), training curves, the pin embedding projection,
recommend latency per stage, scale benchmarks, operational counters (times, data wait, memory: never under
model quality), and the papers' setting (papers' numbers whose protocol differs from ours, with what differs).
"""

from __future__ import annotations

import datetime as dt
import html
import re
from typing import Any

from components.evaluation.result import EvalResult
from components.report import plots
from components.report.fmt import flatten, fmt_number, fmt_value, headline, is_stats
from components.report.inputs import Inputs, is_quality

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1180px;margin:1.5em auto;padding:0 1.2em;
color:#222;line-height:1.45}
h1{border-bottom:3px solid #c8102e;padding-bottom:.2em}h2{margin-top:2.2em;border-bottom:1px solid #ddd}
h3{margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}td,th{border:1px solid #d5d5d5;padding:3px 8px}
th{background:#f3f3f3;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.best td{font-weight:600}
code{background:#f5f5f5;padding:1px 4px;font-size:12px}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em 1em}
.ref{background:#eef5fb;border-left:4px solid #2a6f97;padding:.5em 1em}
.toc{columns:2;font-size:14px}figure{margin:.8em 0}img{max-width:100%;height:auto}
details{margin:.5em 0}summary{cursor:pointer;font-weight:600}.muted{color:#666;font-size:13px}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _cell(v: Any) -> str:
    if isinstance(v, str):
        return f"<td>{_e(v)}</td>"
    num = (isinstance(v, int | float) and not isinstance(v, bool)) or is_stats(v)
    text = fmt_value(v).replace("**", "")
    return f"<td class='n'>{_e(text)}</td>" if num else f"<td>{_e(text)}</td>"


def table(header: list[str], rows: list[list[Any]], classes: list[str] | None = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"]
    for i, r in enumerate(rows):
        cls = f" class='{classes[i]}'" if classes and classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(_cell(v) for v in r) + "</tr>")
    return "\n".join(out) + "</table>"


def img(b64: str | None, alt: str) -> str:
    return f"<figure><img alt='{_e(alt)}' src='data:image/png;base64,{b64}'></figure>" if b64 else ""


def _anchor(r: EvalResult) -> str:
    return f"{r.model}-{r.dataset}".replace(" ", "-")


# ---------------------------------------------------------------------------------------------------------
# Model quality
# ---------------------------------------------------------------------------------------------------------


def split_metrics(r: EvalResult) -> tuple[list[str], dict[str, list[tuple[int, str]]], list[str]]:
    """(quality metrics for bars and the table, @K groups long enough for a curve, operational metrics)."""
    quality = [m for m in r.metrics if is_quality(m)]
    ops = [m for m in r.metrics if not is_quality(m)]
    curves = {g: ks for g, ks in plots.at_k_groups(quality).items() if len(ks) >= 4}
    in_curve = {m for ks in curves.values() for _, m in ks}
    # the table keeps K=10 (or the K nearest it) of a curve; the plot shows every K
    keep = {min(ks, key=lambda km: abs(km[0] - 10))[1] for ks in curves.values()}
    table_metrics = [m for m in quality if m not in in_curve or m in keep]
    return table_metrics, curves, ops


def stat_cell(r: EvalResult, variant: str, metric: str) -> str:
    s = r.stat(variant, metric)
    if s.mean is None:
        return "undefined"
    if s.std is None:
        return fmt_number(s.mean)
    ci = f" [{fmt_number(s.ci_low)}, {fmt_number(s.ci_high)}]" if s.ci_low is not None else ""
    return f"{fmt_number(s.mean)} ± {fmt_number(s.std)}{ci}"


def metric_table(r: EvalResult, metrics: list[str]) -> str:
    arrows = {"higher": "↑", "lower": "↓"}
    header = ["variant", "seeds"] + [f"{m} {arrows[r.metrics[m]]}" for m in metrics]
    rows = [[v, str(len({x.seed for x in r.runs if x.variant == v}))] + [stat_cell(r, v, m) for m in metrics]
            for v in r.variants]
    return table(header, rows)


def quality_section(r: EvalResult) -> str:
    metrics, curves, _ = split_metrics(r)
    parts = [f"<h3 id='{_e(_anchor(r))}'>{_e(r.model)} on {_e(r.dataset)}</h3>",
             f"<p class='muted'>Command: <code>{_e(r.command)}</code> · written {_e(r.created_at)}</p>"]
    if r.protocol:
        parts.append("<ul class='muted'>" + "".join(f"<li><b>{_e(k)}</b>: {_e(fmt_value(v))}</li>"
                                                  for k, v in r.protocol.items()) + "</ul>")
    if not r.runs or not metrics:
        parts.append("<p class='note'>No quality metric was recorded in this evaluation.</p>")
        return "\n".join(parts)
    parts.append("<p class='muted'>Mean ± std [95% t interval] over seeds; ↑ higher is better, ↓ lower.</p>")
    parts.append(metric_table(r, metrics))
    shown = [p for p in r.papers if p.protocol_matches]
    if shown:
        rows = [[p.paper, p.variant, p.metric, p.value,
                 stat_cell(r, p.variant, p.metric) if p.variant in r.variants else "not run", p.protocol]
                for p in shown]
        parts.append("<div class='ref'><b>Paper numbers under the same protocol</b>"
                     + table(["paper", "variant", "metric", "paper", "ours", "protocol"], rows) + "</div>")
    hidden = [p for p in r.papers if not p.protocol_matches]
    if hidden:
        parts.append(f"<p class='muted'>{len(hidden)} paper number(s) measured under a different protocol are not "
                     "drawn here; see <a href='#papers'>the papers' setting</a>.</p>")
    for name, ks in curves.items():
        parts.append(img(plots.plot_at_k(r, name, ks), f"{r.model} {name}@K curves"))
    bar_metrics = [m for m in metrics if not any(m in {x for _, x in ks} for ks in curves.values())]
    parts.append(img(plots.plot_bars(r, bar_metrics), f"{r.model} quality per variant"))
    if len(r.variants) < 2:
        parts.append("<p class='muted'>One variant: the table says it all (no chart of single bars).</p>")
    if r.comparisons:
        rows = [[f"{c.better} > {c.worse}", c.metric,
                 "undefined" if c.ci_low is None else f"{fmt_number(c.diff_mean)} [{fmt_number(c.ci_low)}, "
                 f"{fmt_number(c.ci_high)}]", c.n, c.verdict] for c in r.comparisons]
        parts.append("<p><b>Orderings</b> (paired over shared seeds):</p>"
                     + table(["ordering", "metric", "paired difference [95% CI]", "seeds", "verdict"], rows))
        parts.append(img(plots.plot_orderings(r), f"{r.model} orderings"))
    if r.notes:
        parts.append("<ul class='muted'>" + "".join(f"<li>{_e(n)}</li>" for n in r.notes) + "</ul>")
    return "\n".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------------------------
# Training, embeddings, serving, benchmarks, operations, papers
# ---------------------------------------------------------------------------------------------------------


def curves_section(inputs: Inputs) -> str:
    if not inputs.curves:
        return "<p class='note'>No training logs were found.</p>"
    rows = [[c.name, len(c.steps), c.losses[0] if c.losses else "-", c.losses[-1] if c.losses else "-", c.path]
            for c in inputs.curves]
    pic = plots.plot_curves(inputs.curves)
    return (img(pic, "training loss curves")
            + (("<p class='muted'>Black: moving average over a tenth of the points.</p>") if pic else "")
            + table(["run", "logged steps", "first loss", "last loss", "train_log.jsonl"], rows))


def projection_section(inputs: Inputs) -> str:
    p = inputs.projection
    if p is None:
        return "<p class='note'>No pin embedding table was given (the demo records one in demo.json).</p>"
    return (f"<p>From <code>{_e(p.source)}</code>. Pins of one {_e(p.label_kind)} sitting together means the "
            "embedding learned that structure without being given the label.</p>"
            + img(plots.plot_projection(p), "pin embeddings projected to 2-D"))


PCT_KEY = re.compile(r"^p(50|90|95|99)(?:_(ms|s))?$")


def _bench_percentile_results(bench: dict[str, Any] | None) -> list[tuple[str, str, dict[str, dict[str, float]]]]:
    """Benchmarks that recorded percentiles per stage, ``{stage: {"p50_ms": ..., "p99_ms": ...}}`` (or ``p50``
    / ``p50_s``): (benchmark, unit, {stage: {"p50": ..., "p99": ...}})."""
    out = []
    for name, entry in (bench or {}).get("benchmarks", {}).items():
        stages, unit = {}, ""
        for k, v in entry.get("result", {}).items():
            if not isinstance(v, dict):
                continue
            pct = {}
            for key, x in v.items():
                m = PCT_KEY.match(key)
                if m and isinstance(x, int | float) and not isinstance(x, bool):
                    pct[f"p{m.group(1)}"] = float(x)
                    unit = m.group(2) or unit
            if "p50" in pct:
                stages[k] = pct
        if stages:
            out.append((name, unit or "s", stages))
    return out


def latency_samples(doc: dict[str, Any]) -> list[tuple[str, list[float]]]:
    """Lists of >= 10 numbers under a key containing ``latenc`` (per-request samples) in the benchmarks."""
    out = []

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), x)
        elif isinstance(v, list) and len(v) >= 10 and all(isinstance(x, int | float) for x in v) \
                and "latenc" in prefix.lower():
            out.append((prefix, [float(x) for x in v]))

    for name, entry in doc.get("benchmarks", {}).items():
        walk(name, entry.get("result", {}))
    return out


STAGE_ORDER = ("feast_user", "milvus", "feast_features", "triton", "total", "http round trip")


def latency_section(inputs: Inputs) -> str:
    parts = []
    if inputs.latency:
        order = [k for k in STAGE_ORDER if k in inputs.latency] + [k for k in inputs.latency if k not in STAGE_ORDER]
        pct = {k: plots.percentiles(inputs.latency[k]) for k in order}
        n = max(len(v) for v in inputs.latency.values())
        parts.append(f"<p>Measured by the demo: {n} requests through the recommend path "
                     f"(<code>{_e(inputs.latency_source)}</code>).</p>")
        parts.append(img(plots.plot_percentiles(pct, "recommend latency per stage (demo)"), "recommend latency"))
        parts.append(table(["stage", "requests"] + [f"p{q} (ms)" for q in plots.PERCENTILES],
                           [[k, len(inputs.latency[k])] + [pct[k][f"p{q}"] for q in plots.PERCENTILES]
                            for k in pct]))
    for name, unit, stages in _bench_percentile_results(inputs.bench):
        what = inputs.bench["benchmarks"][name]["result"].get("what", "")
        parts.append(f"<p>Benchmark <code>{_e(name)}</code>: {_e(what)}</p>")
        parts.append(img(plots.plot_percentiles(stages, f"{name} ({unit})", unit=unit), name))
    samples = latency_samples(inputs.bench) if inputs.bench else []
    if samples:
        parts.append(img(plots.plot_latency_histograms(samples), "latency histograms"))
    return "\n".join(p for p in parts if p) or ("<p class='note'>No latency was measured (run `make demo` or "
                                                "`make bench`).</p>")


def bench_ratios(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, entry in doc.get("benchmarks", {}).items():
        for key, v in headline(entry.get("result", {})):
            out.append({"benchmark": name, "ratio": key, "median": v["median"] if is_stats(v) else v,
                        "min": v["min"] if is_stats(v) else None, "max": v["max"] if is_stats(v) else None,
                        "status": entry.get("status", "?"), "recorded_at": entry.get("recorded_at", "?")})
    return out


def bench_section(doc: dict[str, Any] | None) -> str:
    if not doc:
        return "<p class='note'>No benchmark results were found (run <code>make bench</code>).</p>"
    m = doc.get("machine", {})
    parts = [f"<p>From <code>{_e(doc.get('command', 'make bench'))}</code>, updated {_e(doc.get('updated_at', '?'))}"
             f" on {_e(m.get('cpu', '?'))} ({_e(m.get('usable_cores', '?'))} cores). Each benchmark compares two "
             "things in the same run; medians of repetitions with (min – max).</p>"]
    growth = plots.growth_series(doc)
    if growth:
        parts.append("<h3>Growth with scale</h3>" + img(plots.plot_growth(growth), "scale benchmarks"))
    ratios = bench_ratios(doc)
    parts.append("<h3>Ratios</h3>" + img(plots.plot_bench_ratios(ratios), "benchmark ratios"))
    if ratios:
        parts.append(table(["benchmark", "ratio", "median", "min", "max", "status"],
                           [[r["benchmark"], r["ratio"], r["median"], r["min"], r["max"], r["status"]] for r in ratios]))
    for name, entry in doc.get("benchmarks", {}).items():
        rows, tables = flatten(entry.get("result", {}))
        body = table(["quantity", "value"], [[k, v] for k, v in rows])
        for key, items in tables:
            cols: list[str] = []
            for it in items:
                cols += [c for c, _ in flatten(it)[0] if c not in cols]
            body += f"<p><b>{_e(key)}</b></p>" + table(cols, [[dict(flatten(it)[0]).get(c, "") for c in cols]
                                                              for it in items])
        parts.append(f"<details><summary>{_e(name)} — {_e(entry.get('status', '?'))}</summary>"
                     f"<p class='muted'><code>{_e(entry.get('test', '?'))}</code></p>{body}</details>")
    return "\n".join(p for p in parts if p)


def _counters_text(c: dict[str, float]) -> str:
    return " · ".join(f"{k} {fmt_number(v)}" for k, v in c.items())


def operations_section(inputs: Inputs) -> str:
    parts = ["<p>How the runs went rather than how good the models are: wall times, the share of time spent "
             "waiting for data, rows and pairs per rank, memory.</p>"]
    for r in inputs.evals:
        _, _, ops = split_metrics(r)
        if ops and r.runs:
            parts.append(f"<p><b>{_e(r.model)} on {_e(r.dataset)}</b> (evaluation runs)</p>" + metric_table(r, ops))
    trained = {c.name for c in inputs.curves if c.counters}
    counters = [(c.name, c.counters) for c in inputs.curves if c.counters]
    # a pipeline task's counters, unless its train_log.jsonl already gave them (same task name)
    counters += [(name, c) for name, c in inputs.pipeline_counters
                 if not any(f": {t} (" in name for t in trained)]
    if counters:
        parts.append("<p><b>Training runs and pipeline steps</b></p>"
                     + table(["run", "counters"], [[name, _counters_text(c)] for name, c in counters]))
    return "\n".join(parts) if len(parts) > 1 else "<p class='note'>No operational counters were recorded.</p>"


def _protocol_value(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(fmt_value(v))


def papers_section(inputs: Inputs) -> str:
    rows = []
    for r in inputs.evals:
        for p in r.papers:
            if p.protocol_matches:
                continue
            shared = {k: v for k, v in r.protocol.items() if k in p.protocol}  # the keys the paper's protocol names
            ours = ", ".join(f"{k} {_protocol_value(v)}" for k, v in shared.items()) or \
                "; ".join(f"{k}: {fmt_value(v)}" for k, v in r.protocol.items())
            differs = [k for k, v in shared.items()  # "pool 1,000" must not match inside "pool 1,000,000"
                       if not re.search(re.escape(f"{k} {_protocol_value(v)}") + r"(?=$|, \D)", p.protocol)]
            rows.append([p.paper, p.variant, p.metric, p.value, p.protocol, f"{r.model} on {r.dataset}: {ours}",
                         ", ".join(differs) + "; data: Pinterest vs " + r.dataset if differs else
                         f"data: Pinterest vs {r.dataset}"])
    if not rows:
        return ("<p>No paper number with a different protocol was recorded by the evaluations; the ones that "
                "match are shown beside ours above.</p>")
    return ("<p>The papers measured these on Pinterest's data, users and candidate pools. Their protocol differs "
            "from ours, so the numbers are not comparable and are not drawn next to ours.</p>"
            + table(["paper", "variant", "metric", "paper's value", "paper's protocol", "ours", "what differs"], rows))


# ---------------------------------------------------------------------------------------------------------


def render(inputs: Inputs, sources: dict[str, str]) -> str:
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    sections = [("quality", "Model quality"), ("training", "Training curves"), ("embeddings", "Pin embeddings"),
                ("latency", "Recommend latency"), ("benchmarks", "Scale benchmarks"),
                ("operations", "Operational counters"), ("papers", "The papers' setting")]
    toc = "".join(f"<li><a href='#{a}'>{_e(t)}</a></li>" for a, t in sections)
    toc += "".join(f"<li><a href='#{_e(_anchor(r))}'>{_e(r.model)} on {_e(r.dataset)}</a></li>" for r in inputs.evals)
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             "<title>homefeed report</title>", f"<style>{CSS}</style></head><body>",
             "<h1>homefeed report</h1>",
             f"<p class='muted'>Generated {now} by <code>homefeed report</code> from "
             + ", ".join(f"{_e(k)} <code>{_e(v)}</code>" for k, v in sources.items()) + ".</p>",
             f"<ul class='toc'>{toc}</ul>"]
    if inputs.notes:
        parts.append("<div class='note'><b>Missing or skipped inputs</b><ul>"
                     + "".join(f"<li>{_e(n)}</li>" for n in inputs.notes) + "</ul></div>")
    parts.append("<h2 id='quality'>Model quality</h2>")
    parts += [quality_section(r) for r in inputs.evals] or ["<p class='note'>No model evaluations were found.</p>"]
    parts += ["<h2 id='training'>Training curves</h2>", curves_section(inputs),
              "<h2 id='embeddings'>Pin embeddings</h2>", projection_section(inputs),
              "<h2 id='latency'>Recommend latency</h2>", latency_section(inputs),
              "<h2 id='benchmarks'>Scale benchmarks</h2>", bench_section(inputs.bench),
              "<h2 id='operations'>Operational counters</h2>", operations_section(inputs),
              "<h2 id='papers'>The papers' setting</h2>", papers_section(inputs),
              "</body></html>"]
    return "\n".join(parts)


def render_markdown(inputs: Inputs) -> str:
    """A Markdown summary (for the README): each evaluation's quality table with its command, the ratios."""
    lines = ["## Model quality", ""]
    for r in inputs.evals:
        metrics, _, _ = split_metrics(r)
        lines += [f"### {r.model} on {r.dataset}", "", f"`{r.command}`", "",
                  "| variant | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
        lines += ["| " + v + " | " + " | ".join(stat_cell(r, v, m) for m in metrics) + " |" for v in r.variants]
        lines.append("")
    if not inputs.evals:
        lines += ["No model evaluations found.", ""]
    lines += ["## Benchmarks", ""]
    if inputs.bench:
        lines += ["| benchmark | ratio | median (min – max) |", "|---|---|---:|"]
        for r in bench_ratios(inputs.bench):
            rng = f" ({fmt_number(r['min'])} – {fmt_number(r['max'])})" if r["min"] is not None else ""
            lines.append(f"| {r['benchmark']} | {r['ratio']} | {fmt_number(r['median'])}{rng} |")
    else:
        lines.append("No benchmark results found.")
    if inputs.notes:
        lines += ["", "Missing inputs: " + "; ".join(inputs.notes)]
    return "\n".join(lines) + "\n"
