"""PinSage inference without repeated work (the paper's MapReduce pipeline, on one machine).

Layer k of every pin is computed once from layer k-1 of every pin, chunk by chunk (``inference_chunk`` pins
at a time), so the cost is K passes over the pins -- linear in the number of pins -- instead of a K-hop
computation graph per target (:func:`per_node_embeddings`, kept as the reference the tests compare to).

    embed_pins(model_dir, data_dir, out_root, version=None) -> path of the published table

publishes ``VersionedStore(out_root)/v=<version>/embeddings.parquet`` (pin_id, embedding, model_version,
created_at); the CLI passes ``<out>/pinsage`` as ``out_root``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import torch

from components.graph.graph import build_graph
from components.graph.sampling import build_neighbourhoods, computation_graph
from components.inference.tables import EmbeddingTable, VersionedStore
from components.models.pinsage import PinSage, load_model
from components.progress import progress


@torch.no_grad()
def layerwise_embeddings(model: PinSage, features: np.ndarray, nbr_ids: np.ndarray, nbr_weights: np.ndarray,
                         chunk: int = 4096) -> np.ndarray:
    """Embeddings of every pin: h^(k) = CONVOLVE_k(h^(k-1)) for all pins, then the dense network.

    features (P, F), nbr_ids/nbr_weights (P, T) in pin-index order. Returns: (P, D) float32.
    """
    model.eval()
    h = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))  # (P, F)
    nbr = torch.from_numpy(np.asarray(nbr_ids, np.int64))  # (P, T)
    w = torch.from_numpy(np.asarray(nbr_weights, np.float32))  # (P, T)
    P = h.shape[0]
    spans = [torch.arange(s, min(s + chunk, P)) for s in range(0, P, chunk)]
    L = model.num_layers
    for k in range(L):
        h = torch.cat([model.convolve(k, h, idx, nbr[idx], w[idx])
                       for idx in progress(spans, desc=f"PinSage layer {k + 1}/{L}", unit="chunk")])  # (P, H)
    return torch.cat([model.embed(h[idx]) for idx in spans]).numpy()  # (P, D)


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


def embed_data(model_dir: str | Path, data_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(pin_ids (P,), embeddings (P, D)) of every pin of ``data_dir`` with the model in ``model_dir``.

    The neighbourhoods are sampled from ``data_dir``'s graph with the model's sampling config and seed, so new
    pins and edges are embedded without retraining (PinSage is inductive).
    """
    from components.training.pinsage import graph_features

    model, cfg, _ = load_model(model_dir)
    graph = build_graph(data_dir, cfg.use_engagement_edges)
    feats = graph_features(graph, data_dir)
    if feats.shape[1] != cfg.feature_dim:
        raise ValueError(f"{Path(data_dir) / 'pins.parquet'}: column features has {feats.shape[1]} values per pin, "
                         f"the model in {model_dir} expects feature_dim={cfg.feature_dim}")
    nbr_ids, nbr_w = build_neighbourhoods(graph, cfg)
    return graph.pin_ids, layerwise_embeddings(model, feats, nbr_ids, nbr_w, cfg.inference_chunk)


def embed_pins(model_dir: str | Path, data_dir: str | Path, out_root: str | Path, version: str | None = None) -> Path:
    """Embed every pin layer-wise and publish the table atomically; returns the table's path."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    version = version or now.strftime("%Y%m%dT%H%M%S")
    pin_ids, emb = embed_data(model_dir, data_dir)
    table = EmbeddingTable(pin_ids, emb, f"pinsage-{version}", now, "pin_id")
    return VersionedStore(out_root).publish(table, version)
