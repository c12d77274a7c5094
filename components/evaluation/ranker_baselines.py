"""The ranker's baselines, trained on exactly the ranker's feature arrays and time split
(``components.training.ranker.prepare_data``) and scored with the same metrics:

- popularity: each pin's positive rate per task in the training impressions (smoothed towards the global
  rate), the same score for every user;
- logistic regression: one linear model per task over the dense features, the user and pin embeddings,
  their element-wise product (when the dimensions agree) and one learned bias per sparse/surface value
  (a one-hot encoding), full-batch L-BFGS in torch, its L2 penalty chosen on the training period's last 20%;
- GBDT: one LightGBM binary model per task over the same columns (sparse and surface as categorical).
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import torch

from components.config import RankerConfig
from components.evaluation.metrics import auc
from components.training.ranker import EmbeddingSource, RankerData, prepare_data

POPULARITY_PRIOR = 10.0  # pseudo-impressions at the global rate: a pin seen twice is not "100% saved"


def popularity_scores(train_pins: np.ndarray, train_labels: np.ndarray, eval_pins: np.ndarray) -> np.ndarray:
    """(n_eval, K) smoothed per-pin positive rate per task from the training impressions."""
    uniq, inv = np.unique(train_pins, return_inverse=True)
    shown = np.bincount(inv, minlength=len(uniq)).astype(np.float64)  # (U,)
    glob = train_labels.mean(0)  # (K,)
    out = np.tile(glob, (len(eval_pins), 1))
    pos = np.searchsorted(uniq, eval_pins).clip(0, max(len(uniq) - 1, 0))
    known = (uniq[pos] == eval_pins) if len(uniq) else np.zeros(len(eval_pins), bool)
    for k in range(train_labels.shape[1]):
        hits = np.bincount(inv, weights=train_labels[:, k], minlength=len(uniq))
        rate = (hits + POPULARITY_PRIOR * glob[k]) / (shown + POPULARITY_PRIOR)
        out[known, k] = rate[pos[known]]
    return out


def _continuous(d: RankerData) -> np.ndarray:
    cols = [d.dense, d.user, d.pin]
    if d.user.shape[1] == d.pin.shape[1]:
        cols.append(d.user * d.pin)  # (n, D): lets a linear model see user-pin affinity
    return np.concatenate(cols, axis=1).astype(np.float32)


def _categorical(d: RankerData) -> np.ndarray:
    return np.concatenate([d.sparse, d.surface], axis=1).astype(np.int64)  # (n, S+1)


L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)  # the logistic regression's L2 penalty, chosen inside the training period


def logistic_regression(train: RankerData, evaluation: RankerData, seed: int, iters: int = 60,
                        l2: float | None = None) -> np.ndarray:
    """(n_eval, K) probabilities of per-task logistic regressions (see the module doc).

    ``l2=None`` chooses the penalty from :data:`L2_GRID` by the mean task AUC on the last 20% of the
    training rows (they are in time order) after fitting on the first 80%, then refits on all of them:
    no evaluation row is looked at.
    """
    if l2 is None:
        cut = int(0.8 * len(train))
        fit, held = train.subset(np.arange(cut)), train.subset(np.arange(cut, len(train)))
        scores = {}
        for c in L2_GRID:
            p = logistic_regression(fit, held, seed, iters, c)
            aucs = [auc(held.labels[:, k], p[:, k]) for k in range(p.shape[1])]
            aucs = [a for a in aucs if a is not None]
            scores[c] = float(np.mean(aucs)) if aucs else 0.0
        l2 = max(scores, key=scores.__getitem__)
    torch.manual_seed(seed)
    xc, xs = torch.from_numpy(_continuous(train)), torch.from_numpy(_categorical(train))
    mu, sd = xc.mean(0), xc.std(0).clamp_min(1e-6)
    card = (torch.maximum(xs.max(0).values, torch.from_numpy(_categorical(evaluation)).max(0).values) + 1).tolist()
    offsets = torch.tensor(np.r_[0, np.cumsum(card)[:-1]], dtype=torch.int64)
    y = torch.from_numpy(train.labels)
    K = y.shape[1]
    w = torch.zeros(xc.shape[1], K, requires_grad=True)
    bias = torch.zeros(int(sum(card)), K, requires_grad=True)  # one weight per (column, value): one-hot
    b0 = torch.zeros(K, requires_grad=True)

    def logits(c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return ((c - mu) / sd) @ w + bias[s + offsets].sum(1) + b0  # (n, K)

    opt = torch.optim.LBFGS([w, bias, b0], max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits(xc, xs), y)
        loss = loss + l2 * (w.pow(2).sum() + bias.pow(2).sum())
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        ec = torch.from_numpy(_continuous(evaluation))
        es = torch.from_numpy(_categorical(evaluation)).clamp(max=torch.tensor(card) - 1)
        return torch.sigmoid(logits(ec, es)).numpy()


def gbdt(train: RankerData, evaluation: RankerData, seed: int, rounds: int = 200,
         num_leaves: int = 31, learning_rate: float = 0.05) -> np.ndarray:
    """(n_eval, K) probabilities of per-task LightGBM models (categorical sparse/surface columns)."""
    xtr = np.concatenate([_continuous(train), _categorical(train).astype(np.float32)], axis=1)
    xev = np.concatenate([_continuous(evaluation), _categorical(evaluation).astype(np.float32)], axis=1)
    n_cont = _continuous(train).shape[1]
    cats = list(range(n_cont, xtr.shape[1]))
    params = {"objective": "binary", "learning_rate": learning_rate, "num_leaves": num_leaves, "seed": seed,
              "deterministic": True, "num_threads": 1, "verbose": -1, "min_data_in_leaf": 20}
    out = np.zeros((len(xev), train.labels.shape[1]))
    for k in range(train.labels.shape[1]):
        y = np.ascontiguousarray(train.labels[:, k])
        if y.min() == y.max():  # one class: the constant rate is the best a model can say
            out[:, k] = y[0]
            continue
        booster = lgb.train(params, lgb.Dataset(xtr, y, categorical_feature=cats), num_boost_round=rounds)
        out[:, k] = booster.predict(xev)
    return out


def leak_check(cfg: RankerConfig, data_dir: str, user_embeddings: EmbeddingSource = None,
               pin_embeddings: EmbeddingSource = None, l2: float = 1e-3) -> dict[str, float | None]:
    """A label-leak probe: logistic regression fitted on the training rows, its AUC(save) on those same rows
    and on the evaluation rows. A feature that carries a training row's own outcome (a user vector built from
    actions at or after the row) shows as a training AUC far above the evaluation AUC; with point-in-time
    features the two stay close."""
    train, evaluation, _ = prepare_data(cfg, data_dir, user_embeddings, pin_embeddings)
    k = cfg.tasks.index("save") if "save" in cfg.tasks else 0
    on_train = logistic_regression(train, train, cfg.seed, l2=l2)
    on_eval = logistic_regression(train, evaluation, cfg.seed, l2=l2)
    return {"auc_train": auc(train.labels[:, k], on_train[:, k]), "auc_eval": auc(evaluation.labels[:, k], on_eval[:, k]),
            "rows_train": float(len(train)), "rows_eval": float(len(evaluation))}
