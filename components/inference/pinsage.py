"""PinSage inference without repeated work (the paper's MapReduce pipeline, on one machine).

Layer k of every pin is computed once from layer k-1 of every pin, chunk by chunk (``inference_chunk`` pins
at a time), so the cost is K passes over the pins -- linear in the number of pins -- instead of a K-hop
computation graph per target (:mod:`components.models.pinsage_layerwise`, where the computation lives).

    embed_pins(model_dir, data_dir, out_root, version=None) -> path of the published table

publishes ``VersionedStore(out_root)/v=<version>/embeddings.parquet`` (pin_id, embedding, model_version,
created_at); the CLI passes ``<out>/pinsage`` as ``out_root``. ``shard=(k, n)`` embeds only shard k's pins
(the daily pipeline's ParallelFor; the merge step publishes the union).

Memory: the features and every layer's (P, H) representations are files in a temporary folder beside
``out_root`` (removed after), read through mappings released chunk by chunk
(:class:`~components.models.pinsage_layerwise.MappedRows`), so the job holds the graph, the neighbourhoods,
O(chunk) rows and the (P, D) result; the published table is the same bytes as with the layers in memory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np

from components.data.tables import EmbeddingTable, VersionedStore
from components.graph.graph import build_graph
from components.graph.sampling import build_neighbourhoods
from components.inference.shards import in_shard
from components.models.pinsage import load_model
from components.models.pinsage_layerwise import MappedRows, layerwise_embeddings
from components.training.pinsage import graph_features


def embed_data(model_dir: str | Path, data_dir: str | Path, shard: tuple[int, int] | None = None,
               buffer_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pin_ids (P,), embeddings (P, D)) of every pin of ``data_dir`` with the model in ``model_dir``.

    The neighbourhoods are sampled from ``data_dir``'s graph with the model's sampling config and seed, so new
    pins and edges are embedded without retraining (PinSage is inductive). ``shard`` = (k, n): only the pins
    of shard k of n (:mod:`components.inference.shards`); every shard samples the same neighbourhoods (one
    seed over the whole graph) and computes the layers its pins need, so the shards' rows equal the
    unsharded table's. ``buffer_dir``: an existing folder for the features and layer files (see
    :func:`layerwise_embeddings`); None keeps them in memory. The result is the same.
    """
    model, cfg, _ = load_model(model_dir)
    graph = build_graph(data_dir, cfg.use_engagement_edges)
    feats = graph_features(graph, data_dir)
    if feats.shape[1] != cfg.feature_dim:
        raise ValueError(f"{Path(data_dir) / 'pins.parquet'}: column features has {feats.shape[1]} values per pin, "
                         f"the model in {model_dir} expects feature_dim={cfg.feature_dim}")
    with contextlib.ExitStack() as stack:
        features_map = None
        if buffer_dir is not None:  # (P, F) to a file before the neighbourhoods are sampled; the array is dropped
            features_map = MappedRows.write(Path(buffer_dir) / "features.f32", feats)
            stack.callback(features_map.close)
            feats = features_map.array
        nbr_ids, nbr_w = build_neighbourhoods(graph, cfg)
        targets = None if shard is None else np.flatnonzero(in_shard(graph.pin_ids, *shard))
        pin_ids = graph.pin_ids if targets is None else graph.pin_ids[targets]
        return pin_ids, layerwise_embeddings(model, feats, nbr_ids, nbr_w, cfg.inference_chunk, targets,
                                             buffer_dir=buffer_dir, features_map=features_map)


def model_digest(model_dir: str | Path) -> str:
    """``pinsage-<12 hex of model.pt>``: the model_version of every table the model produces. A daily re-run of
    the same model keeps it (the store version is the date), a new model changes it, so the ranker trained on a
    table and the recommend path can check they hold embeddings of the same PinSage model."""
    h = hashlib.sha256()
    with open(Path(model_dir) / "model.pt", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "pinsage-" + h.hexdigest()[:12]


def embed_pins(model_dir: str | Path, data_dir: str | Path, out_root: str | Path, version: str | None = None,
               shard: tuple[int, int] | None = None) -> Path:
    """Embed every pin (or shard ``(k, n)``'s pins) layer-wise and publish the table atomically; returns its path.
    The layer buffers live in a temporary folder beside ``out_root``, removed afterwards."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    version = version or now.strftime("%Y%m%dT%H%M%S")
    beside = Path(out_root).absolute()
    beside.parent.mkdir(parents=True, exist_ok=True)
    buffers = tempfile.mkdtemp(prefix=f".{beside.name}.layers-", dir=beside.parent)
    try:
        pin_ids, emb = embed_data(model_dir, data_dir, shard, buffer_dir=buffers)
    finally:
        shutil.rmtree(buffers, ignore_errors=True)
    table = EmbeddingTable(pin_ids, emb, model_digest(model_dir), now, "pin_id")
    return VersionedStore(out_root).publish(table, version)
