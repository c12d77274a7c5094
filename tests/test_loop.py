"""components/training/loop.py: the one fit() — log schema, metric names, checkpoint rotation, checkpoint_every 0,
exact resume, config check on resume, stale checkpoints cleared, process-group teardown on failure — and the
safe checkpoint reader (models/checkpoint.py) refusing pickled objects.

A small real task (a two-layer regression with dropout, so the RNG state matters) runs through the same loop
the three models use; each test trains a few dozen steps of a 4 -> 8 -> 1 network."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from components import config
from components.models.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from components.training.loop import TrainTask, fit

METRICS = {"steps", "final_loss", "world_size", "train_seconds", "train_examples_per_s", "params_in_sync",
           "parameters", "data_wait_s", "compute_s", "data_wait_fraction", "steady_data_wait_fraction"}


class ToyTask(TrainTask):
    """y = x @ w on 64 fixed rows, 8 rows per batch, a seeded permutation per epoch."""

    name = "toy"

    def __init__(self, cfg, fail_at: int = -1):
        super().__init__(cfg)
        self.fail_at = fail_at
        self.seen = 0

    def setup(self, info) -> None:
        super().setup(info)
        x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
        self.x = torch.from_numpy(x)  # (64, 4)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])  # (64,)

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 1))

    def batches(self, epoch: int, start: int):
        perm = np.random.default_rng([self.cfg.seed, epoch]).permutation(64)
        for i in range(start * 8, 64, 8):
            yield self.x[perm[i:i + 8]], self.y[perm[i:i + 8]]

    def loss(self, module, batch, step):
        if step == self.fail_at:
            raise RuntimeError(f"toy failure at step {step}")
        x, y = batch
        self.seen += len(x)
        return ((module(x)[:, 0] - y) ** 2).mean(), {"rows": len(x)}

    def count(self, batch) -> int:
        return len(batch[0])

    def state(self):
        return {"seen": self.seen}

    def load_state(self, state) -> None:
        self.seen = int(state["seen"])

    def finish(self, model):
        return {"rows_seen": self.seen}


def cfg(**kw):
    return config.load("ranker_tiny", {"epochs": 3, "lr": 0.01, "log_every": 4, "checkpoint_every": 4,
                                       "keep_checkpoints": 2, "max_steps": 0, **kw})


def steps_of(folder):
    return sorted(int(p.stem.split("-")[1]) for p in (folder / "checkpoints").glob("step-*.pt"))


def weights(folder):
    return read_checkpoint(folder / "model.pt")["model"]


def test_fit_writes_one_log_schema_metric_names_and_rotates_checkpoints(tmp_path):
    m = fit(ToyTask(cfg()), tmp_path / "a")
    assert METRICS <= set(m) and m["steps"] == 24 and m["params_in_sync"] is True and m["rows_seen"] == 192
    for name in ("model.pt", "config.yaml", "metrics.json", "train_log.jsonl"):
        assert (tmp_path / "a" / name).exists(), name
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert all("event" in r for r in log)
    assert [r["event"] for r in log][0] == "start" and log[-1]["event"] == "done"
    assert [r["step"] for r in log if r["event"] == "step"] == [4, 8, 12, 16, 20, 24]
    assert steps_of(tmp_path / "a") == [20, 24]  # keep_checkpoints 2
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["steps"] == 24
    assert read_checkpoint(tmp_path / "a" / "model.pt")["optimizer"] is None

    fit(ToyTask(cfg(keep_checkpoints=0)), tmp_path / "all")
    assert steps_of(tmp_path / "all") == [4, 8, 12, 16, 20, 24]  # 0 keeps every checkpoint
    m = fit(ToyTask(cfg(checkpoint_every=0, max_steps=7)), tmp_path / "none")
    assert m["steps"] == 7 and steps_of(tmp_path / "none") == []  # 0: no checkpoints, no division by zero
    assert (tmp_path / "none" / "model.pt").exists()


def test_resume_is_exact_and_a_fresh_run_clears_an_older_runs_checkpoints(tmp_path):
    fit(ToyTask(cfg()), tmp_path / "full")
    part = tmp_path / "part"
    fit(ToyTask(cfg(max_steps=10)), part)  # "killed" after step 10 (checkpoints 8 and 10)
    assert steps_of(part) == [8, 10]
    resumed = fit(ToyTask(cfg()), part, resume=True)
    assert resumed["steps"] == 24 and resumed["rows_seen"] == 192  # the task's state came back too
    a, b = weights(tmp_path / "full"), weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (part / "train_log.jsonl").read_text().splitlines()]
    assert [(r["event"], r["step"]) for r in log if r["event"] in ("start", "resume")] == \
        [("start", 0), ("resume", 10), ("start", 10)]

    # a fresh run in the same folder starts over: the older run's step-24 must not be resumed later
    fit(ToyTask(cfg(max_steps=4, seed=1)), part)
    assert steps_of(part) == [4]
    assert [json.loads(line)["event"] for line in (part / "train_log.jsonl").read_text().splitlines()][0] == "start"


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    fit(ToyTask(cfg(max_steps=8)), tmp_path / "r")
    with pytest.raises(CheckpointError, match=r"step-8.pt: cannot resume.*lr: 0.01 != 0.02"):
        fit(ToyTask(cfg(lr=0.02)), tmp_path / "r", resume=True)
    m = fit(ToyTask(cfg(max_steps=12, log_every=1)), tmp_path / "r", resume=True)  # length/logging may change
    assert m["steps"] == 12


def test_the_process_group_is_torn_down_when_training_fails(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    assert dist.is_initialized()
    with pytest.raises(RuntimeError, match="toy failure at step 3"):
        fit(ToyTask(cfg(), fail_at=3), tmp_path / "f")
    assert not dist.is_initialized()


class Payload:
    """Any class instance: unpickling it would run code chosen by whoever wrote the file."""


@pytest.mark.parametrize("evil", [Payload(), np.zeros(3), os.system])
def test_checkpoints_holding_pickled_objects_are_refused(tmp_path, evil):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "step": 0, "config": {}, "extra": {"x": evil}}, path)
    with pytest.raises(CheckpointError, match="evil.pt: refused to load: the file holds pickled objects"):
        read_checkpoint(path)
    ok = save_checkpoint(tmp_path / "ok.pt", nn.Linear(2, 1), None, 3, cfg(), {"note": "plain"})
    state = read_checkpoint(ok)
    assert state["step"] == 3 and state["extra"] == {"note": "plain"} and state["config"]["experiment"] == "ranker_tiny"
