"""What the report reads, each input optional (a missing one becomes a note on the page, never an error):

- evaluations: ``EvalResult`` files (components/evaluation/result.py) in the eval folder;
- benchmarks: ``out/bench.json`` (tests/bench/conftest.py);
- runs: a folder holding training runs (every ``train_log.jsonl`` below it gives a loss curve and its
  operational counters) and, when it is a demo folder, ``demo.json`` naming the data folder, the pin
  embedding table (the 2-D projection) and the recommend latency samples the demo measured.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from components.data.movielens import GENRES
from components.evaluation.result import EvalResult, read_result

MODELS = ("pinsage", "pinnerformer", "ranker")

# A metric measures model quality when its name says so; everything else a run reports (seconds, data wait,
# memory, pairs per rank...) is an operational counter and goes to its own section.
QUALITY = re.compile(r"(recall|hit|mrr|auc|ndcg|precision|accuracy|topic|loss|logloss|map@)", re.I)
OPERATIONAL = re.compile(r"(_s$|seconds|time|wait|memory|_mb|bytes|latency|per_s|throughput|rank|steps?$|"
                         r"rows|pairs|users|queries|examples|world_size|epoch)", re.I)
MAX_PROJECTION_POINTS = 3000


def is_quality(metric: str) -> bool:
    return bool(QUALITY.search(metric)) and not OPERATIONAL.search(metric.split("@")[0])


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)


@dataclass
class TrainCurve:
    """One training run's loss over steps, and the operational counters of its final record."""

    name: str
    path: str
    steps: list[float]
    losses: list[float]
    counters: dict[str, float] = field(default_factory=dict)


@dataclass
class Projection:
    """Pin embeddings projected to 2-D (PCA), with one label per point."""

    points: np.ndarray  # (N, 2)
    labels: list[str]
    label_kind: str  # "planted topic" | "genre"
    source: str
    explained: list[float]
    total: int


@dataclass
class Inputs:
    evals: list[EvalResult] = field(default_factory=list)
    bench: dict[str, Any] | None = None
    curves: list[TrainCurve] = field(default_factory=list)
    projection: Projection | None = None
    latency: dict[str, list[float]] = field(default_factory=dict)  # stage -> milliseconds
    latency_source: str = ""
    pipeline_counters: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def load_evals(eval_dir: Path, notes: list[str]) -> list[EvalResult]:
    """Every EvalResult in ``eval_dir``, sorted by model then dataset; other JSON files are named in ``notes``."""
    if not eval_dir.is_dir():
        notes.append(f"{eval_dir}: no such folder, so no model evaluations (run `homefeed eval <model> --out {eval_dir}`)")
        return []
    results = []
    for path in sorted(eval_dir.glob("*.json")):
        try:
            results.append(read_result(path))
        except (OSError, ValueError) as e:
            notes.append(f"{path}: skipped, not an EvalResult file ({str(e).split(': ', 1)[-1][:160]})")
    if not results:
        notes.append(f"{eval_dir}: no EvalResult files (run `homefeed eval <model> --out {eval_dir}`)")
    results.sort(key=lambda r: (MODELS.index(r.model) if r.model in MODELS else 99, r.model, r.dataset))
    return results


def load_bench(path: Path, notes: list[str]) -> dict[str, Any] | None:
    if not path.exists():
        notes.append(f"{path}: missing, so no benchmarks (run `make bench`)")
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        notes.append(f"{path}: not readable JSON ({e})")
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), dict):
        notes.append(f"{path}: expected an object with a 'benchmarks' mapping")
        return None
    return doc


def _curve_name(path: Path, root: Path) -> str:
    """``train-pinsage`` for ``<root>/kfp/<run>/train-pinsage/model/train_log.jsonl``, else the relative folder."""
    rel = path.parent.relative_to(root) if path.is_relative_to(root) else path.parent
    parts = [p for p in rel.parts if p not in ("model", "kfp") and not re.match(r"homefeed-.*-\d{4}-\d\d-\d\d", p)]
    return "/".join(parts) or path.parent.name


def read_train_log(path: Path, name: str) -> TrainCurve | None:
    """The loss curve of one ``train_log.jsonl``: records with a numeric ``step`` and ``loss``."""
    steps, losses, done = [], [], {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        if rec.get("event") == "done":
            done = rec
        elif _num(rec.get("step")) and _num(rec.get("loss")):
            steps.append(float(rec["step"]))
            losses.append(float(rec["loss"]))
    counters = {k: float(v) for k, v in done.items() if _num(v) and not is_quality(k)}
    if not steps and not counters:
        return None
    return TrainCurve(name, str(path), steps, losses, counters)


def load_curves(runs_dir: Path) -> list[TrainCurve]:
    curves = []
    for path in sorted(runs_dir.rglob("train_log.jsonl")):
        c = read_train_log(path, _curve_name(path, runs_dir))
        if c is not None:
            curves.append(c)
    return curves


def pin_labels(data_dir: Path, ids: np.ndarray) -> tuple[list[str], str] | None:
    """Per pin: the planted topic (synthetic ``ground_truth/pin_topics``) or the primary genre (ML-100k)."""
    truth = data_dir / "ground_truth" / "pin_topics.parquet"
    if truth.exists():
        t = pq.read_table(truth).to_pandas()
        by_id = dict(zip(t["pin_id"].to_numpy(), t["topic"].to_numpy()))
        return [f"topic {by_id[i]}" if i in by_id else "unknown" for i in ids.tolist()], "planted topic"
    pins = data_dir / "pins.parquet"
    if pins.exists() and "s_genre" in pq.read_schema(pins).names:
        t = pq.read_table(pins, columns=["pin_id", "s_genre"]).to_pandas()
        by_id = dict(zip(t["pin_id"].to_numpy(), t["s_genre"].to_numpy()))
        names = ("unknown",) + tuple(GENRES)
        return [names[int(by_id[i])] if i in by_id and 0 <= int(by_id[i]) < len(names) else "unknown"
                for i in ids.tolist()], "genre"
    return None


def load_projection(table_path: Path, data_dir: Path, notes: list[str], seed: int = 0) -> Projection | None:
    """PCA of (a sample of) the pin embeddings in ``table_path``, labelled from ``data_dir``."""
    from sklearn.decomposition import PCA  # scikit-learn: seconds to import, only for this projection

    if not table_path.exists():
        notes.append(f"{table_path}: missing, so no pin embedding projection")
        return None
    t = pq.read_table(table_path)
    id_col = "pin_id" if "pin_id" in t.column_names else t.column_names[0]
    ids = t.column(id_col).to_numpy()
    emb = np.asarray(t.column("embedding").to_pylist(), dtype=np.float32)  # (N, D)
    if len(ids) < 3:
        notes.append(f"{table_path}: {len(ids)} pins, too few to project")
        return None
    if len(ids) > MAX_PROJECTION_POINTS:
        keep = np.sort(np.random.default_rng(seed).choice(len(ids), MAX_PROJECTION_POINTS, replace=False))
        ids, emb = ids[keep], emb[keep]
    labelled = pin_labels(data_dir, ids)
    if labelled is None:
        notes.append(f"{data_dir}: no planted topics or genres, so the pin projection is not coloured")
        labelled = (["pin"] * len(ids), "none")
    pca = PCA(n_components=2, random_state=seed)
    points = pca.fit_transform(emb)  # (N, 2)
    return Projection(points, labelled[0], labelled[1], str(table_path),
                      [float(x) for x in pca.explained_variance_ratio_], int(t.num_rows))


def load_latency(path: Path) -> dict[str, list[float]]:
    """``{"stages": {stage: [ms, ...]}}`` as written by the demo (``recommend_latency.json``)."""
    doc = json.loads(path.read_text())
    stages = doc.get("stages", {}) if isinstance(doc, dict) else {}
    return {k: [float(x) for x in v if _num(x)] for k, v in stages.items() if isinstance(v, list) and v}


def pipeline_counters(run_summary: Path) -> list[tuple[str, dict[str, float]]]:
    """Per pipeline task: the operational counters among its logged metrics (``<pipeline>-run.json``)."""
    doc = json.loads(run_summary.read_text())
    out = []
    for task, outputs in sorted(doc.get("artifacts", {}).items()):
        for name, art in outputs.items():
            meta = art.get("metadata", {}) if isinstance(art, dict) else {}
            ops = {k: float(v) for k, v in meta.items() if _num(v) and not is_quality(k)}
            if ops and name in ("metrics", "stats"):
                out.append((f"{task} ({name})", ops))
    return out


def load_runs(runs_dir: Path, inputs: Inputs) -> None:
    """Loss curves, pipeline counters, and (from a demo's ``demo.json``) the projection and latency."""
    if not runs_dir.is_dir():
        inputs.notes.append(f"{runs_dir}: no such folder, so no training curves (run `make demo`, or pass "
                            "`--runs` a folder holding model directories)")
        return
    inputs.curves = load_curves(runs_dir)
    if not inputs.curves:
        inputs.notes.append(f"{runs_dir}: no train_log.jsonl below it, so no training curves")
    for summary in sorted(runs_dir.glob("*-run.json")):
        inputs.pipeline_counters += [(f"{summary.stem.removesuffix('-run')}: {t}", c)
                                     for t, c in pipeline_counters(summary)]
    demo = runs_dir / "demo.json"
    if not demo.exists():
        inputs.notes.append(f"{demo}: missing, so no pin projection and no measured recommend latency")
        return
    info = json.loads(demo.read_text())
    if info.get("pin_embeddings") and info.get("data_dir"):
        inputs.projection = load_projection(Path(info["pin_embeddings"]), Path(info["data_dir"]), inputs.notes)
    lat = Path(info["recommend_latency"]) if info.get("recommend_latency") else None
    if lat and lat.exists():
        inputs.latency = load_latency(lat)
        inputs.latency_source = str(lat)
    else:
        inputs.notes.append(f"{demo}: no recommend latency samples recorded")


def gather(eval_dir: str | Path, bench_path: str | Path, runs_dir: str | Path | None) -> Inputs:
    inputs = Inputs()
    inputs.evals = load_evals(Path(eval_dir), inputs.notes)
    inputs.bench = load_bench(Path(bench_path), inputs.notes)
    if runs_dir is not None:
        load_runs(Path(runs_dir), inputs)
    return inputs
