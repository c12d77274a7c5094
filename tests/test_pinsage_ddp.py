"""PinSage under a real ``torchrun --nproc_per_node=2`` (gloo): each rank its shard, identical parameters after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from components import config
from components.models.pinsage import load_model
from components.training.pinsage import prepare_inputs

REPO = Path(__file__).resolve().parents[1]


def test_two_process_ddp_training_keeps_ranks_identical(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "components.cli", "train", "pinsage", "--experiment", "pinsage_tiny",
           "--data", str(tiny_data), "--out", str(out), "--nproc-per-node", "2",
           "--set", "max_steps=6", "--set", "log_every=2", "--set", "checkpoint_every=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "torch.distributed.run" in proc.stdout and "--nproc_per_node=2" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 6
    assert metrics["params_in_sync"] is True
    # each rank trained on half the pairs
    total = len(prepare_inputs(config.load("pinsage_tiny"), tiny_data)["pairs"])
    assert metrics["pairs_per_rank"] == total // 2
    assert (out / "checkpoints" / "step-3.pt").exists() and (out / "checkpoints" / "step-6.pt").exists()
    # the model moved away from its initialisation (same seed) and is usable
    model, cfg, _ = load_model(out)
    torch.manual_seed(cfg.seed)
    from components.models.pinsage import PinSage

    init = PinSage(cfg)
    assert not torch.equal(init.head.net[0].weight, model.head.net[0].weight)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "step"] == [2, 4, 6]
    assert all(np.isfinite(r["loss"]) for r in log if r["event"] == "step")
