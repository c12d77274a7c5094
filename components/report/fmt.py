"""Formatting shared by the report and the benchmark summary: numbers, Markdown cells, flattened benchmark
results, and ``out/bench.md`` (tests/bench/conftest.py calls :func:`bench_markdown`)."""

from __future__ import annotations

import math
from typing import Any


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
