"""PinnerFormer model and training: causal mask, time encoding, sampling knobs, DDP, checkpoints + resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from components import config
from components.data.baseline import content_embeddings
from components.data.tables import write_table
from components.data.validate import load_events
from components.layers.time_encoding import TimeEncoding
from components.models.pinnerformer import PinnerFormer, load_model
from components.training.loop import Checkpoints
from components.training.pinnerformer import train
from components.training.pinnerformer_data import build_sequences, sample_examples

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pin_table(tiny_data, tmp_path_factory) -> Path:
    pins, _ = content_embeddings(tiny_data)
    return write_table(pins, tmp_path_factory.mktemp("pf") / "pins.parquet")


def _batch(b: int = 3, m: int = 12, e: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, m, e, generator=g), torch.randint(0, 4, (b, m), generator=g),
            torch.randint(0, 3, (b, m), generator=g), torch.rand(b, m, generator=g) * 30,
            1_700_000_000 + torch.cumsum(torch.randint(1, 5000, (b, m), generator=g), 1),
            torch.ones(b, m, dtype=torch.bool)]


def test_time_encoding_shape_and_periods():
    enc = TimeEncoding(4, 1.0, 20.0, log_time=True)
    x = torch.tensor([0.0, 10.0, 1e6])
    out = enc(x)
    assert out.shape == (3, 9) and enc.out_dim == 9
    assert torch.allclose(out[:, 1:5] ** 2 + out[:, 5:] ** 2, torch.ones(3, 4), atol=1e-5)
    assert out[0, 0] == 0 and out[2, 0] > out[1, 0]  # the scalar log term grows with x
    absolute = TimeEncoding(3, 3600.0, 86_400.0 * 28, log_time=False)
    a, b = absolute(torch.tensor([1_700_000_000.0])), absolute(torch.tensor([1_700_000_000.0 + 86_400 * 28]))
    assert torch.allclose(a, b, atol=1e-4)  # periodic in the longest period
    with pytest.raises(ValueError, match="num_periods"):
        TimeEncoding(0, 1.0, 2.0)


def test_causal_mask_future_action_does_not_change_earlier_positions():
    cfg = config.load("pinnerformer_tiny", {"pin_dim": 64, "dropout": 0.0})
    torch.manual_seed(0)
    model = PinnerFormer(cfg).eval()
    args = _batch()
    out = model(*args)
    assert out.shape == (3, 12, cfg.embed_dim)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3, 12), atol=1e-5)  # L2-normalised
    changed = [a.clone() for a in args]
    k = 8  # change everything about action 8 except its time: pin, type, surface, duration
    changed[0][:, k] = torch.randn(3, 64) * 3
    changed[1][:, k] = (changed[1][:, k] + 1) % 4
    changed[2][:, k] = (changed[2][:, k] + 1) % 3
    changed[3][:, k] = changed[3][:, k] + 100
    out2 = model(*changed)
    assert torch.equal(out2[:, :k], out[:, :k]), "earlier positions saw a future action"
    assert (out2[:, k:] - out[:, k:]).abs().max() > 1e-3, "the changed position itself must change"


def test_padding_does_not_change_valid_positions():
    cfg = config.load("pinnerformer_tiny", {"pin_dim": 64, "dropout": 0.0})
    model = PinnerFormer(cfg).eval()
    args = _batch(b=2, m=10)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, 6:] = False  # row 1 has 6 actions, right-padded
    out = model(*args[:5], valid)
    short = model(*[a[1:2, :6] for a in args[:5]], torch.ones(1, 6, dtype=torch.bool))
    assert torch.allclose(out[1, :6], short[0], atol=1e-5)
    assert torch.allclose(PinnerFormer.last_valid(out, valid)[1], short[0, 5], atol=1e-5)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(*_batch(b=1, m=cfg.max_seq_len + 1))


def test_sampling_knobs(tiny_data, pin_table):
    from components.data.tables import read_table

    table = read_table(pin_table)
    seqs = build_sequences(load_events(tiny_data), table.ids)
    users = np.arange(len(seqs))
    rng = np.random.default_rng(0)
    for objective in ("next_action", "all_action", "dense_all_action"):
        cfg = config.load("pinnerformer_tiny", {"objective": objective, "max_seq_len": 8, "max_seqs_per_user": 2,
                                                "max_positives_per_seq": 3, "max_positives_all_action": 5,
                                                "seq_sample_fraction": 0.5})
        exs = sample_examples(seqs, users, cfg, rng)
        assert exs, objective
        per_user = np.bincount([ex.user for ex in exs])
        assert per_user.max() <= 2
        for ex in exs[:200]:
            assert ex.end - ex.start + 1 <= 8
            a, b = seqs.span(ex.user)
            assert a <= ex.start <= ex.end < b
            assert len(ex.targets) <= (5 if objective == "all_action" else 3)
            assert seqs.positive[ex.targets].all(), "every target must be a positive engagement"
            t_query = seqs.timestamp[ex.start + ex.positions]
            assert (seqs.timestamp[ex.targets] >= t_query).all() and (ex.targets > ex.start + ex.positions).all()
            if objective != "next_action":  # SASRec's next action may be any time later
                assert (seqs.timestamp[ex.targets] - t_query <= cfg.future_window_days * 86_400).all()
            if objective == "all_action":
                assert (ex.positions == ex.end - ex.start).all()
            if objective == "next_action":
                assert (ex.targets == ex.start + ex.positions + 1).all()
    # a smaller fraction samples fewer sequences
    few = sample_examples(seqs, users, config.load("pinnerformer_tiny", {"seq_sample_fraction": 0.05,
                                                                          "max_seqs_per_user": 50}), rng)
    many = sample_examples(seqs, users, config.load("pinnerformer_tiny", {"seq_sample_fraction": 0.5,
                                                                           "max_seqs_per_user": 50}), rng)
    assert len(few) < len(many)


def test_train_writes_model_dir_and_holds_out_users(tiny_data, pin_table, tmp_path):
    cfg = config.load("pinnerformer_tiny", {"max_steps": 8, "epochs": 1})
    metrics = train(cfg, tiny_data, pin_table, tmp_path / "m")
    for name in ("model.pt", "config.yaml", "train_log.jsonl", "metrics.json"):
        assert (tmp_path / "m" / name).exists(), name
    assert metrics["steps"] == 8 and np.isfinite(metrics["final_loss"])
    model, cfg2, extra = load_model(tmp_path / "m")
    assert not model.training and cfg2.pin_dim == 64
    assert len(extra["eval_users"]) == round(0.1 * 300)
    assert metrics["recall@10"] is not None and 0 <= metrics["recall@10"] <= 1
    with pytest.raises(config.ConfigError, match="key 'objective' expects one of .*, got 'nope'"):
        train(config.load("pinnerformer_tiny", {"objective": "nope"}), tiny_data, pin_table, tmp_path / "x")


def test_resume_gives_the_same_parameters(tiny_data, pin_table, tmp_path):
    over = {"epochs": 2, "checkpoint_every": 5, "dropout": 0.1}
    straight = train(config.load("pinnerformer_tiny", {**over, "max_steps": 14}), tiny_data, pin_table,
                     tmp_path / "a", evaluate=False)
    train(config.load("pinnerformer_tiny", {**over, "max_steps": 6}), tiny_data, pin_table, tmp_path / "b",
          evaluate=False)
    assert Checkpoints(tmp_path / "b" / "checkpoints", keep=0).latest().name == "step-6.pt"
    resumed = train(config.load("pinnerformer_tiny", {**over, "max_steps": 14}), tiny_data, pin_table,
                    tmp_path / "b", resume=True, evaluate=False)
    assert straight["steps"] == resumed["steps"] == 14
    a, _, _ = load_model(tmp_path / "a")
    b, _, _ = load_model(tmp_path / "b")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(pa, pb, atol=1e-6), f"{name} differs after resume"
    log = [json.loads(line) for line in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "resume" and r["step"] == 6 for r in log)


def test_ddp_two_processes_identical_params(tiny_data, pin_table, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "components.cli", "train", "pinnerformer", "--nproc-per-node", "2",
           "--experiment", "pinnerformer_tiny", "--set", "max_steps=6", "--set", "epochs=1", "--data", str(tiny_data),
           "--pin-embeddings", str(pin_table), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["params_in_sync"] is True
    assert metrics["steps"] == 6
    model, _, _ = load_model(out)
    init = PinnerFormer(model_cfg := config.read_saved(out))
    assert model_cfg.pin_dim == 64
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), init.parameters()))  # it trained


def test_cli_train_and_bad_inputs(tiny_data, pin_table, tmp_path, capsys):
    from components.cli import main as cli_main

    out = tmp_path / "cli"
    rc = cli_main(["train", "pinnerformer", "--experiment", "pinnerformer_tiny", "--data", str(tiny_data),
                   "--pin-embeddings", str(pin_table), "--out", str(out), "--set", "max_steps=3", "--set", "epochs=1"])
    assert rc == 0 and (out / "model.pt").exists()
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3
    # a missing pin table and an unknown config key are clear errors (exit 2) naming what is wrong
    rc = cli_main(["train", "pinnerformer", "--experiment", "pinnerformer_tiny", "--data", str(tiny_data),
                   "--pin-embeddings", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "x")])
    assert rc == 2 and "nope.parquet" in capsys.readouterr().err
    rc = cli_main(["train", "pinnerformer", "--experiment", "pinnerformer_tiny", "--data", str(tiny_data),
                   "--pin-embeddings", str(pin_table), "--out", str(tmp_path / "x"), "--set", "d_modle=8"])
    assert rc == 2 and "unknown key 'd_modle'" in capsys.readouterr().err
