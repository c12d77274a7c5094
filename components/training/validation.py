"""Validation during training for the one loop (:func:`components.training.loop.fit`): what to evaluate and
when to stop (:class:`Validation`), the best value so far (:class:`Tracker`, checkpointed for resume), one
evaluation with its log record and best-weights checkpoint (:func:`validate`), and the configured features a
run ended before activating (:func:`never_activated`). Split from the loop so each file stays readable."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from components.models.checkpoint import save_checkpoint
from components.training.common import TrainLog


@dataclass
class Validation:
    """Validation during training: what to evaluate, how often, and when to stop.

    ``evaluate(model)`` runs on rank 0 with the saved module in eval mode under ``torch.no_grad()`` and returns
    the validation metric (None = undefined, never an improvement). ``every``: optimizer steps between
    evaluations (0 = at the end of every epoch); training always ends with one. ``patience``: evaluations
    in a row without an improvement of more than ``min_delta`` before training stops (0 = never stops early).
    ``report`` (optional, rank 0): called after each evaluation with (its index from 0, the value); True stops
    training there like early stopping (a tuning study's pruner, e.g. Optuna's, decides through it; the loop
    knows nothing of the study). ``metrics.json`` then says ``stopped_by_report``. None = no hook.
    """

    evaluate: Callable[[nn.Module], float | None]
    metric: str = "val_metric"
    direction: Literal["higher", "lower"] = "higher"
    every: int = 0
    patience: int = 0
    min_delta: float = 0.0
    report: Callable[[int, float | None], bool] | None = None

    def __post_init__(self) -> None:
        if self.direction not in ("higher", "lower"):
            raise ValueError(f"Validation: direction must be 'higher' or 'lower', got {self.direction!r}")
        if self.every < 0 or self.patience < 0 or self.min_delta < 0:
            raise ValueError(f"Validation: every ({self.every}), patience ({self.patience}) and min_delta "
                             f"({self.min_delta}) must be >= 0")


class Tracker:
    """The best validation value so far, its step and the evaluations since (checkpointed for resume)."""

    def __init__(self, v: Validation):
        self.v, self.best, self.best_step, self.bad, self.count = v, None, 0, 0, 0
        self.reported_stop = False  # the ``report`` hook asked to stop

    def improved(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.best is None:
            return True
        gain = value - self.best if self.v.direction == "higher" else self.best - value
        return gain > self.v.min_delta

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad, "count": self.count}

    def load(self, st: dict[str, Any]) -> None:
        self.best, self.best_step = st.get("best"), int(st.get("best_step", 0))
        self.bad, self.count = int(st.get("bad", 0)), int(st.get("count", 0))


def validate(v: Validation, tracker: Tracker, model: nn.Module, step: int, epoch: int, log: TrainLog,
              best_path: Path, cfg: Any, extra: dict[str, Any]) -> bool:
    """Rank 0: evaluate, log, keep the best weights in ``best_path``; True when patience has run out."""
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        value = v.evaluate(model)
    value = None if value is None or not math.isfinite(float(value)) else float(value)
    model.train(was_training)
    tracker.count += 1
    better = tracker.improved(value)
    if better:
        tracker.best, tracker.best_step, tracker.bad = value, step, 0
        save_checkpoint(best_path, model, None, step, cfg, extra)
    else:
        tracker.bad += 1
    stop = v.patience > 0 and tracker.bad >= v.patience
    hook: dict[str, Any] = {}
    if v.report is not None and v.report(tracker.count - 1, value):
        tracker.reported_stop = stop = True
        hook = {"stopped_by_report": True}
    log.log(event="validate", step=step, epoch=epoch, metric=v.metric, value=value, best=tracker.best,
            best_step=tracker.best_step, improved=better, stop=stop, seconds=round(time.perf_counter() - t0, 3),
            **hook)
    return stop


def never_activated(cfg: Any, validation: Validation | None, tracker: Tracker | None, early: bool) -> list[str]:
    """The loop's configured features that this run ended before activating (warned and listed in
    ``metrics.json: never_activated``): early stopping (``patience``) needs validation data, and patience + 1
    validations before it can stop a run (the first one always improves)."""
    if validation is None:
        patience = int(getattr(cfg, "patience", 0) or 0)
        return [f"early stopping: patience {patience} is configured but this run had no validation data (only the "
                "evaluation harness and homefeed tune pass one), so it trained every epoch and kept the last "
                "weights"] if patience > 0 else []
    if validation.patience > 0 and not early and tracker is not None and tracker.count <= validation.patience:
        return [f"early stopping: patience {validation.patience} needs {validation.patience + 1} validations to stop "
                f"a run, this one had {tracker.count} (epochs {cfg.epochs}, max_steps {cfg.max_steps}, validation "
                f"every {validation.every or 'epoch'}{' steps' if validation.every else ''}): it could not stop it"]
    return []
