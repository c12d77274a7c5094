"""Sampled softmax for two-tower retrieval (PinnerFormer, arXiv 2205.04507, section 3.4).

For a pair p = (user embedding u_p, positive pin v_p) and a pool of negatives n:

    logit(p, j) = <u_p, v_j> / tau - log Q_j          (logQ correction, Yi et al. 2019)
    loss_p = -log( exp(logit(p, p)) / (exp(logit(p, p)) + sum_{j in pool, not masked} exp(logit(p, j))) )

where Q_j is the expected number of times item j enters the pool: for in-batch negatives the
batch's positives (so Q_j = P * freq_j, freq_j from a count-min sketch), for random negatives a
uniform draw of N of the C pins (Q_j = N / C). Pools:

- in_batch: every other pair's positive; the user's own positives (and the same pin) are masked;
- random: N pins drawn uniformly from the corpus; a draw equal to the pair's positive is masked;
- mixed: both pools concatenated into one softmax.

The temperature tau is learned, clamped at >= min_temperature. Every user weighs the same: a pair's
loss is divided by the number of pairs of its user in the batch, and the loss is averaged over users.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from components.layers.temperature import clamped_temperature

__all__ = ["clamped_temperature", "sampled_softmax_loss", "user_weights"]  # the model's temperature is this one


def user_weights(users: torch.Tensor) -> torch.Tensor:
    """(P,) weights 1 / (#pairs of the pair's user) / (#users), so each user sums to 1 / #users."""
    uniq, inverse, counts = torch.unique(users, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse].float() / len(uniq)


def sampled_softmax_loss(
    query: torch.Tensor,
    positive: torch.Tensor,
    positive_ids: torch.Tensor,
    users: torch.Tensor,
    temperature: torch.Tensor,
    in_batch: bool = True,
    random_negatives: torch.Tensor | None = None,
    random_ids: torch.Tensor | None = None,
    logq_positive: torch.Tensor | None = None,
    logq_random: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Per-user-weighted sampled softmax loss over in-batch and/or random negatives.

    Args:
        query: (P, D) user embeddings, one per (user position, positive) pair.
        positive: (P, D) embeddings of the positives.
        positive_ids: (P,) pin ids of the positives (for masking duplicates).
        users: (P,) user id of each pair (for masking the user's own positives and weighting).
        temperature: scalar tau (already clamped).
        in_batch: use the other pairs' positives as negatives.
        random_negatives: (N, D) uniformly sampled pins, or None.
        random_ids: (N,) their pin ids.
        logq_positive: (P,) log expected count of each positive in the in-batch pool; None = no correction.
        logq_random: log expected count of each random negative ((N,) or a scalar); None = no correction.

    Returns: scalar loss.
    """
    if not in_batch and random_negatives is None:
        raise ValueError("sampled_softmax_loss: need in-batch negatives, random negatives or both")
    p = query.shape[0]
    pos_logit = (query * positive).sum(-1) / temperature  # (P,)
    columns: list[torch.Tensor] = []
    if in_batch:
        sim = query @ positive.T / temperature  # (P, P)
        if logq_positive is not None:
            sim = sim - logq_positive[None, :]
        own = (users[:, None] == users[None, :]) | (positive_ids[:, None] == positive_ids[None, :])  # (P, P)
        columns.append(sim.masked_fill(own, float("-inf")))  # the diagonal is masked too; it is pos_logit
        if logq_positive is not None:
            pos_logit = pos_logit - logq_positive
    if random_negatives is not None:
        sim = query @ random_negatives.T / temperature  # (P, N)
        if logq_random is not None:
            sim = sim - torch.as_tensor(logq_random, dtype=sim.dtype)
            if not in_batch:  # the positive is corrected like the pool it competes in
                pos_logit = pos_logit - torch.as_tensor(logq_random, dtype=sim.dtype).mean()
        hit = random_ids[None, :] == positive_ids[:, None]  # (P, N) accidental hits
        columns.append(sim.masked_fill(hit, float("-inf")))
    logits = torch.cat([pos_logit[:, None]] + columns, dim=1)  # (P, 1 + pool)
    per_pair = F.cross_entropy(logits, torch.zeros(p, dtype=torch.long, device=logits.device), reduction="none")
    return (per_pair * user_weights(users)).sum()
