"""The one ranking-metrics module: AUC (undefined on one class), HIT@3/save, hit@K/MRR, Recall@K."""

from __future__ import annotations

import numpy as np
import pytest

from components.evaluation.metrics import auc, hit_at_k, rank_metrics, recall_at_k, recall_at_k_scores


def test_auc_constant_labels_is_undefined_not_nan():
    assert auc(np.zeros(5), np.arange(5.0)) is None
    assert auc(np.ones(5), np.arange(5.0)) is None
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)


def test_hit_at_k_without_saves_is_undefined():
    r = hit_at_k(np.array([1, 1, 2]), np.array([0.3, 0.2, 0.1]), np.zeros(3))
    assert r == {"hit": None, "hit_norm": None, "requests": 0}


def test_rank_metrics_from_ranks():
    m = rank_metrics(np.array([1, 2, 20, 100]))
    assert m["hit@10"] == 0.5 and m["hit@50"] == 0.75
    assert m["mrr"] == pytest.approx((1 + 0.5 + 0.05 + 0.01) / 4)


def test_recall_at_k_by_embeddings_and_by_scores_agree():
    rng = np.random.default_rng(0)
    pins = rng.normal(size=(30, 4))
    users = rng.normal(size=(3, 4))
    targets = [np.array([0, 1]), np.array([5]), np.array([7, 8, 9])]
    pool = np.arange(10, 30)
    a = recall_at_k(users, targets, pins, pool, k=5)
    b = recall_at_k_scores(users @ pins[pool].T, [pins[np.unique(t)] @ u for t, u in zip(targets, users)],
                           [np.isin(pool, t) for t in targets], k=5)
    assert np.allclose(a, b) and ((0 <= a) & (a <= 1)).all()
    # a target scoring above the whole pool is recalled at k=1
    top = recall_at_k_scores(np.zeros((1, 4)), [np.array([1.0, -1.0])], [np.zeros(4, bool)], k=1)
    assert top.tolist() == [0.5]
