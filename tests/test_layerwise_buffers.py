"""Layer-wise PinSage inference with its layers in files (bounded memory) gives the same bytes as in memory.

``layerwise_embeddings`` computes each chunk on a gathered copy of the rows it reads; with ``buffer_dir`` every
layer (and, in ``embed_pins``, the features) is a file read through a mapping released chunk by chunk. The
reference here is the computation of the previous rounds: every layer a whole (P, H) tensor, every chunk
indexing it (the code before the buffers, kept as the definition of "today's output").
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components import config
from components.data.tables import VersionedStore, read_table
from components.inference.pinsage import embed_data, embed_pins
from components.inference.shards import in_shard
from components.models.pinsage import PinSage
from components.models.pinsage_layerwise import MappedRows, layerwise_embeddings, needed_rows
from components.training.pinsage import prepare_inputs


@torch.no_grad()
def whole_layers(model, features, nbr_ids, nbr_weights, chunk, targets=None) -> np.ndarray:
    """The previous rounds' layer-wise inference: (P, H) tensors, chunks index them."""
    P = features.shape[0]
    targets = np.arange(P) if targets is None else targets
    rows = needed_rows(np.asarray(nbr_ids, np.int64), targets, model.num_layers)
    h = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    nbr, w = torch.from_numpy(np.asarray(nbr_ids, np.int64)), torch.from_numpy(np.asarray(nbr_weights, np.float32))
    for k in range(model.num_layers):
        idx = torch.from_numpy(rows[k + 1])
        out = torch.cat([model.convolve(k, h, i, nbr[i], w[i]) for i in (idx[s:s + chunk] for s in range(0, len(idx), chunk))])
        if len(idx) == P:
            h = out
        else:
            h = torch.zeros((P, out.shape[1]), dtype=out.dtype)
            h[idx] = out
    idx = torch.from_numpy(rows[model.num_layers])
    return torch.cat([model.embed(h[idx[s:s + chunk]]) for s in range(0, len(idx), chunk)]).numpy()


@pytest.mark.parametrize("num_layers", [0, 1, 2])
def test_file_buffers_equal_the_whole_layers(tiny_data, tmp_path, num_layers):
    cfg = config.load("pinsage_tiny", {"num_layers": num_layers})
    inp = prepare_inputs(cfg, tiny_data)
    torch.manual_seed(2)
    model = PinSage(cfg).eval()
    feats, nbr, w = inp["features"], inp["nbr_ids"], inp["nbr_w"]
    shard = np.flatnonzero(in_shard(inp["graph"].pin_ids, 1, 3))
    for targets in (None, shard):
        ref = whole_layers(model, feats, nbr, w, 97, targets)
        in_memory = layerwise_embeddings(model, feats, nbr, w, chunk=97, targets=targets)
        mapped = MappedRows.write(tmp_path / "features.f32", feats, block=50)
        try:
            in_files = layerwise_embeddings(model, mapped.array, nbr, w, chunk=97, targets=targets,
                                            buffer_dir=tmp_path, features_map=mapped)
        finally:
            mapped.close()
        assert ref.shape == (len(feats) if targets is None else len(shard), cfg.embed_dim)
        assert in_memory.tobytes() == ref.tobytes()
        assert in_files.tobytes() == ref.tobytes()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["features.f32", *(f"layer{k + 1}.f32"
                                                                               for k in range(num_layers))]


def test_embed_pins_publishes_the_in_memory_table(tiny_retrieval_models, tiny_data, tmp_path):
    """embed_pins (features and layers in files beside the output, removed after) publishes the embeddings the
    in-memory computation gives, unsharded and for a shard."""
    model_dir = tiny_retrieval_models / "pinsage"
    for name, shard in (("all", None), ("shard2", (2, 3))):
        table = read_table(embed_pins(model_dir, tiny_data, tmp_path / name, "v1", shard))
        ids, emb = embed_data(model_dir, tiny_data, shard)  # layers in memory
        np.testing.assert_array_equal(table.ids, ids)
        assert np.asarray(table.embeddings, np.float32).tobytes() == emb.tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all", "shard2"]  # no layer folder left beside them
    # the fixture's unsharded table (embed_pins too) is the same bytes
    full = read_table(VersionedStore(tiny_retrieval_models / "pins").path())
    assert np.asarray(full.embeddings, np.float32).tobytes() == embed_data(model_dir, tiny_data)[1].tobytes()
