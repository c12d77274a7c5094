"""PinSage training data: related pairs, and producer-consumer minibatches.

Related pairs (q, i) (the paper's "users engaged with i immediately after q"):
- co-engagement: two consecutive engagements (any action but ``hide``) of one user, on different pins,
  at most ``pair_window_s`` apart, before ``until`` (the split time);
- same board: for each board membership (p, b), p and another pin of b drawn with a fixed seed.

:class:`PairBatches` is a map-style dataset whose item ``i`` is the whole minibatch ``i`` of an epoch:
the query/positive pins, ~``num_negatives`` random negatives shared by the minibatch, the curriculum's
hard negatives (``epoch - 1`` per positive, 1-based epochs, from the PPR band), and the re-indexed
computation graph with its layer-0 features. Run inside DataLoader workers, it is the paper's producer:
the sub-graph is sampled and gathered while the trainer computes on the previous batch. Each minibatch is
a pure function of (seed, rank, epoch, i), so worker count and resuming never change the data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F_

from components.graph.graph import PinBoardGraph
from components.graph.sampling import computation_graph


def coengagement_pairs(events: pd.DataFrame, pin_ids: np.ndarray, window_s: int) -> np.ndarray:
    """(n, 2) pin-index pairs of consecutive non-hide engagements of one user within ``window_s``.

    ``events`` must be sorted by (user_id, timestamp) (``load_events`` returns it so).
    """
    ev = events[events["action_type"] != "hide"]
    user = ev["user_id"].to_numpy()
    ts = ev["timestamp"].to_numpy()
    pin = np.searchsorted(pin_ids, ev["pin_id"].to_numpy())
    ok = (user[1:] == user[:-1]) & (ts[1:] - ts[:-1] <= window_s) & (pin[1:] != pin[:-1])
    return np.stack([pin[:-1][ok], pin[1:][ok]], axis=1).astype(np.int64)


def board_pairs(graph: PinBoardGraph, seed: int) -> np.ndarray:
    """(n, 2): for each membership edge (p, b) of a board with 2+ pins, (p, another pin of b)."""
    rng = np.random.default_rng([seed, 11])
    edge_pin, edge_coll = graph.edges()
    deg = graph.coll_degree()
    keep = (edge_coll < graph.num_boards) & (deg[edge_coll] > 1)
    p, b = edge_pin[keep], edge_coll[keep]
    # a uniformly random *other* member: one of the first deg-1 slots, p itself swapped for the last slot
    r = (rng.random(len(p)) * (deg[b] - 1)).astype(np.int64)
    other = graph.coll_nbrs[graph.coll_ptr[b] + r]
    other = np.where(other == p, graph.coll_nbrs[graph.coll_ptr[b] + deg[b] - 1], other)
    return np.stack([p, other], axis=1).astype(np.int64)


def max_margin_loss(zq: torch.Tensor, zp: torch.Tensor, zn: torch.Tensor, zh: torch.Tensor | None,
                    margin: float) -> torch.Tensor:
    """The paper's max-margin loss: mean over (q, negative) of max(0, z_q.z_n - z_q.z_i + margin).

    zq, zp (B, D); zn (M, D) shared negatives; zh (B, h, D) per-query hard negatives or None.
    """
    pos = (zq * zp).sum(-1, keepdim=True)  # (B, 1)
    losses = F_.relu(zq @ zn.T - pos + margin)  # (B, M)
    if zh is not None and zh.shape[1] > 0:
        hard = torch.einsum("bd,bhd->bh", zq, zh)  # (B, h)
        losses = torch.cat([losses, F_.relu(hard - pos + margin)], dim=1)  # (B, M + h)
    return losses.mean()


class PairBatches(torch.utils.data.Dataset):
    """Minibatch ``i`` of one epoch of (q, i) pairs, with negatives and its computation graph (see module doc).

    Args:
        pairs: (n, 2) pin indices (this rank's shard).
        features: (P, F) float32 content features in pin-index order.
        nbr_ids, nbr_weights: (P, T) importance neighbourhoods.
        num_layers: K.
        batch_size: pairs per minibatch (the last partial batch is dropped).
        num_negatives: random negatives shared by the minibatch.
        hard_candidates: (P, C) PPR-band pins per query pin, or None.
        hard_per_positive: hard negatives per positive this epoch (with ``stage_len``: at most this many).
        seed, rank, epoch: make every batch a pure function of these and ``i``.
        start: skip the first ``start`` batches (resuming mid-epoch).
        stage_len: the curriculum scaled to the run: batch ``i`` of epoch ``e`` (global step
            s = e * batches_per_epoch + i) uses min(hard_per_positive, s // stage_len) hard negatives; 0 keeps
            ``hard_per_positive`` for the whole epoch.
    """

    def __init__(self, pairs: np.ndarray, features: np.ndarray, nbr_ids: np.ndarray, nbr_weights: np.ndarray,
                 num_layers: int, batch_size: int, num_negatives: int, hard_candidates: np.ndarray | None,
                 hard_per_positive: int, seed: int, rank: int, epoch: int, start: int = 0, stage_len: int = 0):
        self.pairs, self.features = pairs, features
        self.nbr_ids, self.nbr_weights = nbr_ids, nbr_weights
        self.num_layers, self.batch_size, self.num_negatives = num_layers, batch_size, num_negatives
        self.hard = hard_candidates if hard_per_positive > 0 else None
        self.hard_per_positive = hard_per_positive if hard_candidates is not None else 0
        self.seed, self.rank, self.epoch, self.start = seed, rank, epoch, start
        self.stage_len = stage_len
        self.order = np.random.default_rng([seed, rank, epoch, 1]).permutation(len(pairs))

    @staticmethod
    def batches_per_epoch(num_pairs: int, batch_size: int) -> int:
        return num_pairs // batch_size

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch(len(self.pairs), self.batch_size) - self.start)

    def __getitem__(self, i: int) -> dict[str, object]:
        i += self.start
        rng = np.random.default_rng([self.seed, self.rank, self.epoch, 2, i])
        B, M, h = self.batch_size, self.num_negatives, self.hard_per_positive
        if self.stage_len > 0:  # the curriculum stage of this batch's global step
            h = min(h, (self.epoch * self.batches_per_epoch(len(self.pairs), B) + i) // self.stage_len)
        q, p = self.pairs[self.order[i * B:(i + 1) * B]].T  # (B,), (B,)
        neg = rng.integers(0, len(self.features), M)  # (M,)
        if h > 0:
            hard = np.take_along_axis(self.hard[q], rng.integers(0, self.hard.shape[1], (B, h)), axis=1)  # (B, h)
        else:
            hard = np.zeros((B, 0), np.int64)
        nodes, blocks, pos = computation_graph(np.concatenate([q, p, neg, hard.ravel()]), self.nbr_ids,
                                               self.nbr_weights, self.num_layers)
        return {
            "h0": torch.from_numpy(self.features[nodes]),  # (N_0, F)
            "blocks": [{"self_idx": torch.from_numpy(b.self_idx), "nbr_idx": torch.from_numpy(b.nbr_idx),
                        "nbr_w": torch.from_numpy(b.nbr_w)} for b in blocks],
            "q": torch.from_numpy(pos[:B]), "p": torch.from_numpy(pos[B:2 * B]),
            "neg": torch.from_numpy(pos[2 * B:2 * B + M]),
            "hard": torch.from_numpy(pos[2 * B + M:].reshape(B, h)),
        }
