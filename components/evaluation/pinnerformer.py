"""PinnerFormer evaluation (arXiv 2205.04507, section 4): Recall@10 on held-out users.

For a user embedded at time T (from their latest M actions up to T), the targets are all their
positive engagements (repin, closeup > 10 s, click > 10 s) in (T, T + 14 days]. Each target pin is
ranked against a fixed random pool of ``eval_pool`` pins (the user's own targets removed from the
pool) by cosine with the user embedding in the pin-tower space; Recall@10 is the share of targets
ranked in the top 10, averaged per user, then over users (every user weighs the same).

- ``recall_at_split``: T = the train/eval split time (each user's own with a per-user split,
  ``users.parquet: split_timestamp``; or, with ``eval_at: user``, 70% through each held-out user's own
  history), for users held out of training.
- ``daily_vs_realtime``: query points are held-out users' actions in the first days after the
  split; the real-time embedding includes every action up to the query, the daily one only the
  actions before the start of that day (the batch job ran at midnight); both predict the same
  14-day targets after the query.
- ``popularity_recall``: the popularity baseline on the same queries and pool.

The harness that trains the variants is :mod:`components.evaluation.pinnerformer_harness` (this module is
imported by training, for its in-training Recall@10, and so never imports a trainer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from components.config import PinnerFormerConfig
from components.data.tables import EmbeddingTable
from components.data.validate import load_events
from components.evaluation.baselines import popularity_counts
from components.evaluation.metrics import CURVE_KS, recall_at_k, recall_at_ks, recall_at_ks_scores, recall_dict
from components.evaluation.protocol import SPLIT_SEED, split_times
from components.models.pinnerformer import PinnerFormer
from components.training.pinnerformer_data import UserSequences, build_sequences, embed_windows

DAY = 86_400
K = 10


@torch.no_grad()
def pin_space(model: PinnerFormer, pins: torch.Tensor, chunk: int = 8192) -> np.ndarray:
    """Pin-tower embeddings of every pin in the table (N, D)."""
    model.eval()
    return np.concatenate([model.embed_pins(pins[i:i + chunk]).numpy() for i in range(0, len(pins), chunk)])


def _pool(n_pins: int, size: int) -> np.ndarray:
    """The candidate pool: ``size`` random pin rows drawn with the protocol's SPLIT_SEED (every seed and
    every variant ranks against the same pins)."""
    return np.sort(np.random.default_rng([SPLIT_SEED, 11]).choice(n_pins, size=min(size, n_pins), replace=False))


def _targets(seqs: UserSequences, a: int, b: int, after: int, until: int) -> np.ndarray:
    ts = seqs.timestamp[a:b]
    sel = (ts > after) & (ts <= until) & seqs.positive[a:b]
    return seqs.pin_row[a:b][sel]


def per_user_split(data_dir: str | Path, seqs: UserSequences) -> np.ndarray:
    """(U,) split time of every user of ``seqs``: their own with a per-user split, else the global one."""
    return split_times(data_dir, seqs.user_ids)


def _split_of(split: int | np.ndarray, u: int) -> int:
    return int(split[u]) if isinstance(split, np.ndarray) else int(split)


def anchor_index(seqs: UserSequences, u: int, split: int, at: str) -> int:
    """The absolute index of the last action before user ``u``'s embedding time (a - 1 if none).

    ``at="split"``: the train/eval split time. ``at="user"``: the action 70% through the user's own
    history (for datasets like ML-100k where few users are active right after one global date;
    held-out users never train, so any point of their history is unseen).
    """
    a, b = seqs.span(u)
    if at == "split":
        return a + int(np.searchsorted(seqs.timestamp[a:b], split, side="left")) - 1
    if at == "user":
        return a + int(0.7 * (b - a)) - 1
    raise ValueError(f"pinnerformer config: eval_at '{at}' is not one of ('split', 'user')")


def recall_at_split(model: PinnerFormer, cfg: PinnerFormerConfig, data_dir: str | Path, table: EmbeddingTable,
                    users: np.ndarray, seqs: UserSequences | None = None) -> dict:
    """Recall@K (every K of ``CURVE_KS``; Recall@10 is the paper's) of the 14 days after each held-out user's
    embedding time (``cfg.eval_at``)."""
    seqs = seqs if seqs is not None else build_sequences(load_events(data_dir), table.ids)
    split = per_user_split(data_dir, seqs)
    pins = torch.from_numpy(np.ascontiguousarray(table.embeddings, dtype=np.float32))
    windows, targets = split_queries(cfg, seqs, users, split)
    if not windows:
        return {**{f"recall@{k}": None for k in CURVE_KS}, "eval_users_scored": 0}
    recall = recall_at_ks(embed_windows(model, pins, seqs, windows), targets, pin_space(model, pins),
                          _pool(len(pins), cfg.eval_pool))  # (users, len(CURVE_KS))
    return {**recall_dict(recall), "eval_users_scored": len(windows)}


def split_queries(cfg: PinnerFormerConfig, seqs: UserSequences, users: np.ndarray, split: int | np.ndarray
                  ) -> tuple[list[tuple[int, int]], list[np.ndarray]]:
    """For each held-out user with a positive in the window: (its action window up to the embedding time,
    its target pin rows in the ``future_window_days`` after it). ``split``: one time, or one per user of
    ``seqs`` (:func:`per_user_split`)."""
    windows, targets = [], []
    for u in seqs.index_of(np.asarray(users, np.int64)):
        if u < 0:
            continue
        a, b = seqs.span(int(u))
        su = _split_of(split, int(u))
        e = anchor_index(seqs, int(u), su, cfg.eval_at)
        if e < a:
            continue
        t_emb = su - 1 if cfg.eval_at == "split" else int(seqs.timestamp[e])
        tg = _targets(seqs, a, b, t_emb, t_emb + cfg.future_window_days * DAY)
        if len(tg) == 0:
            continue
        windows.append((max(a, e - cfg.max_seq_len + 1), e))
        targets.append(tg)
    return windows, targets


def popularity_recall(cfg: PinnerFormerConfig, seqs: UserSequences, users: np.ndarray, split: int | np.ndarray,
                      n_pins: int) -> dict:
    """Recall@K of the popularity baseline: every user gets the pins with the most positive engagements
    before the split (all users' training-period actions), on the same queries and pool as the models."""
    windows, targets = split_queries(cfg, seqs, users, split)
    if not windows:
        return {**{f"recall@{k}": None for k in CURVE_KS}, "eval_users_scored": 0}
    before = seqs.timestamp < (np.repeat(split, np.diff(seqs.offsets)) if isinstance(split, np.ndarray) else split)
    pop = popularity_counts(np.where(before & seqs.positive, seqs.pin_row, -1), n_pins)  # (N,)
    pop = pop + 1e-6 * np.random.default_rng([SPLIT_SEED, 19]).random(n_pins)  # ties: a fixed random order
    pool = _pool(n_pins, cfg.eval_pool)
    recall = recall_at_ks_scores(np.broadcast_to(pop[pool], (len(targets), len(pool))),
                                 [pop[np.unique(t)] for t in targets], [np.isin(pool, t) for t in targets])
    return {**recall_dict(recall), "eval_users_scored": len(windows)}


def daily_vs_realtime(model: PinnerFormer, cfg: PinnerFormerConfig, data_dir: str | Path, table: EmbeddingTable,
                      users: np.ndarray, seqs: UserSequences | None = None, query_days: int = 7,
                      queries_per_user: int = 5) -> dict:
    """Recall@10 with daily (end of previous day) vs real-time (after every action) user embeddings,
    at held-out users' actions in the ``query_days`` after their embedding time."""
    seqs = seqs if seqs is not None else build_sequences(load_events(data_dir), table.ids)
    split_u = per_user_split(data_dir, seqs)
    pins = torch.from_numpy(np.ascontiguousarray(table.embeddings, dtype=np.float32))
    rng = np.random.default_rng([SPLIT_SEED, 13])
    rt_windows, daily_windows, targets, owner = [], [], [], []
    for u in seqs.index_of(np.asarray(users, np.int64)):
        if u < 0:
            continue
        a, b = seqs.span(int(u))
        ts = seqs.timestamp[a:b]
        split = int(split_u[u])
        e0 = anchor_index(seqs, int(u), split, cfg.eval_at)
        start = split if cfg.eval_at == "split" else (int(seqs.timestamp[e0]) + 1 if e0 >= a else split)
        queries = np.flatnonzero((ts >= start) & (ts < start + query_days * DAY))
        queries = [q for q in queries if len(_targets(seqs, a, b, ts[q], ts[q] + cfg.future_window_days * DAY))]
        if not queries:
            continue
        for q in np.sort(rng.choice(queries, size=min(queries_per_user, len(queries)), replace=False)):
            day_start = ts[q] - ts[q] % DAY
            d_end = a + int(np.searchsorted(ts, day_start, side="left")) - 1  # last action before that day
            if d_end < a:
                continue
            e = a + int(q)
            rt_windows.append((max(a, e - cfg.max_seq_len + 1), e))
            daily_windows.append((max(a, d_end - cfg.max_seq_len + 1), d_end))
            targets.append(_targets(seqs, a, b, ts[q], ts[q] + cfg.future_window_days * DAY))
            owner.append(int(u))
    if not targets:
        return {"recall@10_daily": None, "recall@10_realtime": None, "queries": 0}
    space = pin_space(model, pins)
    pool = _pool(len(pins), cfg.eval_pool)
    owner_arr = np.asarray(owner)

    def per_user_mean(r: np.ndarray) -> float:
        return float(np.mean([r[owner_arr == o].mean() for o in np.unique(owner_arr)]))

    rt = recall_at_k(embed_windows(model, pins, seqs, rt_windows), targets, space, pool)
    daily = recall_at_k(embed_windows(model, pins, seqs, daily_windows), targets, space, pool)
    return {"recall@10_daily": per_user_mean(daily), "recall@10_realtime": per_user_mean(rt),
            "queries": len(targets), "query_users": int(len(np.unique(owner_arr)))}


# ----------------------------------------------------------------------------------------------
# The comparison harness behind `homefeed eval pinnerformer`.
# ----------------------------------------------------------------------------------------------
