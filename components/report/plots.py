"""The report's figures, each returned as a base64 PNG (embedded as a data URI) or None when there is
nothing worth drawing (one bar is a table row, not a chart).

Error bars are the 95% t interval of the mean over seeds when the result has one, else the std; their kind is
written on the axis. A paper's number is drawn only when its protocol matches ours (``PaperNumber``).
"""

from __future__ import annotations

import base64
import io
import math
import re
from typing import Any

import numpy as np

from components.evaluation.result import EvalResult
from components.report.fmt import fmt_number, is_stats
from components.report.inputs import Projection, TrainCurve

PALETTE = ["#c8102e", "#2a6f97", "#f0a202", "#3a7d44", "#6a4c93", "#e07a5f", "#0081a7", "#8d99ae", "#a44a3f",
           "#52b788"]


def _plt():
    import matplotlib  # matplotlib: seconds to import, only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display backend on a server

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "axes.grid": True, "grid.alpha": 0.25, "figure.dpi": 100})
    return plt


def _png(fig) -> str:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def at_k_groups(metrics: list[str]) -> dict[str, list[tuple[int, str]]]:
    """``{"recall": [(1, "recall@1"), (10, "recall@10"), ...]}`` for metrics measured at two or more K."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for m in metrics:
        match = re.fullmatch(r"(.+)@(\d+)", m)
        if match:
            groups.setdefault(match.group(1), []).append((int(match.group(2)), m))
    return {g: sorted(v) for g, v in groups.items() if len(v) >= 2}


def _interval(result: EvalResult, variant: str, metric: str) -> tuple[float | None, float, float, str]:
    """(mean, lower error, upper error, kind) of one variant's metric."""
    s = result.stat(variant, metric)
    if s.mean is None:
        return None, 0.0, 0.0, ""
    if s.ci_low is not None:
        return s.mean, s.mean - s.ci_low, s.ci_high - s.mean, "95% CI"
    if s.std is not None:
        return s.mean, s.std, s.std, "± std"
    return s.mean, 0.0, 0.0, ""


def _matching_papers(result: EvalResult, metric: str) -> list[tuple[str, str, float]]:
    return [(p.paper, p.variant, p.value) for p in result.papers if p.protocol_matches and p.metric == metric]


def plot_at_k(result: EvalResult, name: str, ks: list[tuple[int, str]]) -> str | None:
    """``name``@K against K, one line per variant (mean over seeds, shaded interval)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    drawn = 0
    for i, variant in enumerate(result.variants):
        xs, ys, lo, hi = [], [], [], []
        for k, m in ks:
            mean, el, eh, _ = _interval(result, variant, m)
            if mean is not None:
                xs.append(k)
                ys.append(mean)
                lo.append(mean - el)
                hi.append(mean + eh)
        if not xs:
            continue
        c = PALETTE[i % len(PALETTE)]
        ax.plot(xs, ys, marker="o" if len(xs) <= 12 else None, markersize=3, color=c, label=variant, linewidth=1.6)
        if any(h > l for h, l in zip(hi, lo)):
            ax.fill_between(xs, lo, hi, color=c, alpha=0.15, linewidth=0)
        drawn += 1
    for _, m in ks:
        for paper, variant, value in _matching_papers(result, m):
            ax.scatter([int(m.rsplit("@", 1)[1])], [value], marker="x", color="black", zorder=5,
                       label=f"{paper}: {variant}")
    if not drawn:
        plt.close(fig)
        return None
    if ks[-1][0] / max(ks[0][0], 1) >= 20:
        ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel(f"{name}@K")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{result.model} on {result.dataset}: {name}@K per variant (shaded: interval over seeds)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _png(fig)


def _variant_colours(result: EvalResult) -> list[str]:
    """Variants with PEPNet (by name or details) in one colour, the others in another; else one colour."""
    def pep(v: str) -> bool | None:
        for r in result.runs:
            if r.variant == v and isinstance(r.details.get("pepnet"), bool):
                return r.details["pepnet"]
        low = v.lower()
        if "pepnet" in low:
            return not re.search(r"(no|without|w/o)[ _-]*pepnet|pepnet[ =:_-]*(no|off|false)", low)
        return None

    flags = [pep(v) for v in result.variants]
    if all(f is None for f in flags):
        return [PALETTE[1]] * len(flags)
    return [PALETTE[0] if f else PALETTE[7] for f in flags]


def plot_bars(result: EvalResult, metrics: list[str]) -> str | None:
    """One panel per metric: a bar per variant (mean over seeds) with its interval; needs two variants."""
    metrics = [m for m in metrics if any(result.stat(v, m).mean is not None for v in result.variants)][:6]
    if len(result.variants) < 2 or not metrics:
        return None
    plt = _plt()
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    n = len(result.variants)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols + 2.4, (0.3 * n + 1.3) * nrows), squeeze=False)
    colours = _variant_colours(result)
    y = np.arange(n)
    for i, metric in enumerate(metrics):
        ax = axes[i // ncols][i % ncols]
        vals, errs, kinds = [], [[], []], set()
        for v in result.variants:
            mean, el, eh, kind = _interval(result, v, metric)
            vals.append(np.nan if mean is None else mean)
            errs[0].append(el)
            errs[1].append(eh)
            if kind:
                kinds.add(kind)
        ax.barh(y, vals, xerr=errs if kinds else None, color=colours, capsize=3, error_kw={"linewidth": 1})
        ax.set_yticks(y, result.variants if i % ncols == 0 else [""] * n, fontsize=8)
        ax.invert_yaxis()
        arrow = "↑" if result.metrics.get(metric) == "higher" else "↓"
        title = f"{metric} {arrow}" + (f"  (bars: {', '.join(sorted(kinds))})" if kinds else "")
        for paper, variant, value in _matching_papers(result, metric):
            ax.axvline(value, color="black", linestyle="--", linewidth=1)
            title += f"\ndashed: {paper} ({variant}) {value:g}"
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", visible=False)
    for j in range(len(metrics), nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    seeds = result.seeds()
    fig.suptitle(f"{result.model} on {result.dataset}: {len(seeds)} seed(s) {seeds}", fontsize=10)
    fig.tight_layout()
    return _png(fig)


VERDICTS = {  # a comparison's verdict -> (how the README says it, colour)
    "holds": ("holds", "#3a7d44"),
    "not significant": ("does not hold", "#8d99ae"),
    "reversed": ("reversed", "#c8102e"),
    "undefined": ("undefined (< 2 paired seeds)", "#cccccc"),
}


def ordering_rows(result: EvalResult) -> list[tuple[str, str, float, float, float, str, str]]:
    """(metric, "better > worse", paired difference, lower error, upper error, verdict as the README says it,
    colour) per claimed ordering with a mean; > 0 is the claim's direction (as ``EvalResult.compare`` signs it)."""
    rows = []
    for c in (c for c in result.comparisons if c.diff_mean is not None):
        lo, hi = (c.diff_mean - c.ci_low, c.ci_high - c.diff_mean) if c.ci_low is not None else (0.0, 0.0)
        said, colour = VERDICTS.get(c.verdict, (c.verdict, "#cccccc"))
        rows.append((c.metric, f"{c.better} > {c.worse}", c.diff_mean, lo, hi, said, colour))
    return rows


def plot_orderings(result: EvalResult) -> str | None:
    """Each claimed ordering's paired difference over seeds with its 95% interval, 0 dashed, coloured and labelled
    holds / does not hold / reversed; one panel per metric (differences of different metrics share no scale)."""
    rows = ordering_rows(result)
    if not rows:
        return None
    plt = _plt()
    panels = {m: [r for r in rows if r[0] == m] for m in dict.fromkeys(r[0] for r in rows)}
    heights = [len(p) for p in panels.values()]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9.0, 0.42 * len(rows) + 1.1 * len(panels)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (metric, mine) in zip(axes[:, 0], panels.items()):
        for y, (_, _, mean, lo, hi, said, colour) in enumerate(mine):
            ax.errorbar([mean], [y], xerr=[[lo], [hi]], fmt="o", color=colour, capsize=3, markersize=5, linewidth=1.4)
            ax.annotate(f" {said}", (mean + hi, y), fontsize=7, va="center", color=colour)
        ax.axvline(0.0, color="#333333", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(mine)), [r[1] for r in mine], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(f"paired difference in {metric} (> 0: the claimed order; bars: 95% CI over seeds)", fontsize=8)
        ax.grid(axis="y", visible=False)
        ax.margins(x=0.25)
    axes[0, 0].set_title(f"{result.model} on {result.dataset}: claimed orderings", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def plot_curves(curves: list[TrainCurve]) -> str | None:
    """Training loss against step, one panel per run."""
    curves = [c for c in curves if len(c.steps) >= 2][:9]
    if not curves:
        return None
    plt = _plt()
    ncols = min(3, len(curves))
    nrows = math.ceil(len(curves) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.3 * ncols, 2.9 * nrows), squeeze=False)
    for i, c in enumerate(curves):
        ax = axes[i // ncols][i % ncols]
        ax.plot(c.steps, c.losses, color=PALETTE[i % len(PALETTE)], linewidth=1.2, alpha=0.9)
        if len(c.losses) >= 10:  # a moving average shows the trend under the noise of small batches
            w = max(2, len(c.losses) // 10)
            smooth = np.convolve(c.losses, np.ones(w) / w, mode="valid")
            ax.plot(c.steps[w - 1:], smooth, color="black", linewidth=1)
        ax.set_title(f"{c.name} ({len(c.steps)} points)", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
    for j in range(len(curves), nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    fig.tight_layout()
    return _png(fig)


def plot_projection(p: Projection) -> str | None:
    """The pins' 2-D PCA scatter, coloured by label (the 12 most frequent labels; the rest grey)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.0, 5.6))
    labels = np.asarray(p.labels)
    uniq, counts = np.unique(labels, return_counts=True)
    order = [u for _, u in sorted(zip(-counts, uniq))]
    shown = order[:12]
    cmap = plt.get_cmap("tab20")
    rest = ~np.isin(labels, shown)
    if rest.any():
        ax.scatter(p.points[rest, 0], p.points[rest, 1], s=5, color="#cccccc", label=f"other ({int(rest.sum())})")
    for i, lab in enumerate(shown):
        m = labels == lab
        ax.scatter(p.points[m, 0], p.points[m, 1], s=7, color=cmap(i % 20), label=f"{lab} ({int(m.sum())})",
                   alpha=0.8)
    ax.set_xlabel(f"PC1 ({100 * p.explained[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * p.explained[1]:.1f}% of variance)")
    ax.set_title(f"{len(labels)} of {p.total} pin embeddings, PCA, coloured by {p.label_kind}")
    ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _png(fig)


PERCENTILES = (50, 90, 99)


def percentiles(xs: list[float]) -> dict[str, float]:
    return {f"p{q}": float(np.percentile(xs, q)) for q in PERCENTILES}


def plot_percentiles(stages: dict[str, dict[str, float]], title: str, unit: str = "ms") -> str | None:
    """Grouped horizontal bars: p50 / p90 / p99 (those present) per stage."""
    stages = {k: v for k, v in stages.items() if any(f"p{q}" in v for q in PERCENTILES)}
    if not stages:
        return None
    plt = _plt()
    names = list(stages)
    qs = [q for q in PERCENTILES if any(f"p{q}" in v for v in stages.values())]
    fig, ax = plt.subplots(figsize=(8.0, 0.55 * len(names) * max(1, len(qs)) / 2 + 1.4))
    h = 0.8 / len(qs)
    y = np.arange(len(names))
    for j, q in enumerate(qs):
        vals = [stages[n].get(f"p{q}", np.nan) for n in names]
        ax.barh(y + j * h, vals, height=h, color=PALETTE[j + 1], label=f"p{q}")
        for yy, v in zip(y + j * h, vals):
            if np.isfinite(v):
                ax.text(v, yy, f" {fmt_number(float(v))}", va="center", fontsize=7)
    ax.set_yticks(y + h * (len(qs) - 1) / 2, names)
    ax.invert_yaxis()
    ax.set_xlabel(unit)
    ax.set_title(title)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(axis="y", visible=False)
    return _png(fig)


def _median(v: Any) -> float | None:
    if is_stats(v):
        v = v["median"]
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


SIZE_KEYS = ("pins", "events", "users", "rows", "n", "items", "batch", "candidates", "nodes", "edges", "active")
TIME_KEY = re.compile(r"(seconds|_s$|us_per|ms|per_s|throughput|rss_mb)", re.I)


def growth_series(doc: dict[str, Any]) -> list[tuple[str, str, list[tuple[str, list[float]]], list[float]]]:
    """Scale benchmarks: (benchmark, size key, [(quantity, values)], sizes) for every list of >= 3 result rows
    that grow in a size column (pins, events, users...) and carry time-like quantities."""
    out = []

    def walk(name: str, v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                walk(name, x)
            for k, x in v.items():
                if isinstance(x, list) and len(x) >= 3 and all(isinstance(r, dict) for r in x):
                    size = next((s for s in SIZE_KEYS if all(_median(r.get(s)) for r in x)), None)
                    if size is None:
                        continue
                    sizes = [_median(r[size]) for r in x]
                    if sorted(sizes) != sizes or len(set(sizes)) < 3:
                        continue
                    keys = [q for q in x[0] if q != size and TIME_KEY.search(q)
                            and all(_median(r.get(q)) is not None for r in x)]
                    if keys:
                        out.append((f"{name}: {k}", size, [(q, [_median(r[q]) for r in x]) for q in keys], sizes))

    for name, entry in doc.get("benchmarks", {}).items():
        walk(name, entry.get("result", {}))
    return out


def plot_growth(series: list[tuple[str, str, list[tuple[str, list[float]]], list[float]]]) -> str | None:
    """Each scale benchmark's quantities against its size, log-log."""
    series = series[:6]
    if not series:
        return None
    plt = _plt()
    ncols = min(3, len(series))
    nrows = math.ceil(len(series) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.3 * nrows), squeeze=False)
    for i, (title, size, qs, sizes) in enumerate(series):
        ax = axes[i // ncols][i % ncols]
        for j, (q, vals) in enumerate(qs[:4]):
            ax.plot(sizes, vals, marker="o", color=PALETTE[j], label=q)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(size)
        ax.set_title(title, fontsize=8)
        ax.legend(fontsize=7, frameon=False)
    for j in range(len(series), nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    fig.tight_layout()
    return _png(fig)


def plot_bench_ratios(ratios: list[dict[str, Any]]) -> str | None:
    """Every benchmark's headline ratio (median, whiskers min - max), 1.0 dashed; needs two ratios."""
    good = [r for r in ratios if _median(r["median"]) and r["median"] > 0]
    if len(good) < 2:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 0.36 * len(good) + 1.4))
    y = np.arange(len(good))
    med = [r["median"] for r in good]
    lo = [r["median"] - r["min"] if _median(r["min"]) is not None else 0 for r in good]
    hi = [r["max"] - r["median"] if _median(r["max"]) is not None else 0 for r in good]
    ax.barh(y, med, xerr=[lo, hi], color=PALETTE[1], capsize=3)
    ax.axvline(1.0, color="#333333", linestyle="--", linewidth=1)
    ax.set_yticks(y, [f"{r['benchmark']}: {r['ratio'].split('.')[-1]}" for r in good], fontsize=8)
    ax.invert_yaxis()
    if max(med) / max(min(med), 1e-12) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("ratio (median; whiskers: min – max)")
    ax.set_title("benchmark ratios (dashed: 1.0)")
    ax.grid(axis="y", visible=False)
    return _png(fig)


def plot_latency_histograms(samples: list[tuple[str, list[float]]]) -> str | None:
    if not samples:
        return None
    plt = _plt()
    samples = samples[:6]
    ncols = min(3, len(samples))
    nrows = math.ceil(len(samples) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.0 * nrows), squeeze=False)
    for i, (name, xs) in enumerate(samples):
        ax = axes[i // ncols][i % ncols]
        ax.hist(xs, bins=min(40, max(5, len(xs) // 5)), color=PALETTE[4])
        p = percentiles(xs)
        ax.axvline(p["p50"], color="black", linewidth=1)
        ax.axvline(p["p99"], color="black", linestyle="--", linewidth=1)
        ax.set_title(f"{name}\np50 {fmt_number(p['p50'])}, p99 {fmt_number(p['p99'])}", fontsize=8)
    for j in range(len(samples), nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    fig.tight_layout()
    return _png(fig)
