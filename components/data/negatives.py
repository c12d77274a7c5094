"""Ranker negatives for a log without impressions: the documented sampling rule of ``data import``.

Rule: for each request (one user, one UTC day, one surface) with E engaged items, draw
``round(per_positive * E)`` items, distinct within the request, with probability proportional to
(training-period interaction count + 1) -- popular items are the ones a real feed would have shown --
and never an item the user interacted with at any time (those are not known negatives). A user who
interacted with almost the whole catalogue may get fewer. Draws come from a seeded generator.
"""

from __future__ import annotations

import numpy as np


def sample_negatives(req_user: np.ndarray, n_wanted: np.ndarray, item_ids: np.ndarray, popularity: np.ndarray,
                     seen_user: np.ndarray, seen_item: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sample negatives per request.

    Args:
        req_user: (R,) the user of each request.
        n_wanted: (R,) negatives wanted per request.
        item_ids: (N,) the catalogue; popularity: (N,) training counts (>= 0).
        seen_user, seen_item: (S,) every (user, item) pair the log holds (excluded).

    Returns (request index (K,), item id (K,)) sorted by request.
    """
    rng = np.random.default_rng(seed)
    n_items = len(item_ids)
    n_wanted = np.minimum(np.asarray(n_wanted, np.int64), n_items)
    if n_items == 0 or n_wanted.sum() == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # item rows in [0, N) so that (user, item row) pairs fit one int64 key
    order = np.argsort(item_ids)
    seen_row = order[np.searchsorted(item_ids, seen_item, sorter=order)]
    seen_key = np.unique(seen_user.astype(np.int64) * n_items + seen_row)
    p = (popularity.astype(np.float64) + 1.0)
    p /= p.sum()
    n_draw = 6 * n_wanted + 20 * (n_wanted > 0)  # oversample, then drop seen items and repeats
    draw_req = np.repeat(np.arange(len(req_user)), n_draw)
    draw_row = rng.choice(n_items, size=len(draw_req), p=p)
    key = req_user[draw_req].astype(np.int64) * n_items + draw_row
    ok = ~np.isin(key, seen_key)
    _, first = np.unique(draw_req.astype(np.int64) * n_items + draw_row, return_index=True)
    distinct = np.zeros(len(draw_req), bool)
    distinct[first] = True
    keep = np.flatnonzero(ok & distinct)
    kreq = draw_req[keep]
    rank = np.arange(len(keep)) - np.searchsorted(kreq, kreq)  # position among the request's kept draws
    keep = keep[rank < n_wanted[kreq]]
    return draw_req[keep].astype(np.int64), item_ids[draw_row[keep]].astype(np.int64)
