"""Related-pin evaluation of PinSage (the paper's Table 1 metrics) and the four-way comparison.

Held-out pairs: co-engagement pairs (q, i) from events at or after ``meta.json: split_timestamp`` (the same
definition as training pairs), at most ``eval_max_queries`` drawn with the seed. For each pair the positive i
is ranked by dot product with q against a candidate pool: every other pin when the corpus has at most
``eval_pool`` pins, otherwise ``eval_pool`` random pins shared by all queries. Metrics:

- hit@K: fraction of pairs whose positive ranks in the top K (K = 10, 50);
- MRR: mean of 1/rank (plain, not the paper's rank/100 scaling);
- hit@10_se, mrr_se: their standard errors over the held-out pairs;
- topic@10 (synthetic data only): fraction of each pin's 10 nearest pins that share its planted topic
  (``ground_truth/pin_topics.parquet``).

:func:`compare` trains, on one split and one seed: content-only (the dense network on features, K = 0),
PinSage with uniform mean pooling, PinSage without hard negatives and full PinSage; plus the raw content
features untrained as a floor. It writes ``<out>/pinsage_<dataset>.json`` and ``.md``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import PinSageConfig
from components.data import io
from components.data.validate import load_events
from components.graph.graph import build_graph
from components.training.pinsage_data import coengagement_pairs

VARIANTS: dict[str, dict[str, Any]] = {
    "content-only (MLP on features)": {"num_layers": 0},
    "PinSage, mean pooling": {"pooling": "mean"},
    "PinSage, no hard negatives": {"hard_negatives": False},
    "PinSage (full)": {},
}
HIT_KS = (10, 50)


def heldout_pairs(data_dir: str | Path, pin_ids: np.ndarray, cfg: PinSageConfig) -> np.ndarray:
    """(n, 2) pin-index pairs of co-engagement at or after the split (deduplicated, sampled with the seed)."""
    split = io.read_meta(data_dir)["split_timestamp"]
    ev = load_events(data_dir)
    pairs = coengagement_pairs(ev[ev["timestamp"] >= split], pin_ids, cfg.pair_window_s)
    pairs = np.unique(pairs, axis=0) if len(pairs) else pairs
    if len(pairs) == 0:
        raise ValueError(f"{data_dir}: no co-engagement pairs after meta.json split_timestamp to evaluate on")
    rng = np.random.default_rng([cfg.seed, 5])
    if len(pairs) > cfg.eval_max_queries:
        pairs = pairs[np.sort(rng.choice(len(pairs), cfg.eval_max_queries, replace=False))]
    return pairs


def ranking_metrics(emb: np.ndarray, pairs: np.ndarray, pool_size: int, seed: int) -> dict[str, float]:
    """hit@K and MRR of each pair's positive against the candidate pool (see the module doc)."""
    P = len(emb)
    q, pos = emb[pairs[:, 0]], emb[pairs[:, 1]]
    s_pos = (q * pos).sum(1)  # (n,)
    if P - 1 <= pool_size:
        scores = q @ emb.T  # (n, P)
        scores[np.arange(len(pairs)), pairs[:, 0]] = -np.inf  # the query is not a candidate
        scores[np.arange(len(pairs)), pairs[:, 1]] = -np.inf  # counted once, as s_pos
    else:
        pool = np.random.default_rng([seed, 6]).choice(P, pool_size, replace=False)
        scores = q @ emb[pool].T  # (n, pool)
        scores[(pool[None, :] == pairs[:, :1]) | (pool[None, :] == pairs[:, 1:])] = -np.inf
    rank = 1 + (scores > s_pos[:, None]).sum(1)  # (n,)
    n = len(rank)
    out: dict[str, float] = {}
    for k in HIT_KS:
        out[f"hit@{k}"] = float((rank <= k).mean())
    out["mrr"] = float((1.0 / rank).mean())
    # standard errors over the held-out pairs, to read differences between rows against
    out["hit@10_se"] = float(np.sqrt(out["hit@10"] * (1 - out["hit@10"]) / n))
    out["mrr_se"] = float((1.0 / rank).std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    return out


def topic_purity(emb: np.ndarray, topics: np.ndarray, k: int = 10, max_pins: int = 3000, seed: int = 0) -> float:
    """Mean fraction of a pin's k nearest other pins (dot product) that share its planted topic."""
    rng = np.random.default_rng([seed, 8])
    rows = rng.choice(len(emb), min(max_pins, len(emb)), replace=False)
    s = emb[rows] @ emb.T  # (R, P)
    s[np.arange(len(rows)), rows] = -np.inf
    nn = np.argpartition(-s, k, axis=1)[:, :k]  # (R, k)
    return float((topics[nn] == topics[rows][:, None]).mean())


def evaluate_embeddings(emb: np.ndarray, pairs: np.ndarray, cfg: PinSageConfig,
                        topics: np.ndarray | None) -> dict[str, float]:
    out = ranking_metrics(emb, pairs, cfg.eval_pool, cfg.seed)
    if topics is not None:
        out["topic@10"] = topic_purity(emb, topics, seed=cfg.seed)
    return out


def planted_topics(data_dir: str | Path, pin_ids: np.ndarray) -> np.ndarray | None:
    """Planted topic per pin index (synthetic data), or None."""
    path = Path(data_dir) / "ground_truth" / "pin_topics.parquet"
    if not path.exists():
        return None
    gt = pd.read_parquet(path)
    order = np.argsort(gt["pin_id"].to_numpy())
    ids, topic = gt["pin_id"].to_numpy()[order], gt["topic"].to_numpy()[order]
    return topic[np.searchsorted(ids, pin_ids).clip(0, len(ids) - 1)]


def train_and_embed(cfg: PinSageConfig, data_dir: str | Path, model_dir: str | Path) -> tuple[np.ndarray, dict]:
    from components.inference.pinsage import embed_data
    from components.training.pinsage import train

    metrics = train(cfg, data_dir, model_dir)
    return embed_data(model_dir, data_dir)[1], metrics


def _fmt(col: str, v: Any) -> str:
    if not isinstance(v, float):
        return str(v)
    return f"{v:.1f}" if col.endswith("_s") else f"{v:.4f}"


def to_markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    cols = [c for c in rows[0] if c != "variant"]
    lines = [f"# PinSage related-pin evaluation: {result['dataset']}", "",
             f"`{result['command']}`", "",
             f"{result['pairs']} held-out co-engagement pairs (events after the split); candidate pool: "
             f"{result['pool']}; experiment `{result['experiment']}`, seeds {result['seeds']}"
             + (" (mean over seeds; *_std across seeds)" if len(result["seeds"]) > 1 else "")
             + "; train_s per seed.", "",
             "| variant | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    lines += ["| " + r["variant"] + " | " + " | ".join(_fmt(c, r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _summarise(name: str, runs: list[dict[str, float]], train_s: float) -> dict[str, Any]:
    """One table row: metrics of a single run, or their mean over seeds with the std across seeds."""
    if len(runs) == 1:
        return {"variant": name, **runs[0], "train_s": round(train_s, 1)}
    keys = [k for k in runs[0] if not k.endswith("_se")]
    row: dict[str, Any] = {"variant": name}
    row.update({k: float(np.mean([r[k] for r in runs])) for k in keys})
    row.update({f"{k}_std": float(np.std([r[k] for r in runs], ddof=1)) for k in ("hit@10", "mrr")})
    row["train_s"] = round(train_s, 1)
    return row


def compare(cfg: PinSageConfig, data_dir: str | Path, out_dir: str | Path, command: str = "",
            variants: dict[str, dict[str, Any]] | None = None, seeds: list[int] | None = None) -> dict[str, Any]:
    """Train and evaluate every variant on the same split (and held-out pairs, and candidate pool) for each
    seed; write ``pinsage_<dataset>.json`` (with per-seed runs) and ``.md`` (mean, std across seeds)."""
    out_dir = Path(out_dir)
    seeds = [cfg.seed] if not seeds else list(seeds)
    dataset = io.read_meta(data_dir).get("dataset", Path(data_dir).name)
    graph = build_graph(data_dir, cfg.use_engagement_edges)
    pairs = heldout_pairs(data_dir, graph.pin_ids, cfg)
    topics = planted_topics(data_dir, graph.pin_ids)
    from components.training.pinsage import graph_features

    feats = graph_features(graph, data_dir)
    raw = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-8)
    raw_metrics = evaluate_embeddings(raw, pairs, cfg, topics)
    rows = [_summarise("content features, untrained (cosine)", [raw_metrics] * (1 if len(seeds) == 1 else 2), 0.0)]
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, overrides in (variants or VARIANTS).items():
        slug = "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")
        runs[name] = []
        t0 = time.perf_counter()
        for seed in seeds:
            vcfg = copy.deepcopy(cfg)
            for k, v in {**overrides, "seed": seed}.items():
                setattr(vcfg, k, v)
            model_dir = out_dir / "models" / f"pinsage_{dataset}" / slug / f"seed-{seed}"
            emb, _ = train_and_embed(vcfg, data_dir, model_dir)
            runs[name].append({"seed": seed, **evaluate_embeddings(emb, pairs, cfg, topics)})
            print(f"{name} (seed {seed}): {runs[name][-1]}", flush=True)
        per_seed = [{k: v for k, v in r.items() if k != "seed"} for r in runs[name]]
        rows.append(_summarise(name, per_seed, (time.perf_counter() - t0) / len(seeds)))
    pool = "all other pins" if graph.num_pins - 1 <= cfg.eval_pool else f"{cfg.eval_pool} random pins"
    result = {"model": "pinsage", "dataset": dataset, "command": command, "experiment": getattr(cfg, "_experiment", None),
              "seeds": seeds, "pairs": int(len(pairs)), "pool": pool, "num_pins": graph.num_pins, "rows": rows,
              "runs": runs}
    io.atomic_write_json(result, out_dir / f"pinsage_{dataset}.json")
    io.atomic_write_bytes(out_dir / f"pinsage_{dataset}.md", to_markdown(result).encode())
    return result
