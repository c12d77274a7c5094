"""Simple, strong baselines scored under each harness's own protocol and candidate pools.

- :func:`popularity_counts`: how often each item was engaged in the training period (all three models: the
  same score for every query).
- :func:`cooccurrence_scores`: item-item co-engagement counts of the training period (PinSage's related-pins
  task): how often q and c were engaged one after the other by one user.
- :func:`random_walk_scores`: Pixie-style visit counts of random walks from q on the pin-board graph (the
  visit counts PinSage's importance neighbourhoods are built from, used directly as the recommendation).

Each returns a score per (query, candidate) or per candidate; the harness ranks them exactly as it ranks
model embeddings. The ranker's baselines (logistic regression, a GBDT) live in
:mod:`components.evaluation.ranker`, on the ranker's own feature arrays.
"""

from __future__ import annotations

import numpy as np

from components.graph.graph import PinBoardGraph
from components.graph.sampling import random_walks


def popularity_counts(item_index: np.ndarray, num_items: int) -> np.ndarray:
    """(num_items,) float32 engagement counts of item indices (training-period rows only; -1 = unknown)."""
    idx = np.asarray(item_index, np.int64)
    idx = idx[(idx >= 0) & (idx < num_items)]
    return np.bincount(idx, minlength=num_items).astype(np.float32)


def cooccurrence_scores(train_pairs: np.ndarray, queries: np.ndarray, num_items: int) -> np.ndarray:
    """(Q, num_items) float32: symmetric co-engagement counts of each query with every item, from the
    training period's (a, b) pairs."""
    pairs = np.asarray(train_pairs, np.int64).reshape(-1, 2)
    both = np.concatenate([pairs, pairs[:, ::-1]])  # symmetric
    queries = np.asarray(queries, np.int64)
    qpos = {int(q): i for i, q in enumerate(np.unique(queries))}
    uq = np.fromiter(qpos, np.int64)
    out_u = np.zeros((len(uq), num_items), np.float32)
    keep = np.isin(both[:, 0], uq)
    rows = np.searchsorted(uq, both[keep, 0])
    np.add.at(out_u, (rows, both[keep, 1]), 1.0)
    return out_u[np.searchsorted(uq, queries)]  # (Q, num_items)


def random_walk_scores(graph: PinBoardGraph, queries: np.ndarray, walks_per_node: int, walk_length: int,
                       restart_prob: float, seed: int) -> np.ndarray:
    """(Q, P) float32 visit counts of ``walks_per_node`` random walks from each query pin (Pixie-style)."""
    queries = np.asarray(queries, np.int64)
    uq, inv = np.unique(queries, return_inverse=True)
    src_pos, visited = random_walks(graph, uq, walks_per_node, walk_length, restart_prob,
                                    np.random.default_rng([seed, 17]))
    counts = np.zeros((len(uq), graph.num_pins), np.float32)
    np.add.at(counts, (src_pos, visited), 1.0)
    return counts[inv]  # (Q, P)
