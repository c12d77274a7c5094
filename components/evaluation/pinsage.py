"""Related-pin evaluation of PinSage (the paper's Table 1 metrics), its variants and baselines.

Protocol (:mod:`components.evaluation.protocol`): held-out pairs are co-engagement pairs (q, i) from the
events of one evaluation *period* (``val``: the first half of the days after ``meta.json: split_timestamp``,
``test``: the second half, ``all``: both), deduplicated, at most ``eval_max_queries`` drawn with the fixed
``SPLIT_SEED``. Each positive i is ranked against a candidate pool: every other pin when the corpus has at
most ``eval_pool`` pins, otherwise ``eval_pool`` random pins (``SPLIT_SEED``) shared by all queries. The
same pairs and pool for every variant and every training seed.

Metrics (:mod:`components.evaluation.metrics`): hit@K for K in 1, 2, 5, 10, 20, 50, 100 (the report draws them
as a hit@K curve), MRR (plain 1/rank) and, on synthetic data, topic@10 (the share of each pin's 10 nearest pins
sharing its planted topic).

Early stopping (``patience`` > 0 in the config, as in ``pinsage_eval``): each trained run is validated on the
``val`` period's pairs (MRR, every ``val_every`` steps or each epoch), keeps its best weights and stops after
``patience`` validations without gain; report the ``test`` period (``--period test``) so that no choice saw
the reported pairs.

Rows: baselines (content features untrained, popularity, item co-occurrence, Pixie-style random-walk
visit counts) and the trained variants (content-only MLP, mean pooling, no hard negatives, full PinSage),
each trained once per seed with ``checkpoint_every: 0``. :func:`compare` returns an :class:`EvalResult`
and writes ``<out>/pinsage_<dataset>.json`` and ``.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import ConfigError, PinSageConfig
from components.data import io
from components.data.validate import load_events
from components.evaluation import papers
from components.evaluation.baselines import cooccurrence_scores, popularity_counts, random_walk_scores
from components.evaluation.metrics import rank_metrics, rank_of_positive
from components.evaluation.protocol import SPLIT_SEED, Period, eval_mask, train_mask, user_splits
from components.evaluation.result import EvalResult, write_result
from components.graph.graph import PinBoardGraph, build_graph
from components.graph.sampling import build_neighbourhoods
from components.models.pinsage import load_model
from components.models.pinsage_layerwise import layerwise_embeddings
from components.training.loop import Validation
from components.training.pinsage import graph_features, train
from components.training.pinsage_data import coengagement_pairs

VARIANTS: dict[str, dict[str, Any]] = {
    "content-only (MLP on features)": {"num_layers": 0},
    "PinSage, mean pooling": {"pooling": "mean"},
    "PinSage, no hard negatives": {"hard_negatives": False},
    "PinSage (full)": {},
}
VARIANT_KEYS = {"content-only": "content-only (MLP on features)", "mean-pooling": "PinSage, mean pooling",
                "no-hard-negatives": "PinSage, no hard negatives", "full": "PinSage (full)"}  # --variants keys
BASELINES = ("content features, untrained (cosine)", "popularity", "item co-occurrence",
             "random-walk visit counts (Pixie)")
# the orderings every result tests (paired over seeds, MRR) when both rows are present; `eval merge` recomputes them
ORDERINGS: tuple[tuple[str, str, str], ...] = tuple(
    ("PinSage (full)", worse, "mrr") for worse in ("PinSage, no hard negatives", "PinSage, mean pooling",
                                                   "content-only (MLP on features)", *BASELINES[1:]))
HIT_KS = (1, 2, 5, 10, 20, 50, 100)
METRICS = {**{f"hit@{k}": "higher" for k in HIT_KS}, "mrr": "higher", "topic@10": "higher", "train_seconds": "lower"}
EVAL_OVERRIDES = {"checkpoint_every": 0}  # evaluation runs keep model.pt only, never thousands of step files


def heldout_pairs(data_dir: str | Path, pin_ids: np.ndarray, cfg: PinSageConfig, period: Period = "all") -> np.ndarray:
    """(n, 2) pin-index pairs of co-engagement in an evaluation period (deduplicated, sampled with
    ``SPLIT_SEED``: the same pairs whatever the training seed)."""
    ev = load_events(data_dir)
    ev = ev[eval_mask(data_dir, ev["user_id"].to_numpy(), ev["timestamp"].to_numpy(), period)]
    pairs = coengagement_pairs(ev, pin_ids, cfg.pair_window_s)
    pairs = np.unique(pairs, axis=0) if len(pairs) else pairs
    if len(pairs) == 0:
        raise ValueError(f"{data_dir}: no co-engagement pairs in the '{period}' evaluation period to evaluate on")
    if len(pairs) > cfg.eval_max_queries:
        rng = np.random.default_rng([SPLIT_SEED, 5])
        pairs = pairs[np.sort(rng.choice(len(pairs), cfg.eval_max_queries, replace=False))]
    return pairs


def candidate_pool(num_pins: int, pool_size: int) -> np.ndarray | None:
    """None (every other pin is a candidate) or ``pool_size`` random pin indices (``SPLIT_SEED``)."""
    if num_pins - 1 <= pool_size:
        return None
    return np.random.default_rng([SPLIT_SEED, 6]).choice(num_pins, pool_size, replace=False)


def ranks_from_scores(scores: np.ndarray, pairs: np.ndarray, pool: np.ndarray | None) -> np.ndarray:
    """1-based rank of each pair's positive: ``scores`` (n, P) over all pins; the query itself and (if in the
    pool) the positive are not candidates; with a pool only its pins compete."""
    n = len(pairs)
    s_pos = scores[np.arange(n), pairs[:, 1]].astype(np.float64)  # (n,)
    if pool is None:
        cand = scores.astype(np.float64, copy=True)  # (n, P)
        cand[np.arange(n), pairs[:, 0]] = -np.inf
        cand[np.arange(n), pairs[:, 1]] = -np.inf  # counted once, as s_pos
    else:
        cand = scores[:, pool].astype(np.float64)  # (n, pool)
        cand[(pool[None, :] == pairs[:, :1]) | (pool[None, :] == pairs[:, 1:])] = -np.inf
    return rank_of_positive(s_pos, cand)


def ranking_metrics(emb: np.ndarray, pairs: np.ndarray, pool_size: int, seed: int = SPLIT_SEED) -> dict[str, float]:
    """hit@K and MRR of each pair's positive against the candidate pool, by dot product of embeddings.
    (``seed`` is ignored: the pool is fixed by the protocol; kept for callers.)"""
    pool = candidate_pool(len(emb), pool_size)
    return rank_metrics(ranks_from_scores(emb[pairs[:, 0]] @ emb.T, pairs, pool), HIT_KS)  # scores (n, P)


def topic_purity(emb: np.ndarray, topics: np.ndarray, k: int = 10, max_pins: int = 3000, seed: int = SPLIT_SEED) -> float:
    """Mean fraction of a pin's k nearest other pins (dot product) that share its planted topic."""
    rng = np.random.default_rng([seed, 8])
    rows = rng.choice(len(emb), min(max_pins, len(emb)), replace=False)
    s = emb[rows] @ emb.T  # (R, P)
    s[np.arange(len(rows)), rows] = -np.inf
    nn = np.argpartition(-s, k, axis=1)[:, :k]  # (R, k)
    return float((topics[nn] == topics[rows][:, None]).mean())


def evaluate_embeddings(emb: np.ndarray, pairs: np.ndarray, cfg: PinSageConfig,
                        topics: np.ndarray | None) -> dict[str, float | None]:
    out: dict[str, float | None] = dict(ranking_metrics(emb, pairs, cfg.eval_pool))
    out["topic@10"] = topic_purity(emb, topics) if topics is not None else None
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


def train_and_embed(cfg: PinSageConfig, data_dir: str | Path, model_dir: str | Path,
                    val_pairs: np.ndarray | None = None,
                    report: Callable[[int, float | None], bool] | None = None) -> tuple[np.ndarray, dict]:
    """Train one run and embed every pin (layer-wise) with the neighbourhoods it trained on. With ``val_pairs``
    and ``cfg.patience`` > 0 the run is validated on them (MRR), keeps its best weights and stops early;
    ``report`` is :class:`Validation`'s optional hook (``homefeed tune``'s pruner)."""
    model_dir = Path(model_dir)
    graph = build_graph(data_dir, cfg.use_engagement_edges)
    feats = graph_features(graph, data_dir)
    nbr_ids, nbr_w = build_neighbourhoods(graph, cfg)  # sampled once: training reads the same file
    model_dir.mkdir(parents=True, exist_ok=True)
    np.savez(model_dir / "neighbourhoods.npz", pin_ids=graph.pin_ids, nbr_ids=nbr_ids, nbr_weights=nbr_w)
    validation = None
    if val_pairs is not None and cfg.patience > 0:
        def val_mrr(model: Any) -> float:
            emb = layerwise_embeddings(model, feats, nbr_ids, nbr_w, cfg.inference_chunk)
            return ranking_metrics(emb, val_pairs, cfg.eval_pool)["mrr"]
        validation = Validation(val_mrr, metric="val_mrr", direction="higher", every=cfg.val_every,
                                patience=cfg.patience, report=report)
    metrics = train(cfg, data_dir, model_dir, neighbourhoods=model_dir / "neighbourhoods.npz", validation=validation)
    model, _, _ = load_model(model_dir)
    return layerwise_embeddings(model, feats, nbr_ids, nbr_w, cfg.inference_chunk), metrics


def baseline_scorers(graph: PinBoardGraph, data_dir: str | Path, cfg: PinSageConfig
                     ) -> dict[str, Callable[[np.ndarray, int], np.ndarray]]:
    """Baseline name -> f(query pin indices, seed) -> (Q, P) scores, all from the training period only."""
    train_ev = load_events(data_dir)
    train_ev = train_ev[train_mask(data_dir, train_ev["user_id"].to_numpy(), train_ev["timestamp"].to_numpy())]
    pin_idx = np.searchsorted(graph.pin_ids, train_ev["pin_id"].to_numpy()).clip(0, graph.num_pins - 1)
    known = graph.pin_ids[pin_idx] == train_ev["pin_id"].to_numpy()
    pop = popularity_counts(np.where(known, pin_idx, -1), graph.num_pins)
    train_pairs = coengagement_pairs(train_ev, graph.pin_ids, cfg.pair_window_s)
    feats = graph_features(graph, data_dir)
    raw = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-8)
    tiebreak = 1e-6 * pop / max(float(pop.max()), 1.0)  # count ties broken by popularity (never reorders counts)
    return {
        BASELINES[0]: lambda q, seed: raw[q] @ raw.T,
        BASELINES[1]: lambda q, seed: np.broadcast_to(pop, (len(q), len(pop))),
        BASELINES[2]: lambda q, seed: cooccurrence_scores(train_pairs, q, graph.num_pins) + tiebreak,
        BASELINES[3]: lambda q, seed: random_walk_scores(graph, q, cfg.walks_per_node, cfg.walk_length,
                                                         cfg.restart_prob, seed) + tiebreak,
    }


def _score_metrics(scores: np.ndarray, pairs: np.ndarray, pool: np.ndarray | None) -> dict[str, float]:
    m = rank_metrics(ranks_from_scores(scores, pairs, pool), HIT_KS)
    return {k: m[k] for k in (*(f"hit@{k}" for k in HIT_KS), "mrr")}


def compare(cfg: PinSageConfig, data_dir: str | Path, out_dir: str | Path, command: str = "",
            variants: dict[str, dict[str, Any]] | None = None, seeds: list[int] | None = None,
            period: Period = "all", baselines: bool = True) -> EvalResult:
    """Every baseline and every variant, once per seed, on the same pairs and candidate pool; writes the
    :class:`EvalResult` as ``pinsage_<dataset>.json`` / ``.md`` in ``out_dir`` and returns it."""
    out_dir = Path(out_dir)
    seeds = [cfg.seed] if not seeds else list(seeds)
    dataset = str(io.read_meta(data_dir).get("dataset", Path(data_dir).name))
    graph = build_graph(data_dir, cfg.use_engagement_edges)
    pairs = heldout_pairs(data_dir, graph.pin_ids, cfg, period)
    pool = candidate_pool(graph.num_pins, cfg.eval_pool)
    topics = planted_topics(data_dir, graph.pin_ids)
    val_pairs = heldout_pairs(data_dir, graph.pin_ids, cfg, "val") if cfg.patience > 0 else None
    result = EvalResult(
        model="pinsage", dataset=dataset, command=command,
        protocol={"task": "related pins: rank the co-engaged pin i of each held-out pair (q, i)",
                  "split": (f"period '{period}' of the events after meta.json split_timestamp (protocol.period_bounds)"
                            if user_splits(data_dir) is None else f"per-user split (users.parquet split_timestamp), "
                            f"users of period '{period}' (protocol.eval_mask)"),
                  "queries": f"{len(pairs)} co-engagement pairs (window {cfg.pair_window_s} s), sampled with SPLIT_SEED",
                  "candidate pool": "all other pins" if pool is None else f"{len(pool)} random pins (SPLIT_SEED)",
                  "num_pins": graph.num_pins, "seeds": seeds, "experiment": cfg_experiment(cfg),
                  "early stopping": (f"MRR on {len(val_pairs)} 'val' period pairs every "
                                     f"{f'{cfg.val_every} steps' if cfg.val_every else 'epoch'}, patience "
                                     f"{cfg.patience}, best weights kept" if val_pairs is not None else "none")},
        metrics={k: v for k, v in METRICS.items() if k != "topic@10" or topics is not None})
    if baselines:
        for name, scorer in baseline_scorers(graph, data_dir, cfg).items():
            for seed in seeds:
                m = _score_metrics(scorer(pairs[:, 0], seed), pairs, pool)
                if topics is not None and name == BASELINES[0]:
                    feats = graph_features(graph, data_dir)
                    m["topic@10"] = topic_purity(feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-8), topics)
                result.add(name, seed, details={"baseline": True}, **m, train_seconds=0.0)
    chosen = variants if variants is not None else VARIANTS
    todo = [(seed, name) for seed in seeds for name in chosen]  # seed by seed: a cut-short run has whole seeds
    for i, (seed, name) in enumerate(todo):
        slug = "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")
        vcfg = dataclasses.replace(copy.deepcopy(cfg), **{**EVAL_OVERRIDES, **chosen[name], "seed": seed})
        model_dir = out_dir / "models" / f"pinsage_{dataset}" / slug / f"seed-{seed}"
        t0 = time.perf_counter()
        emb, tm = train_and_embed(vcfg, data_dir, model_dir, val_pairs)
        m = evaluate_embeddings(emb, pairs, cfg, topics)
        m = {k: v for k, v in m.items() if k in result.metrics}
        keys = ("steps", "best_step", "best_val_mrr", "stopped_early", "hard_per_positive_max")  # the curriculum's reach
        result.add(name, seed, details={k: tm.get(k) for k in keys if k in tm}, **m,
                   train_seconds=time.perf_counter() - t0)
        print(f"{name} (seed {seed}): {m}", flush=True)
        if vcfg.hard_negatives and tm.get("hard_per_positive_max") == 0:
            result.notes.append(f"{name} (seed {seed}): the hard-negative curriculum never activated (stopped at step "
                                f"{tm.get('steps')}, before its second stage): this run equals 'no hard negatives'")
        if i + 1 < len(todo):  # written after every run: a long evaluation stopped early keeps what it measured
            result.details["partial"] = f"{i + 1} of {len(todo)} trained runs"
            write_result(result, out_dir)
    result.details.pop("partial", None)
    if len(seeds) > 1:
        for better, worse, metric in ORDERINGS:
            if better in result.variants and worse in result.variants:
                result.compare(better, worse, metric)
    if val_pairs is not None and period != "test":
        result.notes.append(f"early stopping looked at the 'val' period, which is part of the reported '{period}' "
                            "period: report --period test for numbers no choice has seen")
    result.papers = papers.for_result("pinsage", result.protocol)
    write_result(result, out_dir)
    return result


def select_variants(keys: str | None) -> dict[str, dict[str, Any]] | None:
    """``"content-only,full"`` -> those VARIANTS (None/"" = all); an unknown key is a ConfigError naming the known."""
    if not keys:
        return None
    chosen = [k.strip() for k in keys.split(",") if k.strip()]
    unknown = [k for k in chosen if k not in VARIANT_KEYS]
    if unknown:
        raise ConfigError(f"--variants: unknown {unknown}; expected a comma-separated subset of {list(VARIANT_KEYS)}")
    return {VARIANT_KEYS[k]: VARIANTS[VARIANT_KEYS[k]] for k in chosen}


def cfg_experiment(cfg: Any) -> str | None:
    """The experiment a config was loaded from (a field in newer configs, a hidden attribute before)."""
    return getattr(cfg, "experiment", None) or getattr(cfg, "_experiment", None)
