"""The evaluation report: ``homefeed report`` gathers the model evaluations and the benchmarks into one
self-contained HTML page (plots are PNGs embedded as base64), and optionally a Markdown summary.

Inputs (see docs/interfaces.md):

- ``out/eval/*.json``: one file per model and dataset, written by ``homefeed eval <model>``:
  ``{"model", "dataset", "command", "rows": [{...metrics}], ...}``. Each becomes a table and a bar chart of
  its quality metrics (recall/hit/MRR/AUC...; error bars from ``<metric>_std`` or ``<metric>_se`` columns, or
  ``<name>_mean`` with ``<name>_std``), plus a metric@K curve when a row has the metric at several K.
- ``out/bench.json``: written by ``make bench`` (tests/bench/conftest.py): every benchmark's result with its
  medians, min/max, ratios and the machine. Becomes a table of ratios, a ratio chart, latency histograms
  (any list of at least 10 numbers under a key containing ``latenc``) and a details table per benchmark.

The papers' reference numbers stand beside the tables (:data:`PAPER`); missing inputs are named on the page.
The Markdown helpers here (:func:`flatten`, :func:`fmt_value`, :func:`bench_markdown`) also write
``out/bench.md``.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io as _io
import json
import math
import re
from pathlib import Path
from typing import Any

from components.data.io import atomic_write_bytes

MODELS = ("pinsage", "pinnerformer", "ranker")
DATASETS = ("ml-100k", "synthetic")

# The papers' own numbers, shown beside ours. They come from Pinterest's production data and pools, so they
# are a reference point for the order of magnitude and the ordering of variants, not a target.
PAPER: dict[str, dict[str, Any]] = {
    "pinsage": {
        "paper": "PinSage, arXiv 1806.01973, Table 1",
        "setting": "related pins on Pinterest: hit-rate of the positive among the top 500 of ~5M candidate "
                   "pins; MRR with ranks scaled by 1/100",
        "values": {"PinSage hit-rate": 0.67, "PinSage MRR (scaled)": 0.59},
        "lines": {},
    },
    "pinnerformer": {
        "paper": "PinnerFormer, arXiv 2205.04507",
        "setting": "Pinterest homefeed users; all positives of the 14 days after the embedding ranked against "
                   "1M random pins",
        "values": {"Recall@10, dense all-action, mixed negatives + logQ": 0.229,
                   "Recall@10, mixed negatives without logQ": 0.138,
                   "daily inference: SASRec / PinnerFormer": "0.216 / 0.243",
                   "real-time inference: SASRec / PinnerFormer": "0.251 / 0.264"},
        "lines": {"recall@10": 0.229, "recall@10_daily": 0.243, "recall@10_realtime": 0.264},
    },
    "ranker": {
        "paper": "Pinterest homefeed ranker, arXiv 2412.01985 (with PEPNet, arXiv 2302.01115)",
        "setting": "the paper reports relative offline and online lifts over Pinterest's production model, "
                   "not absolute HIT@3/save values, so there is no absolute number to put beside ours",
        "values": {},
        "lines": {},
    },
}

QUALITY = re.compile(r"(recall|hit|mrr|auc|ndcg|precision|topic|accuracy)", re.I)
ERROR_SUFFIXES = ("_std", "_se", "_stderr")


# ---------------------------------------------------------------------------------------------
# Formatting (shared with tests/bench/conftest.py, which writes out/bench.md)
# ---------------------------------------------------------------------------------------------


def is_stats(v: Any) -> bool:
    """A ``{"median", "min", "max", ...}`` dict of repeated measurements."""
    return isinstance(v, dict) and {"median", "min", "max"} <= set(v)


def fmt_number(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == 0:
            return "0"
        a = abs(v)
        if a >= 1e5:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:,.1f}"
        if a >= 0.01:
            return f"{v:.4g}"
        return f"{v:.2e}"
    return str(v)


def fmt_value(v: Any) -> str:
    """One Markdown cell: stats as **median** (min – max, reps), short lists inline, text escaped."""
    if is_stats(v):
        reps = f", {v['reps']} reps" if "reps" in v else ""
        return f"**{fmt_number(v['median'])}** ({fmt_number(v['min'])} – {fmt_number(v['max'])}{reps})"
    if isinstance(v, list) and all(not isinstance(x, dict | list) for x in v):
        return "[" + ", ".join(fmt_number(x) for x in v[:12]) + (", …" if len(v) > 12 else "") + "]"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {fmt_number(x)}" for k, x in v.items())
    if isinstance(v, str):
        return v.replace("|", "\\|").replace("\n", " ")
    return fmt_number(v)


def flatten(result: dict[str, Any], prefix: str = "") -> tuple[list[tuple[str, Any]], list[tuple[str, list]]]:
    """(rows, tables): nested dicts become dotted keys, stats dicts stay whole, lists of dicts become
    sub-tables; raw repetition times (``times``) are left out."""
    rows: list[tuple[str, Any]] = []
    tables: list[tuple[str, list]] = []
    for k, v in result.items():
        key = f"{prefix}{k}"
        if k == "times":
            continue
        if is_stats(v):
            rows.append((key, v))
        elif isinstance(v, dict):
            r, t = flatten(v, key + ".")
            rows += r
            tables += t
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            tables.append((key, v))
        else:
            rows.append((key, v))
    return rows, tables


def is_ratio_key(key: str) -> bool:
    last = key.split(".")[-1].lower()
    return any(w in last for w in ("speedup", "ratio", "times_faster")) and not last.endswith("min_max")


def headline(result: dict[str, Any]) -> list[tuple[str, Any]]:
    """The ratios of a benchmark result: keys naming a speed-up or ratio, as numbers or stats dicts."""
    rows, _ = flatten(result)
    return [(k, v) for k, v in rows
            if is_ratio_key(k) and ((isinstance(v, int | float) and not isinstance(v, bool)) or is_stats(v))]


def _sub_table(key: str, items: list[dict]) -> list[str]:
    cols: list[str] = []
    for it in items:
        for c, _ in flatten(it)[0]:
            if c not in cols:
                cols.append(c)
    lines = ["", f"**{key}**", "", "| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)]
    for it in items:
        flat = dict(flatten(it)[0])
        lines.append("| " + " | ".join(fmt_value(flat[c]) if c in flat else "" for c in cols) + " |")
    return lines


def bench_markdown(doc: dict[str, Any]) -> str:
    """``out/bench.md`` from the ``out/bench.json`` document."""
    m = doc.get("machine", {})
    lines = ["# homefeed benchmarks", "",
             f"Written by `{doc.get('command', 'make bench')}` at {doc.get('updated_at', '?')}. "
             "Each benchmark compares two things in the same run; times are the median of several repetitions "
             "with (min – max). The machine is shared, so read ratios rather than absolute times.", "",
             "## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {fmt_value(v)} |" for k, v in m.items()]
    benches = doc.get("benchmarks", {})
    lines += ["", "## Summary", "", "| benchmark | ratio | value | status |", "|---|---|---:|---|"]
    for name, entry in benches.items():
        for k, v in headline(entry.get("result", {})) or [("-", None)]:
            lines.append(f"| {name} | {k} | {fmt_value(v) if v is not None else '-'} | {entry.get('status', '?')} |")
    for name, entry in benches.items():
        em = entry.get("machine", m)
        same = all(em.get(k) == m.get(k) for k in ("cpu", "hostname", "usable_cores"))
        where = "" if same else f" on {em.get('cpu', '?')} ({em.get('usable_cores', '?')} cores, {em.get('hostname')})"
        lines += ["", f"## {name}", "", f"`{entry.get('test', '?')}` · {entry.get('status', '?')} · recorded "
                  f"{entry.get('recorded_at', '?')}{where}", ""]
        rows, tables = flatten(entry.get("result", {}))
        lines += ["| quantity | value |", "|---|---:|"] + [f"| {k} | {fmt_value(v)} |" for k, v in rows]
        for key, items in tables:
            lines += _sub_table(key, items)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Reading the inputs
# ---------------------------------------------------------------------------------------------


def load_evals(eval_dir: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every ``*.json`` evaluation in ``eval_dir`` (sorted by model, dataset) and the problems met."""
    eval_dir = Path(eval_dir)
    if not eval_dir.is_dir():
        return [], [f"{eval_dir}: no such folder, so no model evaluations (run `homefeed eval <model> --data DIR "
                    f"--out {eval_dir}`)"]
    results, problems = [], []
    for path in sorted(eval_dir.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            problems.append(f"{path}: not readable JSON ({e}); skipped")
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list) or "model" not in doc:
            problems.append(f"{path}: expected an object with 'model', 'dataset' and a 'rows' list; skipped")
            continue
        doc.setdefault("dataset", path.stem.split("_", 1)[-1])
        doc["_file"] = str(path)
        results.append(doc)
    if not results and not problems:
        problems.append(f"{eval_dir}: no evaluation JSON files")
    results.sort(key=lambda d: (MODELS.index(d["model"]) if d["model"] in MODELS else 99, str(d["model"]),
                                str(d["dataset"]), d["_file"]))
    return results, problems


def load_bench(path: str | Path) -> tuple[dict[str, Any] | None, list[str]]:
    path = Path(path)
    if not path.exists():
        return None, [f"{path}: missing, so no benchmarks (run `make bench`)"]
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, [f"{path}: not readable JSON ({e})"]
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), dict):
        return None, [f"{path}: expected an object with a 'benchmarks' mapping"]
    return doc, []


def missing_evaluations(evals: list[dict[str, Any]]) -> list[str]:
    have = {(d["model"], str(d["dataset"])) for d in evals}
    return [f"{m} on {ds}" for m in MODELS for ds in DATASETS if (m, ds) not in have]


# ---------------------------------------------------------------------------------------------
# Tables and plots
# ---------------------------------------------------------------------------------------------


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def row_label(row: dict[str, Any]) -> str:
    """A row's name: its text fields, then its booleans as key=yes/no, joined."""
    skip = ("model_dir", "command", "note")
    texts = [v for k, v in row.items() if isinstance(v, str) and not k.startswith("_") and k not in skip]
    flags = [f"{k}={'yes' if v else 'no'}" for k, v in row.items() if isinstance(v, bool)]
    return ", ".join(texts + flags) or "row"


def table_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Scalar columns of the rows: the naming ones (text, booleans) first, then the numbers."""
    cols: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in cols and not isinstance(v, dict | list) and not k.startswith("_"):
                cols.append(k)

    def naming(c: str) -> bool:
        return any(isinstance(r.get(c), str | bool) for r in rows)

    return [c for c in cols if naming(c)] + [c for c in cols if not naming(c)]


def _error_key(row_keys: set[str], metric: str) -> str | None:
    for base in (metric, metric[:-5] if metric.endswith("_mean") else None):
        if base is None:
            continue
        for suf in ERROR_SUFFIXES:
            if base + suf in row_keys:
                return base + suf
    return None


def quality_metrics(rows: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """(metric, error column or None) for the quality metrics the rows carry."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    all_keys = set(keys)
    out = []
    for k in keys:
        if k.endswith(ERROR_SUFFIXES) or not QUALITY.search(k):
            continue
        if not any(_is_num(r.get(k)) for r in rows):
            continue
        out.append((k, _error_key(all_keys, k)))
    return out


def at_k_groups(metrics: list[str]) -> dict[str, list[tuple[int, str]]]:
    """``{"hit": [(10, "hit@10"), (50, "hit@50")]}`` for metrics measured at two or more K."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for m in metrics:
        match = re.fullmatch(r"(.+)@(\d+)", m)
        if match:
            groups.setdefault(match.group(1), []).append((int(match.group(2)), m))
    return {g: sorted(v) for g, v in groups.items() if len(v) >= 2}


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_quality(result: dict[str, Any]) -> str | None:
    """Bar charts of the quality metrics, one panel per metric, error bars where the rows carry them,
    the paper's number as a dashed line where it measures the same thing."""
    rows = result["rows"]
    metrics = quality_metrics(rows)[:8]
    if not metrics:
        return None
    plt = _pyplot()
    labels = [row_label(r) for r in rows]
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols + 2.5, 0.32 * len(rows) * nrows + 1.6 * nrows),
                             squeeze=False)
    lines = PAPER.get(result["model"], {}).get("lines", {})
    for i, (metric, err) in enumerate(metrics):
        ax = axes[i // ncols][i % ncols]
        vals = [r.get(metric) if _is_num(r.get(metric)) else float("nan") for r in rows]
        errs = [r.get(err) if err and _is_num(r.get(err)) else 0.0 for r in rows]
        y = list(range(len(rows)))
        ax.barh(y, vals, xerr=errs if err else None, color="#c8102e", alpha=0.85, capsize=3)
        ax.set_yticks(y, labels if i % ncols == 0 else [""] * len(rows), fontsize=8)
        ax.invert_yaxis()
        title = metric + (f" (± {err.rsplit('_', 1)[-1]})" if err else "")
        if metric in lines:
            ax.axvline(lines[metric], color="#333333", linestyle="--", linewidth=1)
            title += f"\ndashed: paper {lines[metric]}"
        ax.set_title(title, fontsize=9)
    for j in range(len(metrics), nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    fig.suptitle(f"{result['model']} on {result['dataset']}", fontsize=11)
    fig.tight_layout()
    return _png(fig)


def plot_at_k(result: dict[str, Any]) -> str | None:
    """metric@K curves, one line per row, for metrics measured at several K (e.g. hit@10 and hit@50)."""
    rows = result["rows"]
    groups = at_k_groups([m for m, _ in quality_metrics(rows)])
    if not groups:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.6), squeeze=False)
    for ax, (name, ks) in zip(axes[0], groups.items()):
        for r in rows:
            xs = [k for k, m in ks if _is_num(r.get(m))]
            ax.plot(xs, [r[m] for k, m in ks if _is_num(r.get(m))], marker="o", label=row_label(r))
        ax.set_xlabel("K")
        ax.set_title(f"{result['model']} on {result['dataset']}: {name}@K", fontsize=10)
        ax.set_xticks([k for k, _ in ks], [str(k) for k, _ in ks])
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return _png(fig)


def bench_ratios(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, entry in doc.get("benchmarks", {}).items():
        for key, v in headline(entry.get("result", {})):
            med = v["median"] if is_stats(v) else v
            out.append({"benchmark": name, "ratio": key, "median": med,
                        "min": v["min"] if is_stats(v) else None, "max": v["max"] if is_stats(v) else None,
                        "status": entry.get("status", "?"), "recorded_at": entry.get("recorded_at", "?")})
    return out


def plot_bench_ratios(ratios: list[dict[str, Any]]) -> str | None:
    good = [r for r in ratios if _is_num(r["median"]) and r["median"] > 0]
    if not good:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.38 * len(good) + 1.4))
    y = list(range(len(good)))
    med = [r["median"] for r in good]
    lo = [r["median"] - r["min"] if _is_num(r["min"]) else 0 for r in good]
    hi = [r["max"] - r["median"] if _is_num(r["max"]) else 0 for r in good]
    ax.barh(y, med, xerr=[lo, hi], color="#2a6f97", capsize=3)
    ax.axvline(1.0, color="#333333", linestyle="--", linewidth=1)
    ax.set_yticks(y, [f"{r['benchmark']}: {r['ratio'].split('.')[-1]}" for r in good], fontsize=8)
    ax.invert_yaxis()
    if max(med) / max(min(med), 1e-12) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("ratio (median; whiskers: min – max)")
    ax.set_title("benchmark ratios")
    return _png(fig)


def latency_samples(doc: dict[str, Any]) -> list[tuple[str, list[float]]]:
    out = []

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), x)
        elif isinstance(v, list) and len(v) >= 10 and all(_is_num(x) for x in v) and "latenc" in prefix.lower():
            out.append((prefix, [float(x) for x in v]))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                if isinstance(x, dict):
                    walk(f"{prefix}[{i}]", x)

    for name, entry in doc.get("benchmarks", {}).items():
        walk(name, entry.get("result", {}))
    return out


def plot_latency_histograms(samples: list[tuple[str, list[float]]]) -> str | None:
    if not samples:
        return None
    plt = _pyplot()
    samples = samples[:9]
    ncols = min(3, len(samples))
    nrows = math.ceil(len(samples) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.0 * nrows), squeeze=False)
    for i, (name, xs) in enumerate(samples):
        ax = axes[i // ncols][i % ncols]
        ax.hist(xs, bins=min(40, max(5, len(xs) // 5)), color="#6a4c93")
        srt = sorted(xs)
        p50, p99 = srt[len(srt) // 2], srt[min(len(srt) - 1, int(0.99 * len(srt)))]
        ax.axvline(p50, color="black", linewidth=1)
        ax.axvline(p99, color="black", linestyle="--", linewidth=1)
        ax.set_title(f"{name}\np50 {fmt_number(p50)}, p99 {fmt_number(p99)}", fontsize=8)
    for j in range(len(samples), nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222}
h1{border-bottom:3px solid #c8102e}h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.8em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
code{background:#f5f5f5;padding:1px 4px}.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em 1em}
.ref{background:#eef5fb;border-left:4px solid #2a6f97;padding:.5em 1em}img{max-width:100%}
details{margin:.5em 0}summary{cursor:pointer;font-weight:600}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _html_table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"]
    for r in rows:
        cells = []
        for v in r:
            num = _is_num(v) or is_stats(v)
            text = fmt_value(v) if not isinstance(v, str) else v
            text = text.replace("**", "")
            cells.append(f"<td class='n'>{_e(text)}</td>" if num else f"<td>{_e(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def _img(b64: str | None, alt: str) -> str:
    return f"<p><img alt='{_e(alt)}' src='data:image/png;base64,{b64}'></p>" if b64 else ""


def _paper_block(model: str) -> str:
    ref = PAPER.get(model)
    if not ref:
        return ""
    body = f"<b>Paper:</b> {_e(ref['paper'])}. {_e(ref['setting'])}."
    if ref["values"]:
        body += _html_table(["paper's number", "value"], [[k, v] for k, v in ref["values"].items()])
    return f"<div class='ref'>{body}</div>"


def eval_section(result: dict[str, Any]) -> str:
    rows = result["rows"]
    cols = table_columns(rows)
    meta = {k: v for k, v in result.items()
            if k not in ("rows", "runs", "model", "dataset", "command", "_file", "paper") and not isinstance(v, dict | list)}
    parts = [f"<h3 id='{_e(result['model'])}-{_e(result['dataset'])}'>{_e(result['model'])} on "
             f"{_e(result['dataset'])}</h3>",
             f"<p>Command: <code>{_e(result.get('command') or '?')}</code> · file <code>{_e(result['_file'])}</code></p>"]
    if meta:
        parts.append("<p>" + " · ".join(f"{_e(k)}: {_e(fmt_number(v))}" for k, v in meta.items()) + "</p>")
    if not rows:
        parts.append("<p class='note'>This evaluation has no rows.</p>")
        return "\n".join(parts)
    parts.append(_html_table(cols, [[r.get(c, "") for c in cols] for r in rows]))
    parts.append(_paper_block(result["model"]))
    parts.append(_img(plot_quality(result), f"{result['model']} quality metrics"))
    parts.append(_img(plot_at_k(result), f"{result['model']} metric at K"))
    return "\n".join(p for p in parts if p)


def bench_section(doc: dict[str, Any]) -> str:
    ratios = bench_ratios(doc)
    m = doc.get("machine", {})
    parts = [f"<p>From <code>{_e(doc.get('command', 'make bench'))}</code>, updated {_e(doc.get('updated_at', '?'))}."
             " Each benchmark compares two things in the same run; medians of several repetitions with (min – max)."
             "</p>",
             _html_table(["machine", ""], [[k, v] for k, v in m.items()])]
    if ratios:
        parts.append(_html_table(["benchmark", "ratio", "median", "min", "max", "status", "recorded"],
                                 [[r["benchmark"], r["ratio"], r["median"], r["min"], r["max"], r["status"],
                                   r["recorded_at"]] for r in ratios]))
    else:
        parts.append("<p class='note'>No benchmark recorded a ratio.</p>")
    parts.append(_img(plot_bench_ratios(ratios), "benchmark ratios"))
    samples = latency_samples(doc)
    if samples:
        parts.append("<h3>Latency histograms</h3>" + _img(plot_latency_histograms(samples), "latency histograms"))
    else:
        parts.append("<p>No benchmark recorded per-request latency samples (lists under a <code>latency</code> key), "
                     "so there are no latency histograms.</p>")
    for name, entry in doc.get("benchmarks", {}).items():
        rows, tables = flatten(entry.get("result", {}))
        body = _html_table(["quantity", "value"], [[k, v] for k, v in rows])
        for key, items in tables:
            cols: list[str] = []
            for it in items:
                cols += [c for c, _ in flatten(it)[0] if c not in cols]
            body += f"<p><b>{_e(key)}</b></p>" + _html_table(cols, [[dict(flatten(it)[0]).get(c, "") for c in cols]
                                                                      for it in items])
        parts.append(f"<details><summary>{_e(name)} — {_e(entry.get('status', '?'))}, "
                     f"<code>{_e(entry.get('test', '?'))}</code></summary>{body}</details>")
    return "\n".join(p for p in parts if p)


def render_html(evals: list[dict[str, Any]], bench: dict[str, Any] | None, notes: list[str],
                sources: dict[str, str]) -> str:
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    toc = "".join(f"<li><a href='#{_e(r['model'])}-{_e(r['dataset'])}'>{_e(r['model'])} on {_e(r['dataset'])}</a></li>"
                  for r in evals)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>homefeed evaluation report</title>",
             f"<style>{CSS}</style></head><body>",
             "<h1>homefeed evaluation report</h1>",
             f"<p>Generated {now} by <code>homefeed report</code> from "
             + ", ".join(f"{_e(k)} <code>{_e(v)}</code>" for k, v in sources.items()) + ".</p>"]
    if notes:
        parts.append("<div class='note'><b>Missing or skipped inputs</b><ul>"
                     + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul></div>")
    parts.append("<h2>Model quality</h2>")
    if evals:
        parts.append(f"<ul>{toc}</ul>")
        parts += [eval_section(r) for r in evals]
    else:
        parts.append("<p class='note'>No model evaluations were found.</p>")
    parts.append("<h2>Benchmarks</h2>")
    parts.append(bench_section(bench) if bench else "<p class='note'>No benchmark results were found.</p>")
    parts.append("<h2>The papers' numbers</h2>")
    parts += [_paper_block(m) for m in MODELS]
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(evals: list[dict[str, Any]], bench: dict[str, Any] | None, notes: list[str]) -> str:
    """A Markdown summary (for the README): each evaluation's table with its command, the benchmark ratios."""
    lines = ["## Model quality", ""]
    for r in evals:
        cols = table_columns(r["rows"])
        lines += [f"### {r['model']} on {r['dataset']}", "", f"`{r.get('command') or '?'}`", "",
                  "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(fmt_value(row.get(c, "")) for c in cols) + " |" for row in r["rows"]]
        ref = PAPER.get(r["model"])
        if ref and ref["values"]:
            lines += ["", f"Paper ({ref['paper']}; {ref['setting']}): "
                      + "; ".join(f"{k} {v}" for k, v in ref["values"].items()) + "."]
        lines.append("")
    if not evals:
        lines += ["No model evaluations found.", ""]
    lines += ["## Benchmarks", ""]
    if bench:
        m = bench.get("machine", {})
        lines += [f"`{bench.get('command', 'make bench')}` on {m.get('cpu', '?')} ({m.get('usable_cores', '?')} cores), "
                  f"Python {m.get('python', '?')}, torch {m.get('torch', '?')}, {bench.get('updated_at', '?')}.", "",
                  "| benchmark | ratio | median (min – max) |", "|---|---|---:|"]
        for r in bench_ratios(bench):
            rng = f" ({fmt_number(r['min'])} – {fmt_number(r['max'])})" if r["min"] is not None else ""
            lines.append(f"| {r['benchmark']} | {r['ratio']} | {fmt_number(r['median'])}{rng} |")
    else:
        lines.append("No benchmark results found.")
    if notes:
        lines += ["", "Missing inputs: " + "; ".join(notes)]
    return "\n".join(lines) + "\n"


def build_report(eval_dir: str | Path = "out/eval", bench_path: str | Path = "out/bench.json",
                 out: str | Path = "out/report.html", markdown: str | Path | None = None) -> dict[str, Any]:
    """Write the HTML report (and the Markdown summary if ``markdown``); returns what went in."""
    evals, notes = load_evals(eval_dir)
    bench, bench_notes = load_bench(bench_path)
    notes += bench_notes
    if evals:
        missing = missing_evaluations(evals)
        if missing:
            notes.append("no evaluation for " + ", ".join(missing)
                         + f" (run `homefeed eval <model> --data DIR --out {eval_dir}`)")
    page = render_html(evals, bench, notes, {"evaluations": str(eval_dir), "benchmarks": str(bench_path)})
    atomic_write_bytes(out, page.encode())
    if markdown is not None:
        atomic_write_bytes(markdown, render_markdown(evals, bench, notes).encode())
    return {"html": str(out), "markdown": str(markdown) if markdown else None, "evaluations": len(evals),
            "benchmarks": len(bench.get("benchmarks", {})) if bench else 0, "notes": notes}
