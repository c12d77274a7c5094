"""Ranking metrics for the homefeed ranker: AUC per task and HIT@k/save per request.

HIT@3/save (arXiv 2412.01985): rank each request's logged items by the new scores and count the saves in
the top 3. Reported as the mean over requests with at least one save, and normalised by the best
possible count (min(saves, 3)).
"""

from __future__ import annotations

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney U with average ranks for ties); NaN when only one class is present."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    _, first, counts = np.unique(s[order], return_index=True, return_counts=True)
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)  # 1-based average ranks
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def hit_at_k(request_ids: np.ndarray, scores: np.ndarray, labels: np.ndarray, k: int = 3,
             seed: int = 0) -> dict[str, float]:
    """Saves in the top ``k`` of each request ranked by ``scores`` (ties broken at random, seeded).

    Returns ``hit`` (mean saves in the top k over requests with a save), ``hit_norm`` (saves in the top k
    / the most the top k could hold), ``requests`` (requests with a save).
    """
    req = np.asarray(request_ids)
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if not (len(req) == len(s) == len(y)):
        raise ValueError(f"request_ids ({len(req)}), scores ({len(s)}) and labels ({len(y)}) differ in length")
    if len(req) == 0:
        return {"hit": float("nan"), "hit_norm": float("nan"), "requests": 0}
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
        return {"hit": float("nan"), "hit_norm": float("nan"), "requests": 0}
    return {"hit": float(in_top[has].mean()), "hit_norm": float(in_top[has].sum() / np.minimum(total[has], k).sum()),
            "requests": int(has.sum())}
