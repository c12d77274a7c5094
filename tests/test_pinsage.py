"""PinSage: CONVOLVE, layer-wise inference, training with exact resume, planted topics, evaluation, CLI."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from components import config
from components.cli import main as cli_main
from components.data.tables import VersionedStore, read_table
from components.evaluation import pinsage as pinsage_eval
from components.inference.pinsage import embed_pins, model_digest
from components.models.pinsage import Convolve, PinSage, load_model
from components.models.pinsage_layerwise import layerwise_embeddings, per_node_embeddings
from components.training.pinsage import prepare_inputs, train


def tiny(**kw):
    return config.load("pinsage_tiny", {"log_every": 1000, **kw})


def test_convolve_pools_with_the_importance_weights():
    torch.manual_seed(0)
    layer = Convolve(4, 6, 5)
    h_self = torch.randn(3, 4)
    h_nbr = torch.randn(3, 2, 4)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.25, 0.75]])
    out = layer(h_self, h_nbr, w)
    assert out.shape == (3, 5)
    norms = out.norm(dim=1)
    assert (((norms - 1).abs() < 1e-5) | (norms == 0)).all()  # unit length (all-zero after ReLU stays 0)
    # weight 1 on one neighbour == that neighbour alone
    assert torch.allclose(out[0], layer(h_self[:1], h_nbr[:1, :1], torch.ones(1, 1))[0], atol=1e-6)
    # the formula, written out
    m = torch.relu(layer.Q(h_nbr[2]))
    n = 0.25 * m[0] + 0.75 * m[1]
    z = torch.relu(layer.W(torch.cat([h_self[2], n])))
    assert torch.allclose(out[2], z / z.norm(), atol=1e-6)


def test_mean_pooling_ignores_importance_weights_but_not_padding():
    torch.manual_seed(0)
    m = PinSage(tiny(pooling="mean", feature_dim=4))
    w = torch.tensor([[0.9, 0.1, 0.0]])
    assert torch.equal(m.pool_weights(w), torch.tensor([[1.0, 1.0, 0.0]]))
    assert torch.equal(PinSage(tiny(feature_dim=4)).pool_weights(w), w)
    with pytest.raises(config.ConfigError, match="pooling"):
        PinSage(tiny(pooling="max", feature_dim=4))


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_layerwise_inference_equals_the_per_node_forward(tiny_data, num_layers):
    cfg = tiny(num_layers=num_layers)
    inp = prepare_inputs(cfg, tiny_data)
    torch.manual_seed(1)
    model = PinSage(cfg).eval()
    lw = layerwise_embeddings(model, inp["features"], inp["nbr_ids"], inp["nbr_w"], chunk=97)
    targets = np.arange(0, len(lw), 7)
    ref = per_node_embeddings(model, inp["features"], inp["nbr_ids"], inp["nbr_w"], targets)
    assert lw.shape == (len(inp["features"]), cfg.embed_dim)
    assert np.abs(lw[targets] - ref).max() < 1e-5
    assert np.allclose(np.linalg.norm(lw, axis=1), 1.0, atol=1e-5)


def _params(model_dir):
    model, _, _ = load_model(model_dir)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_from_a_checkpoint_ends_with_the_same_parameters(tiny_data, tmp_path):
    # 85 batches per epoch on synthetic_tiny: 120 steps cross an epoch boundary (hard negatives start)
    full = train(tiny(max_steps=120, checkpoint_every=10), tiny_data, tmp_path / "full")
    assert full["steps"] == 120 and np.isfinite(full["final_loss"])
    part = tmp_path / "part"
    train(tiny(max_steps=90, checkpoint_every=10, keep_checkpoints=0), tiny_data, part)  # keep all
    for ck in (part / "checkpoints").glob("step-*.pt"):  # the run "died" after its step-50 checkpoint
        if int(ck.stem.split("-")[1]) > 50:
            ck.unlink()
    (part / "model.pt").unlink()
    resumed = train(tiny(max_steps=120, checkpoint_every=10), tiny_data, part, resume=True)
    assert resumed["steps"] == 120
    a, b = _params(tmp_path / "full"), _params(part)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = (part / "train_log.jsonl").read_text()
    assert '"resumed": true' in log and '"step": 50' in log
    # and a different seed gives different parameters (the test can fail)
    other = train(tiny(max_steps=20, seed=3, checkpoint_every=0), tiny_data, tmp_path / "other")
    assert other["steps"] == 20
    assert not torch.equal(_params(tmp_path / "other")["head.net.0.weight"], a["head.net.0.weight"])


def test_loader_workers_give_the_same_model(tiny_data, tmp_path):
    a = train(tiny(max_steps=15, num_workers=0, checkpoint_every=0), tiny_data, tmp_path / "w0")
    b = train(tiny(max_steps=15, num_workers=2, checkpoint_every=0), tiny_data, tmp_path / "w2")
    assert a["steps"] == b["steps"] == 15
    pa_, pb = _params(tmp_path / "w0"), _params(tmp_path / "w2")
    assert all(torch.equal(pa_[k], pb[k]) for k in pa_)
    log = (tmp_path / "w2" / "train_log.jsonl").read_text()
    assert "data_wait_s" in log and "compute_s" in log


def test_full_pinsage_recovers_planted_topics_better_than_content(tiny_data, tmp_path):
    inp = prepare_inputs(tiny(), tiny_data)
    topics = pinsage_eval.planted_topics(tiny_data, inp["graph"].pin_ids)
    assert topics is not None
    feats = inp["features"] / np.linalg.norm(inp["features"], axis=1, keepdims=True)
    raw = pinsage_eval.topic_purity(feats, topics)
    scores = {}
    for name, kw in {"content": {"num_layers": 0}, "full": {}}.items():
        emb, _ = pinsage_eval.train_and_embed(tiny(checkpoint_every=0, **kw), tiny_data, tmp_path / name)
        scores[name] = pinsage_eval.topic_purity(emb, topics)
    print("topic@10:", {"raw content": raw, **scores})
    assert scores["full"] > scores["content"] + 0.05
    assert scores["full"] > raw + 0.03


def test_ranking_metrics_on_a_known_example():
    emb = np.eye(4, dtype=np.float32)
    emb[1] = [0.9, 0.1, 0, 0]  # pin 1 is closest to pin 0
    emb[2] = [0.5, 0, 0.5, 0]
    pairs = np.array([[0, 1], [0, 2], [0, 3]])
    m = pinsage_eval.ranking_metrics(emb, pairs, pool_size=10, seed=0)
    # ranks of the positives among pins {1, 2, 3}: 1, 2, 3
    assert m["hit@10"] == 1.0
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_cli_train_embed_and_a_failed_embed_keeps_the_published_version(tiny_data, tmp_path, capsys):
    model_dir, root = tmp_path / "model", tmp_path / "emb"
    assert cli_main(["train", "pinsage", "--experiment", "pinsage_tiny", "--data", str(tiny_data), "--out",
                     str(model_dir), "--set", "max_steps=5", "--set", "log_every=1000"]) == 0
    assert (model_dir / "model.pt").exists() and (model_dir / "config.yaml").exists()
    assert (model_dir / "metrics.json").exists() and (model_dir / "train_log.jsonl").exists()
    assert cli_main(["embed", "pins", "--model", str(model_dir), "--data", str(tiny_data), "--out", str(root),
                     "--version", "v1"]) == 0
    store = VersionedStore(root / "pinsage")
    assert store.current() == "v1"
    t = read_table(store.path())
    ids = pq.read_table(tiny_data / "pins.parquet").column("pin_id").to_numpy()
    assert np.array_equal(np.sort(t.ids), np.sort(ids)) and t.dim == 16
    assert np.allclose(np.linalg.norm(t.embeddings, axis=1), 1.0, atol=1e-5)
    # the table's model_version is the model's digest (what a ranker trained on it records), not the store version
    assert t.model_version == model_digest(model_dir) and t.model_version.startswith("pinsage-") and "v1" not in t.model_version
    # a data directory with the wrong feature width: clear error, v1 stays published
    bad = tmp_path / "bad"
    shutil.copytree(tiny_data, bad)
    pins = pq.read_table(bad / "pins.parquet")
    short = pa.array([f[:3] for f in pins.column("features").to_pylist()], pa.list_(pa.float32()))
    pq.write_table(pins.set_column(pins.column_names.index("features"), "features", short), bad / "pins.parquet")
    with pytest.raises(ValueError, match=r"pins\.parquet: column features has 3 values"):
        embed_pins(model_dir, bad, root / "pinsage", version="v2")
    assert store.current() == "v1" and "v2" not in store.versions()
    # a bad override is a clear CLI error
    assert cli_main(["train", "pinsage", "--data", str(tiny_data), "--out", str(tmp_path / "x"),
                     "--set", "pooling=3"]) == 2
    assert "pooling" in capsys.readouterr().err


def test_training_uses_the_sample_graph_steps_neighbourhoods(tiny_data, tmp_path):
    from components.graph.graph import build_graph
    from components.graph.sampling import build_neighbourhoods

    cfg = tiny(max_steps=5, checkpoint_every=0, num_workers=0)
    graph = build_graph(tiny_data, cfg.use_engagement_edges)
    nbr_ids, nbr_w = build_neighbourhoods(graph, cfg)
    np.savez_compressed(tmp_path / "neighbourhoods.npz", pin_ids=graph.pin_ids, nbr_ids=nbr_ids, nbr_weights=nbr_w)
    train(cfg, tiny_data, tmp_path / "sampled")
    train(cfg, tiny_data, tmp_path / "given", neighbourhoods=tmp_path)  # the folder sample_graph writes
    a, b = _params(tmp_path / "sampled"), _params(tmp_path / "given")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same seeded neighbourhoods, read instead of re-sampled
    # neighbourhoods of another graph or another num_neighbors are refused, naming the file
    np.savez_compressed(tmp_path / "other.npz", pin_ids=graph.pin_ids[:-1], nbr_ids=nbr_ids[:-1],
                        nbr_weights=nbr_w[:-1])
    with pytest.raises(ValueError, match="other.npz: neighbourhoods of .* pins that differ from the data's graph"):
        train(cfg, tiny_data, tmp_path / "x", neighbourhoods=tmp_path / "other.npz")
    with pytest.raises(ValueError, match="neighbourhoods.npz: nbr_ids .* expected .*num_neighbors=3"):
        train(tiny(max_steps=5, num_neighbors=3), tiny_data, tmp_path / "y", neighbourhoods=tmp_path)
