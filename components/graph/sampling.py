"""Graph sampling for PinSage (arXiv 1806.01973): random walks, importance neighbourhoods, PPR hard
negatives and the re-indexed computation graph of a minibatch.

- :func:`random_walks`: batched walks pin -> collection -> pin; every hop of every walker at once (one
  vectorised numpy step per hop, no per-walker Python loop); each walk ends after a hop with probability
  ``restart_prob`` and the next walk restarts from the source pin (``walks_per_node`` walks per source).
- :func:`build_neighbourhoods`: for every pin the T most visited other pins and their L1-normalised visit
  counts (normalised over the T kept, so they sum to 1) -- the paper's importance-based neighbourhood and
  its pooling weights. Pins with fewer than T visited pins are padded with themselves at weight 0.
- :func:`personalized_pagerank` / :func:`hard_negative_candidates`: the paper's hard negatives, pins
  ranked in a band of the query's personalised PageRank (2000-5000 of 2 billion there; here the band is a
  fraction of the corpus, ``hard_negative_band``), by power iteration on the same graph.
- :func:`save_neighbourhoods` / :func:`load_neighbourhoods`: the sampled neighbourhoods as an artifact
  (``.npz``, keyed by pin id) for a pipeline's graph-sampling step.
- :func:`computation_graph`: Algorithm 1's node sets S^(K) <- ... <- S^(0) for a set of target pins,
  re-indexed so layer k gathers its inputs from layer k-1 by position.

Everything random takes a seed and is reproducible.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.data.durable import atomic_write_bytes
from components.graph.graph import PinBoardGraph


def random_walks(graph: PinBoardGraph, sources: np.ndarray, walks_per_node: int, walk_length: int,
                 restart_prob: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Visits of ``walks_per_node`` walks from each source pin.

    Args:
        graph: the pin-board graph.
        sources: (S,) pin indices.
        walks_per_node: W walks per source.
        walk_length: L hops at most per walk (a hop is pin -> collection -> pin).
        restart_prob: probability a walk ends after each hop (the next walk restarts at the source).
        rng: numpy generator.

    Returns: (walker source position in ``sources`` (V,), visited pin index (V,)), one row per visit.
    """
    sources = np.asarray(sources, np.int64)
    pin_deg, coll_deg = graph.pin_degree(), graph.coll_degree()
    walker = np.repeat(np.arange(len(sources)), walks_per_node)  # (S*W,) position of the source
    cur = sources[walker]
    alive = np.flatnonzero(pin_deg[cur] > 0)
    out_src, out_pin = [], []
    for _ in range(walk_length):  # a handful of hops; each hop moves every live walker at once
        if len(alive) == 0:
            break
        c = cur[alive]
        d = pin_deg[c]
        coll = graph.pin_nbrs[graph.pin_ptr[c] + np.minimum((rng.random(len(c)) * d).astype(np.int64), d - 1)]
        d2 = coll_deg[coll]
        nxt = graph.coll_nbrs[graph.coll_ptr[coll] + np.minimum((rng.random(len(c)) * d2).astype(np.int64), d2 - 1)]
        cur[alive] = nxt
        out_src.append(walker[alive])
        out_pin.append(nxt)
        alive = alive[rng.random(len(alive)) >= restart_prob]
    if not out_src:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_src), np.concatenate(out_pin)


def top_visited(src_pos: np.ndarray, visited: np.ndarray, sources: np.ndarray, num_pins: int,
                num_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-T visited pins per source, excluding the source itself; ties broken by the smaller pin index.

    Returns: (nbr_ids (S, T) int64 padded with the source, nbr_weights (S, T) float32 summing to 1 per row
    over the real neighbours, 0 on padding).
    """
    S, T = len(sources), num_neighbors
    nbr = np.repeat(np.asarray(sources, np.int64)[:, None], T, axis=1)  # (S, T)
    w = np.zeros((S, T), np.float32)
    keep = visited != sources[src_pos]
    keys, counts = np.unique(src_pos[keep] * num_pins + visited[keep], return_counts=True)  # sorted by (src, pin)
    if len(keys) == 0:
        return nbr, w
    src, pin = keys // num_pins, keys % num_pins
    order = np.lexsort((-counts, src))  # per source: most visited first; stable keeps pin order on ties
    src, pin, counts = src[order], pin[order], counts[order]
    first = np.r_[0, np.flatnonzero(np.diff(src)) + 1]
    rank = np.arange(len(src)) - np.repeat(first, np.diff(np.r_[first, len(src)]))
    top = rank < T
    src, pin, counts, rank = src[top], pin[top], counts[top], rank[top]
    nbr[src, rank] = pin
    w[src, rank] = counts
    w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    return nbr, w


def build_neighbourhoods(graph: PinBoardGraph, cfg: Any, sources: np.ndarray | None = None,
                         seed: int | None = None, chunk_visits: int = 4_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Importance-based neighbourhoods of every pin (or of ``sources``).

    Args:
        graph: the pin-board graph.
        cfg: a ``PinSageConfig`` (reads walks_per_node, walk_length, restart_prob, num_neighbors, seed).
        sources: pin indices (default: all pins).
        seed: overrides ``cfg.seed``.
        chunk_visits: walkers x hops per chunk (bounds memory; results do not depend on it for a given seed
            only if it is the same, so keep the default for reproducible tables).

    Returns: (nbr_ids (S, T) int64 pin indices, nbr_weights (S, T) float32).
    """
    sources = np.arange(graph.num_pins) if sources is None else np.asarray(sources, np.int64)
    seed = cfg.seed if seed is None else seed
    W, L, T = cfg.walks_per_node, cfg.walk_length, cfg.num_neighbors
    per_chunk = max(1, chunk_visits // max(1, W * L))
    nbrs, weights = [], []
    for i, start in enumerate(range(0, len(sources), per_chunk)):
        chunk = sources[start:start + per_chunk]
        rng = np.random.default_rng([seed, i])
        src_pos, visited = random_walks(graph, chunk, W, L, cfg.restart_prob, rng)
        n, w = top_visited(src_pos, visited, chunk, graph.num_pins, T)
        nbrs.append(n)
        weights.append(w)
    if not nbrs:
        return np.zeros((0, T), np.int64), np.zeros((0, T), np.float32)
    return np.concatenate(nbrs), np.concatenate(weights)


def personalized_pagerank(graph: PinBoardGraph, queries: np.ndarray, restart_prob: float = 0.5,
                          iters: int = 10) -> torch.Tensor:
    """Personalised PageRank of every pin from each query pin, by power iteration on pin->coll->pin.

    r <- a e_q + (1 - a) r M, with M the two-step transition (uniform over collections, then over pins).

    Returns: (Q, P) float32.
    """
    edge_pin, edge_coll = graph.edges()
    P, C, Q = graph.num_pins, graph.num_collections, len(queries)
    pin_deg = np.maximum(graph.pin_degree(), 1).astype(np.float32)
    coll_deg = np.maximum(graph.coll_degree(), 1).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        # to_coll[c, p] = 1/deg(p) for edge (p, c); to_pin[p, c] = 1/deg(c): column-stochastic steps
        to_coll = torch.sparse_csr_tensor(torch.from_numpy(graph.coll_ptr), torch.from_numpy(graph.coll_nbrs),
                                          torch.from_numpy(1.0 / pin_deg[graph.coll_nbrs]), size=(C, P))
        to_pin = torch.sparse_csr_tensor(torch.from_numpy(graph.pin_ptr), torch.from_numpy(graph.pin_nbrs),
                                         torch.from_numpy(1.0 / coll_deg[graph.pin_nbrs]), size=(P, C))
        e = torch.zeros(P, Q)
        e[torch.as_tensor(queries, dtype=torch.long), torch.arange(Q)] = 1.0  # (P, Q)
        r = e.clone()
        for _ in range(iters):
            rc = to_coll @ r  # (C, Q)
            r = restart_prob * e + (1.0 - restart_prob) * (to_pin @ rc)  # (P, Q)
    return r.T.contiguous()  # (Q, P)


def band_ranks(num_pins: int, band: list[float] | tuple[float, float]) -> tuple[int, int]:
    """The PPR rank band [lo, hi) for a corpus of ``num_pins`` (at least one rank, never rank 0 = self)."""
    lo_f, hi_f = band
    if not 0.0 <= lo_f < hi_f <= 1.0:
        raise ValueError(f"key 'hard_negative_band' expects [lo, hi] with 0 <= lo < hi <= 1, got {list(band)}")
    lo = max(1, math.floor(lo_f * num_pins))
    hi = min(num_pins - 1, max(lo + 1, math.ceil(hi_f * num_pins)))
    return min(lo, hi - 1), hi


def hard_negative_candidates(graph: PinBoardGraph, queries: np.ndarray, band: list[float], num: int,
                             seed: int, restart_prob: float = 0.5, chunk: int = 256) -> np.ndarray:
    """For each query pin, ``num`` pins drawn from ranks [lo, hi) of its personalised PageRank.

    Returns: (Q, num) int64 pin indices.
    """
    queries = np.asarray(queries, np.int64)
    lo, hi = band_ranks(graph.num_pins, band)
    out = np.zeros((len(queries), num), np.int64)
    rng = np.random.default_rng([seed, 7])
    for s in range(0, len(queries), chunk):
        q = queries[s:s + chunk]
        r = personalized_pagerank(graph, q, restart_prob)  # (q, P)
        r[torch.arange(len(q)), torch.from_numpy(q)] = float("inf")  # the query itself is rank 0
        top = torch.topk(r, hi, dim=1).indices.numpy()  # (q, hi), highest first
        pick = rng.integers(lo, hi, size=(len(q), num))
        out[s:s + len(q)] = np.take_along_axis(top, pick, axis=1)
    return out


@dataclass
class Block:
    """One layer of a minibatch's computation graph: nodes of layer k from the nodes of layer k-1.

    self_idx (n_k,) and nbr_idx (n_k, T) are positions in layer k-1's node list; nbr_w (n_k, T) the weights.
    """

    self_idx: np.ndarray
    nbr_idx: np.ndarray
    nbr_w: np.ndarray


def computation_graph(targets: np.ndarray, nbr_ids: np.ndarray, nbr_weights: np.ndarray,
                      num_layers: int) -> tuple[np.ndarray, list[Block], np.ndarray]:
    """Algorithm 1 of the paper: S^(K) = targets, S^(k-1) = S^(k) plus their neighbourhoods.

    Returns: (nodes (n_0,) pin indices of layer 0 whose features are the input, blocks [layer 1 .. K],
    target_pos (len(targets),) position of each target among layer K's nodes).
    """
    layer, target_pos = np.unique(np.asarray(targets, np.int64), return_inverse=True)
    blocks: list[Block] = []
    for _ in range(num_layers):
        nb = nbr_ids[layer]  # (n_k, T)
        prev = np.unique(np.concatenate([layer, nb.ravel()]))
        blocks.append(Block(np.searchsorted(prev, layer), np.searchsorted(prev, nb), nbr_weights[layer]))
        layer = prev
    return layer, blocks[::-1], target_pos


def save_neighbourhoods(path: str | Path, pin_ids: np.ndarray, nbr_ids: np.ndarray, nbr_weights: np.ndarray) -> Path:
    """Write neighbourhoods atomically as ``.npz``: pin_ids (P,), nbr_pin_ids (P, T) as pin *ids*, weights (P, T)."""
    buf = io.BytesIO()
    np.savez(buf, pin_ids=np.asarray(pin_ids, np.int64), nbr_pin_ids=np.asarray(pin_ids, np.int64)[nbr_ids],
             weights=np.asarray(nbr_weights, np.float32))
    return atomic_write_bytes(path, buf.getvalue())


def load_neighbourhoods(path: str | Path, graph: PinBoardGraph | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pin_ids (P,), nbr_ids (P, T) pin indices, weights (P, T)) from :func:`save_neighbourhoods`.

    With ``graph``, checks the file was sampled from a graph with the same pins (an error names the file).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: neighbourhoods file not found (run the graph sampling step)")
    with np.load(path) as z:
        pin_ids, nbr_pin_ids, w = z["pin_ids"], z["nbr_pin_ids"], z["weights"]
    if graph is not None and not np.array_equal(pin_ids, graph.pin_ids):
        raise ValueError(f"{path}: sampled for {len(pin_ids)} pins, the graph has {graph.num_pins} different pins")
    return pin_ids, np.searchsorted(pin_ids, nbr_pin_ids), w
