"""components/training/loop.py: the one fit() — log schema, metric names, checkpoint rotation, checkpoint_every 0,
exact resume, config check on resume, stale checkpoints cleared, process-group teardown on failure, validation
(best weights kept and published, early stopping with patience, resumed with its state), the step bar — and the
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
from components.training.loop import TrainTask, Validation, fit

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


class Scripted:
    """A validation metric that returns the given values in turn (the tracking logic is what is tested) and
    records the weights it saw each time."""

    def __init__(self, values):
        self.values, self.seen = list(values), []

    def __call__(self, model):
        assert not model.training and not torch.is_grad_enabled()  # fit evaluates in eval mode, no grad
        self.seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return self.values.pop(0)


def read_log(folder):
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def test_validation_keeps_the_best_weights_and_stops_after_patience(tmp_path):
    ev = Scripted([0.5, 0.7, 0.6, 0.65, float("nan"), 0.9])
    v = Validation(ev, metric="val_score", direction="higher", every=4, patience=3)
    m = fit(ToyTask(cfg()), tmp_path / "v", validation=v)
    # validations at 4, 8 (best), 12, 16, 20 (NaN: undefined, not an improvement): 3 without improvement -> stop
    assert m["steps"] == 20 and m["stopped_early"] is True and m["validations"] == 5
    assert m["best_step"] == 8 and m["best_val_score"] == 0.7
    recs = [r for r in read_log(tmp_path / "v") if r["event"] == "validate"]
    assert [(r["step"], r["value"], r["improved"], r["stop"]) for r in recs] == [
        (4, 0.5, True, False), (8, 0.7, True, False), (12, 0.6, False, False), (16, 0.65, False, False),
        (20, None, False, True)]
    published, best = weights(tmp_path / "v"), read_checkpoint(tmp_path / "v" / "best.pt")["model"]
    assert all(torch.equal(published[k], best[k]) and torch.equal(best[k], ev.seen[1][k]) for k in best)
    assert not all(torch.equal(published[k], ev.seen[-1][k]) for k in best)  # not the last weights
    assert json.loads((tmp_path / "v" / "metrics.json").read_text())["best_step"] == 8


def test_validation_every_epoch_lower_is_better_and_a_real_metric(tmp_path):
    x = torch.from_numpy(np.random.default_rng(5).normal(size=(32, 4)).astype(np.float32))  # held-out rows
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def val_mse(model):
        return float(((model(x)[:, 0] - y) ** 2).mean())

    m = fit(ToyTask(cfg()), tmp_path / "e", validation=Validation(val_mse, "val_mse", "lower", every=0))
    recs = [r for r in read_log(tmp_path / "e") if r["event"] == "validate"]
    assert [r["step"] for r in recs] == [8, 16, 24] and m["stopped_early"] is False  # patience 0: never stops
    assert m["best_val_mse"] == min(r["value"] for r in recs)
    model = ToyTask(cfg()).build_model()
    model.load_state_dict(weights(tmp_path / "e"))
    model.eval()
    with torch.no_grad():
        assert val_mse(model) == pytest.approx(m["best_val_mse"], rel=1e-6)  # model.pt is the best-scoring model


def test_validation_state_is_resumed_and_a_fresh_run_drops_the_old_best(tmp_path):
    part = tmp_path / "p"
    fit(ToyTask(cfg(max_steps=8)), part, validation=Validation(Scripted([0.9, 0.1]), every=4, patience=2))
    resumed = fit(ToyTask(cfg()), part, resume=True, validation=Validation(Scripted([0.2, 0.3]), every=4, patience=2))
    # the best (0.9 at step 4) survived the resume; 8 (0.1), 12, 16 (0.2, 0.3) are no better: patience 2 after 12
    assert resumed["best_step"] == 4 and resumed["best_val_metric"] == 0.9 and resumed["steps"] == 12
    fit(ToyTask(cfg(max_steps=4)), part)  # a fresh run without validation: no stale best.pt left behind
    assert not (part / "best.pt").exists()


def test_the_step_bar_is_drawn_only_when_enabled(tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("HOMEFEED_PROGRESS", raising=False)
    monkeypatch.delenv("HOMEFEED_QUIET", raising=False)
    fit(ToyTask(cfg(max_steps=4)), tmp_path / "quiet")
    assert "train toy" not in capfd.readouterr().err  # stderr is not a terminal under pytest: no bar
    monkeypatch.setenv("HOMEFEED_PROGRESS", "1")
    fit(ToyTask(cfg(max_steps=4)), tmp_path / "bar")
    err = capfd.readouterr().err
    assert "train toy" in err and "/4 [" in err  # the bar, with the run's 4 steps as its total


def test_the_report_hook_stops_a_run_and_early_stopping_that_could_not_fire_warns(tmp_path):
    """Validation.report (a tuning study's pruner) sees (index, value) after each validation and stops the run when it
    returns True; early stopping that could never fire (no validation data, or at most `patience` validations)
    warns once and is listed in metrics.json's never_activated."""
    seen = []

    def report(index, value):
        seen.append((index, value))
        return index == 1

    v = Validation(Scripted([0.5, 0.7, 0.9, 1.0]), every=4, patience=3, report=report)
    m = fit(ToyTask(cfg()), tmp_path / "r", validation=v)
    assert seen == [(0, 0.5), (1, 0.7)] and m["steps"] == 8 and m["stopped_by_report"] is True
    recs = [r for r in read_log(tmp_path / "r") if r["event"] == "validate"]
    assert [r.get("stopped_by_report") for r in recs] == [None, True] and "never_activated" not in m
    assert "stopped_by_report" not in fit(ToyTask(cfg(max_steps=4)), tmp_path / "plain",
                                          validation=Validation(Scripted([0.5]), every=4))  # no hook: as before
    with pytest.warns(UserWarning, match="patience 3 needs 4 validations to stop a run, this one had 3"):
        m = fit(ToyTask(cfg()), tmp_path / "short", validation=Validation(Scripted([0.1, 0.2, 0.3]), patience=3))
    assert len(m["never_activated"]) == 1 and m["validations"] == 3
    assert json.loads((tmp_path / "short" / "metrics.json").read_text())["never_activated"] == m["never_activated"]
    with pytest.warns(UserWarning, match="patience 2 is configured but this run had no validation data"):
        m = fit(ToyTask(cfg(patience=2, max_steps=2)), tmp_path / "none")
    assert "no validation data" in m["never_activated"][0]
