"""One result type for every evaluation: ``EvalResult``, its one writer and its reader.

An evaluation trains (or builds) several *variants* of one model on one dataset under one *protocol*
(split, candidate pool, users, seeds) and measures named *metrics* on each (variant, seed) run. Every metric
has a direction (higher or lower is better), so a reader never guesses which way is good, and a metric that
cannot be computed (e.g. AUC when the labels are constant) is ``None``, shown as "undefined", never NaN.

Per variant the result holds the mean, the sample std across seeds and a 95% confidence interval of the mean
(Student's t over seeds; none with a single seed). ``compare`` tests an ordering ("A beats B on metric m")
with a paired t interval over the seeds both variants share: the same seed means the same evaluation split
and candidate pool, so the pairing removes what the seeds share.

    result = EvalResult(model="pinsage", dataset="ml-100k", command="homefeed eval pinsage ...",
                        protocol={"split": "...", "pool": "...", "seeds": [0, 1, 2]},
                        metrics={"mrr": "higher", "train_seconds": "lower"})
    result.add("PinSage (full)", seed=0, mrr=0.034, train_seconds=31.0)
    write_result(result, "out/eval")        # out/eval/pinsage_ml-100k.json and .md
    read_results("out/eval")                # [EvalResult, ...]
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from components.data import durable

Direction = Literal["higher", "lower"]
SCHEMA_VERSION = 1
UNDEFINED = "undefined"

# two-sided 95% Student's t quantiles t(0.975, df) for df = 1..30; 1.96 beyond
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def _clean(v: Any) -> float | None:
    """A metric value as a float, or None when undefined (None, NaN, inf)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def rfc3339_utc(microseconds: bool = False) -> str:
    """The current UTC time as RFC 3339 (``2026-12-02T11:19:48Z``, or ``...48.486966Z``, the time of a Katib
    line), by ``isoformat``."""
    now = datetime.now(UTC).isoformat(timespec="microseconds" if microseconds else "seconds")
    return now.replace("+00:00", "Z")


@dataclass
class Stat:
    """Mean, sample std and 95% t interval of one metric over a variant's seeds (undefined values left out)."""

    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None
    n: int

    @classmethod
    def of(cls, values: list[float | None]) -> Stat:
        xs = [x for x in values if x is not None]
        n = len(xs)
        if n == 0:
            return cls(None, None, None, None, 0)
        mean = sum(xs) / n
        if n == 1:
            return cls(mean, None, None, None, 1)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
        half = t975(n - 1) * std / math.sqrt(n)
        return cls(mean, std, mean - half, mean + half, n)


@dataclass
class Run:
    """One (variant, seed) measurement: named metric values (None = undefined) and free-form details."""

    variant: str
    seed: int
    metrics: dict[str, float | None]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Comparison:
    """Whether ``better`` beats ``worse`` on ``metric``: paired differences over shared seeds, 95% t interval.

    ``verdict``: "holds" (the interval excludes 0 in the claimed direction), "reversed" (excludes 0 the other
    way), "not significant" (includes 0) or "undefined" (fewer than 2 paired seeds).
    """

    better: str
    worse: str
    metric: str
    diff_mean: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    verdict: str

    @property
    def holds(self) -> bool:
        return self.verdict == "holds"


@dataclass
class PaperNumber:
    """A number from a paper, shown beside ours only when ``protocol_matches``."""

    paper: str
    variant: str
    metric: str
    value: float
    protocol: str
    protocol_matches: bool = False


@dataclass
class EvalResult:
    """Every evaluation's output: see the module doc. ``metrics`` maps each metric name to its direction;
    ``runs`` holds one :class:`Run` per (variant, seed); ``variants`` keeps the table order."""

    model: str
    dataset: str
    command: str
    protocol: dict[str, Any]
    metrics: dict[str, Direction]
    runs: list[Run] = field(default_factory=list)
    variants: list[str] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    papers: list[PaperNumber] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=rfc3339_utc)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        for name, d in self.metrics.items():
            if d not in ("higher", "lower"):
                raise ValueError(f"EvalResult metric '{name}': direction '{d}' is not one of ('higher', 'lower')")

    # -- building --------------------------------------------------------------------------------------
    def add(self, variant: str, seed: int, details: dict[str, Any] | None = None, **metrics: float | None) -> Run:
        """Record one run; every metric must be declared in ``self.metrics``."""
        unknown = sorted(set(metrics) - set(self.metrics))
        if unknown:
            raise ValueError(f"EvalResult {self.model}: metrics {unknown} not declared; declared: {sorted(self.metrics)}")
        run = Run(variant, int(seed), {k: _clean(v) for k, v in metrics.items()}, dict(details or {}))
        self.runs.append(run)
        if variant not in self.variants:
            self.variants.append(variant)
        return run

    # -- reading ---------------------------------------------------------------------------------------
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.runs})

    def values(self, variant: str, metric: str) -> dict[int, float | None]:
        """seed -> value of ``metric`` for ``variant``."""
        return {r.seed: r.metrics.get(metric) for r in self.runs if r.variant == variant}

    def stat(self, variant: str, metric: str) -> Stat:
        return Stat.of(list(self.values(variant, metric).values()))

    def summary(self) -> dict[str, dict[str, Stat]]:
        """variant -> metric -> Stat, in table order."""
        return {v: {m: self.stat(v, m) for m in self.metrics} for v in self.variants}

    def best(self, metric: str) -> str | None:
        """The variant with the best mean on ``metric`` (by its direction), or None."""
        means = {v: self.stat(v, metric).mean for v in self.variants}
        means = {v: m for v, m in means.items() if m is not None}
        if not means:
            return None
        pick = max if self.metrics[metric] == "higher" else min
        return pick(means, key=means.__getitem__)

    def compare(self, better: str, worse: str, metric: str) -> Comparison:
        """Test "``better`` beats ``worse`` on ``metric``" (paired over shared seeds) and record it."""
        for v in (better, worse):
            if v not in self.variants:
                raise ValueError(f"EvalResult {self.model}: no variant '{v}'; variants: {self.variants}")
        a, b = self.values(better, metric), self.values(worse, metric)
        sign = 1.0 if self.metrics[metric] == "higher" else -1.0
        diffs = [sign * (a[s] - b[s]) for s in sorted(set(a) & set(b)) if a[s] is not None and b[s] is not None]
        st = Stat.of(diffs)
        if st.n < 2:
            verdict = "undefined"
        elif st.ci_low > 0:
            verdict = "holds"
        elif st.ci_high < 0:
            verdict = "reversed"
        else:
            verdict = "not significant"
        c = Comparison(better, worse, metric, st.mean, st.ci_low, st.ci_high, st.n, verdict)
        self.comparisons = [x for x in self.comparisons if (x.better, x.worse, x.metric) != (better, worse, metric)]
        self.comparisons.append(c)
        return c

    # -- (de)serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["summary"] = {v: {m: dataclasses.asdict(s) for m, s in ms.items()} for v, ms in self.summary().items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"EvalResult: schema_version {d.get('schema_version')!r}, expected {SCHEMA_VERSION}")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["runs"] = [Run(**r) for r in d.get("runs", [])]
        kw["comparisons"] = [Comparison(**c) for c in d.get("comparisons", [])]
        kw["papers"] = [PaperNumber(**p) for p in d.get("papers", [])]
        return cls(**kw)

    @property
    def stem(self) -> str:
        return f"{self.model}_{self.dataset}"


def fmt(v: float | None, digits: int = 4) -> str:
    """A metric value for a table; None -> "undefined"."""
    return UNDEFINED if v is None else f"{v:.{digits}f}"


def _cell(s: Stat, digits: int) -> str:
    if s.mean is None:
        return UNDEFINED
    if s.std is None:
        return fmt(s.mean, digits)
    return f"{s.mean:.{digits}f} ± {s.std:.{digits}f} [{s.ci_low:.{digits}f}, {s.ci_high:.{digits}f}]"


def to_markdown(result: EvalResult, digits: int = 4) -> str:
    """The Markdown table: mean ± std [95% CI] per variant and metric, then orderings, papers, notes."""
    metrics = list(result.metrics)
    arrows = {"higher": "↑", "lower": "↓"}
    lines = [f"# {result.model} evaluation: {result.dataset}", "", f"`{result.command}`", ""]
    lines += [f"- {k}: {v}" for k, v in result.protocol.items()]
    lines += ["", f"Mean ± std [95% t interval] over seeds {result.seeds()}; ↑ higher is better, ↓ lower.", "",
              "| variant | " + " | ".join(f"{m} {arrows[result.metrics[m]]}" for m in metrics) + " |",
              "|---|" + "---:|" * len(metrics)]
    summary = result.summary()
    for v in result.variants:
        lines.append(f"| {v} | " + " | ".join(_cell(summary[v][m], digits) for m in metrics) + " |")
    if result.comparisons:
        lines += ["", "| ordering | metric | paired diff [95% CI] | seeds | verdict |", "|---|---|---:|---:|---|"]
        for c in result.comparisons:
            ci = UNDEFINED if c.ci_low is None else f"{fmt(c.diff_mean, digits)} [{fmt(c.ci_low, digits)}, {fmt(c.ci_high, digits)}]"
            lines.append(f"| {c.better} > {c.worse} | {c.metric} | {ci} | {c.n} | {c.verdict} |")
    shown = [p for p in result.papers if p.protocol_matches]
    if shown:
        lines += ["", "| paper | variant | metric | paper value | ours (mean) |", "|---|---|---|---:|---:|"]
        for p in shown:
            ours = result.stat(p.variant, p.metric).mean if p.variant in result.variants else None
            lines.append(f"| {p.paper} | {p.variant} | {p.metric} | {p.value:.3f} | {fmt(ours, digits)} |")
    hidden = [p for p in result.papers if not p.protocol_matches]
    if hidden:
        lines += ["", "Paper numbers not shown beside ours (different protocol): "
                  + "; ".join(f"{p.paper} {p.variant} {p.metric} {p.value} ({p.protocol})" for p in hidden) + "."]
    if result.notes:
        lines += [""] + [f"- {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


def write_result(result: EvalResult, out_dir: str | Path) -> Path:
    """Write ``<out_dir>/<model>_<dataset>.json`` and ``.md`` atomically; returns the JSON path."""
    out = Path(out_dir)
    path = durable.atomic_write_json(result.to_dict(), out / f"{result.stem}.json")
    durable.atomic_write_bytes(out / f"{result.stem}.md", to_markdown(result).encode())
    return Path(path)


def read_result(path: str | Path) -> EvalResult:
    try:
        return EvalResult.from_dict(json.loads(Path(path).read_text()))
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{path}: not an EvalResult file ({e})") from e


def read_results(out_dir: str | Path) -> list[EvalResult]:
    """Every EvalResult JSON in ``out_dir`` (sorted by file name); other JSON files are skipped."""
    results = []
    for p in sorted(Path(out_dir).glob("*.json")):
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and d.get("schema_version") == SCHEMA_VERSION and "runs" in d and "metrics" in d:
            results.append(read_result(p))
    return results
