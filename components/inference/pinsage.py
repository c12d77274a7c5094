"""PinSage inference without repeated work (the paper's MapReduce pipeline, on one machine).

Layer k of every pin is computed once from layer k-1 of every pin, chunk by chunk (``inference_chunk`` pins
at a time), so the cost is K passes over the pins -- linear in the number of pins -- instead of a K-hop
computation graph per target (:func:`per_node_embeddings`, kept as the reference the tests compare to).

    embed_pins(model_dir, data_dir, out_root, version=None) -> path of the published table

publishes ``VersionedStore(out_root)/v=<version>/embeddings.parquet`` (pin_id, embedding, model_version,
created_at); the CLI passes ``<out>/pinsage`` as ``out_root``. ``shard=(k, n)`` embeds only shard k's pins
(the daily pipeline's ParallelFor; the merge step publishes the union).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import torch

from components.data.tables import EmbeddingTable, VersionedStore
from components.graph.graph import build_graph
from components.graph.sampling import build_neighbourhoods, computation_graph
from components.inference.shards import in_shard
from components.models.pinsage import PinSage, load_model
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


def embed_data(model_dir: str | Path, data_dir: str | Path,
               shard: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pin_ids (P,), embeddings (P, D)) of every pin of ``data_dir`` with the model in ``model_dir``.

    The neighbourhoods are sampled from ``data_dir``'s graph with the model's sampling config and seed, so new
    pins and edges are embedded without retraining (PinSage is inductive). ``shard`` = (k, n): only the pins
    of shard k of n (:mod:`components.inference.shards`); every shard samples the same neighbourhoods (one
    seed over the whole graph) and computes the layers its pins need, so the shards' rows equal the
    unsharded table's.
    """
    from components.training.pinsage import graph_features

    model, cfg, _ = load_model(model_dir)
    graph = build_graph(data_dir, cfg.use_engagement_edges)
    feats = graph_features(graph, data_dir)
    if feats.shape[1] != cfg.feature_dim:
        raise ValueError(f"{Path(data_dir) / 'pins.parquet'}: column features has {feats.shape[1]} values per pin, "
                         f"the model in {model_dir} expects feature_dim={cfg.feature_dim}")
    nbr_ids, nbr_w = build_neighbourhoods(graph, cfg)
    targets = None if shard is None else np.flatnonzero(in_shard(graph.pin_ids, *shard))
    pin_ids = graph.pin_ids if targets is None else graph.pin_ids[targets]
    return pin_ids, layerwise_embeddings(model, feats, nbr_ids, nbr_w, cfg.inference_chunk, targets)


def embed_pins(model_dir: str | Path, data_dir: str | Path, out_root: str | Path, version: str | None = None,
               shard: tuple[int, int] | None = None) -> Path:
    """Embed every pin (or shard ``(k, n)``'s pins) layer-wise and publish the table atomically; returns its path."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    version = version or now.strftime("%Y%m%dT%H%M%S")
    pin_ids, emb = embed_data(model_dir, data_dir, shard)
    table = EmbeddingTable(pin_ids, emb, f"pinsage-{version}", now, "pin_id")
    return VersionedStore(out_root).publish(table, version)
