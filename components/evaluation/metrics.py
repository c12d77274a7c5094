"""Ranking metrics, in one module, for all three models.

- :func:`rank_metrics`: hit@K and MRR from the 1-based rank of each query's positive (PinSage related pins).
- :func:`recall_at_k` / :func:`recall_at_ks`: the share of each query's targets in the top K against a
  candidate pool (PinnerFormer's 14-day Recall@10; at every K of :data:`CURVE_KS` for the Recall@K curves).
- :func:`hit_at_k`: HIT@3/save (arXiv 2412.01985): rank each request's logged items by the new scores and
  count the saves in the top 3; reported as the mean over requests with at least one save (``hit``), and
  normalised by the best possible count min(saves, 3) (``hit_norm``).
- :func:`auc`: ROC AUC per task; ``None`` ("undefined") when the labels hold one class only.

A metric that cannot be computed is ``None``, never NaN: the result type shows it as "undefined".
"""

from __future__ import annotations

import numpy as np

CURVE_KS = (1, 2, 5, 10, 20, 50, 100)  # the K of every metric@K curve (PinSage hit@K, PinnerFormer Recall@K)


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC (Mann-Whitney U with average ranks for ties); ``None`` when only one class is present."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    _, first, counts = np.unique(s[order], return_index=True, return_counts=True)
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)  # 1-based average ranks
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def hit_at_k(request_ids: np.ndarray, scores: np.ndarray, labels: np.ndarray, k: int = 3,
             seed: int = 0) -> dict[str, float | int | None]:
    """Saves in the top ``k`` of each request ranked by ``scores`` (ties broken at random, seeded).

    Returns ``hit`` (mean saves in the top k over requests with a save), ``hit_norm`` (saves in the top k
    / the most the top k could hold), ``requests`` (requests with a save); hit/hit_norm are None without one.
    """
    req = np.asarray(request_ids)
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if not (len(req) == len(s) == len(y)):
        raise ValueError(f"request_ids ({len(req)}), scores ({len(s)}) and labels ({len(y)}) differ in length")
    if len(req) == 0:
        return {"hit": None, "hit_norm": None, "requests": 0}
    tie = np.random.default_rng(seed).random(len(s))
    order = np.lexsort((tie, -s, req))  # by request, then score descending, then random
    req_sorted = req[order]
    starts = np.r_[0, np.flatnonzero(req_sorted[1:] != req_sorted[:-1]) + 1]
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(req_sorted)]))
    position = np.arange(len(req_sorted)) - starts[group]
    y_sorted = y[order]
    in_top = np.bincount(group, weights=y_sorted * (position < k), minlength=len(starts))
    total = np.bincount(group, weights=y_sorted, minlength=len(starts))
    has = total > 0
    if not has.any():
        return {"hit": None, "hit_norm": None, "requests": 0}
    return {"hit": float(in_top[has].mean()), "hit_norm": float(in_top[has].sum() / np.minimum(total[has], k).sum()),
            "requests": int(has.sum())}


def rank_metrics(rank: np.ndarray, ks: tuple[int, ...] = (10, 50)) -> dict[str, float]:
    """hit@K for each K, MRR (plain 1/rank, not the PinSage paper's rank/100 scaling) and their standard
    errors over queries (``hit@10_se``, ``mrr_se``), from each query's 1-based rank (n,)."""
    rank = np.asarray(rank, dtype=np.float64)
    n = len(rank)
    if n == 0:
        raise ValueError("rank_metrics: no queries")
    out = {f"hit@{k}": float((rank <= k).mean()) for k in ks}
    out["mrr"] = float((1.0 / rank).mean())
    if 10 in ks:
        out["hit@10_se"] = float(np.sqrt(out["hit@10"] * (1 - out["hit@10"]) / n))
    out["mrr_se"] = float((1.0 / rank).std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    return out


def rank_of_positive(pos_scores: np.ndarray, candidate_scores: np.ndarray) -> np.ndarray:
    """1-based rank of each query's positive among its candidates: 1 + candidates scoring strictly higher.
    ``pos_scores`` (n,), ``candidate_scores`` (n, C) with excluded candidates set to -inf."""
    return 1 + (candidate_scores > pos_scores[:, None]).sum(1)  # (n,)


def recall_at_k(user_emb: np.ndarray, targets: list[np.ndarray], pin_emb: np.ndarray, pool: np.ndarray,
                k: int = 10) -> np.ndarray:
    """Per-query recall@k: the share of each query's target pins (rows of ``pin_emb``) that rank in the
    top k against the ``pool`` rows (targets removed from the pool). Returns (Q,)."""
    return recall_at_ks(user_emb, targets, pin_emb, pool, (k,))[:, 0]


def recall_at_ks(user_emb: np.ndarray, targets: list[np.ndarray], pin_emb: np.ndarray, pool: np.ndarray,
                 ks: tuple[int, ...] = CURVE_KS) -> np.ndarray:
    """Per-query recall at each K of ``ks`` (one ranking, every K): (Q, len(ks))."""
    return recall_at_ks_scores(user_emb @ pin_emb[pool].T, [pin_emb[np.unique(t)] @ u for t, u in zip(targets, user_emb)],
                               [np.isin(pool, t) for t in targets], ks)


def recall_at_k_scores(pool_scores: np.ndarray, target_scores: list[np.ndarray], in_targets: list[np.ndarray],
                       k: int = 10) -> np.ndarray:
    """recall@k from scores: ``pool_scores`` (Q, Npool), per query its targets' scores (T,) and the mask of
    pool entries that are its own targets (removed from the pool). For models that are not embeddings
    (baselines scoring pins directly)."""
    return recall_at_ks_scores(pool_scores, target_scores, in_targets, (k,))[:, 0]


def recall_at_ks_scores(pool_scores: np.ndarray, target_scores: list[np.ndarray], in_targets: list[np.ndarray],
                        ks: tuple[int, ...] = CURVE_KS) -> np.ndarray:
    """:func:`recall_at_k_scores` at every K of ``ks`` from one ranking: (Q, len(ks))."""
    kk = np.asarray(ks)
    out = np.zeros((len(target_scores), len(kk)))
    for q, s_t in enumerate(target_scores):
        s_pool = pool_scores[q][~in_targets[q]]
        beaten_by = (s_pool[None, :] > s_t[:, None]).sum(1)  # (T,)
        out[q] = (beaten_by[:, None] < kk[None, :]).mean(0)
    return out


def recall_dict(per_query: np.ndarray, ks: tuple[int, ...] = CURVE_KS) -> dict[str, float]:
    """``{"recall@1": mean, ...}`` from :func:`recall_at_ks`' (Q, len(ks)) per-query values."""
    return {f"recall@{k}": float(per_query[:, i].mean()) for i, k in enumerate(ks)}
