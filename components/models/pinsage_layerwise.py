"""PinSage's layer-wise embedding (the paper's MapReduce inference, on one machine): pure model computation
over arrays, used by the daily inference job (``components.inference.pinsage``) and by the evaluation
harness's validation and test embeddings (``components.evaluation.pinsage``), which sits below inference.

Layer k of every pin is computed once from layer k-1 of every pin, chunk by chunk, so the cost is K passes
over the pins -- linear in the number of pins -- instead of a K-hop computation graph per target
(:func:`per_node_embeddings`, kept as the reference the tests compare to).
"""

from __future__ import annotations

import numpy as np
import torch

from components.graph.sampling import computation_graph
from components.models.pinsage import PinSage
from components.progress import progress


def needed_rows(nbr_ids: np.ndarray, targets: np.ndarray, num_layers: int) -> list[np.ndarray]:
    """Pin indices whose layer-k representation the targets' embeddings depend on, k = 0..K (ascending).

    rows[K] = targets, rows[k-1] = rows[k] plus their neighbourhoods (Algorithm 1's S^(k), over the whole
    batch). With every pin as a target each entry is every pin.
    """
    rows = [np.unique(np.asarray(targets, np.int64))]
    for _ in range(num_layers):
        rows.insert(0, np.unique(np.concatenate([rows[0], nbr_ids[rows[0]].ravel()])))
    return rows


@torch.no_grad()
def layerwise_embeddings(model: PinSage, features: np.ndarray, nbr_ids: np.ndarray, nbr_weights: np.ndarray,
                         chunk: int = 4096, targets: np.ndarray | None = None) -> np.ndarray:
    """Embeddings of every pin (or of ``targets``): h^(k) = CONVOLVE_k(h^(k-1)) for the pins that need it.

    features (P, F), nbr_ids/nbr_weights (P, T) in pin-index order; targets: pin indices (a shard of the
    daily run), default all. Layer k is computed once for the rows the targets need (:func:`needed_rows`),
    ``chunk`` rows at a time. Returns: (len(unique targets), D) float32 in ascending pin-index order.
    """
    model.eval()
    P = features.shape[0]
    targets = np.arange(P) if targets is None else targets
    rows = needed_rows(np.asarray(nbr_ids, np.int64), targets, model.num_layers)
    h = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))  # (P, F)
    nbr = torch.from_numpy(np.asarray(nbr_ids, np.int64))  # (P, T)
    w = torch.from_numpy(np.asarray(nbr_weights, np.float32))  # (P, T)
    L = model.num_layers
    for k in range(L):
        idx = torch.from_numpy(rows[k + 1])
        spans = [idx[s:s + chunk] for s in range(0, len(idx), chunk)]
        out = torch.cat([model.convolve(k, h, i, nbr[i], w[i])
                         for i in progress(spans, desc=f"PinSage layer {k + 1}/{L}", unit="chunk")])  # (n_k, H)
        if len(idx) == P:
            h = out  # every row: rows[k + 1] is arange(P)
        else:
            h = torch.zeros((P, out.shape[1]), dtype=out.dtype)  # (P, H), only the needed rows are filled
            h[idx] = out
    idx = torch.from_numpy(rows[L])
    return torch.cat([model.embed(h[idx[s:s + chunk]]) for s in range(0, len(idx), chunk)]).numpy()  # (n, D)


@torch.no_grad()
def per_node_embeddings(model: PinSage, features: np.ndarray, nbr_ids: np.ndarray, nbr_weights: np.ndarray,
                        targets: np.ndarray) -> np.ndarray:
    """The reference: each target's own K-hop computation graph (Algorithm 1 with a batch of one).

    Returns: (len(targets), D) float32.
    """
    model.eval()
    out = []
    for t in np.asarray(targets, np.int64):
        nodes, blocks, pos = computation_graph(np.array([t]), nbr_ids, nbr_weights, model.num_layers)
        tb = [{"self_idx": torch.from_numpy(b.self_idx), "nbr_idx": torch.from_numpy(b.nbr_idx),
               "nbr_w": torch.from_numpy(b.nbr_w)} for b in blocks]
        out.append(model(torch.from_numpy(features[nodes]), tb)[pos])  # (1, D)
    return torch.cat(out).numpy() if out else np.zeros((0, model.head.out_dim), np.float32)
