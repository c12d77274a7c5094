"""One training loop for every model: ``fit(task, out_dir, resume)``.

The loop owns what the models share (FuxiCTR's one ``fit`` for many models): seeding, the torchrun/gloo
process group (torn down in ``finally``, always), DDP, resume from the latest checkpoint after checking
that its config matches this run's, stale checkpoints of an older run cleared on a fresh run, checkpoint
rotation (``checkpoint_every`` steps, the last ``keep_checkpoints`` kept; 0 = none / all), one log schema
(``train_log.jsonl``: every record has ``event`` in start | resume | step | done) and one set of metric
names (``steps``, ``final_loss``, ``world_size``, ``train_seconds``, ``train_examples_per_s``,
``params_in_sync``, ``parameters``, ``data_wait_s``, ``compute_s``, ``data_wait_fraction``,
``steady_data_wait_fraction``, plus what the task's ``finish`` adds).

Validation (optional, :class:`Validation`): ``fit(..., validation=Validation(evaluate, metric, ...))`` evaluates
the model on rank 0 every ``every`` steps (0 = at the end of every epoch) and at the end of training, writes an
``event: validate`` record per evaluation, keeps the best weights in ``best.pt`` (and saves them as
``model.pt`` at the end: the model that is published is the best one seen on the validation data), and stops
early after ``patience`` evaluations without improvement (0 = never). ``metrics.json`` then adds
``best_step``, ``best_<metric>``, ``validations`` and ``stopped_early``. A configured feature the run ended
before activating (early stopping without validation data, or with fewer than ``patience`` + 1 validations) is
warned once and listed in ``metrics.json: never_activated`` (:mod:`components.training.validation`). A step bar is drawn through
:mod:`components.progress` on rank 0 (off when stderr is not a terminal).

A model supplies a :class:`TrainTask` (build, batches, loss, checkpoint extras); see
``docs/interfaces.md`` for a ten-line example. Position in training is (epoch, batch): a task's
``batches(epoch, start)`` must depend only on (seed, rank, epoch), so a resumed run sees exactly the
minibatches an uninterrupted one would have seen.

Output directory: ``model.pt`` (weights + config + ``task.model_extra()``, no optimizer), ``config.yaml``,
``checkpoints/step-N.pt``, ``train_log.jsonl``, ``metrics.json`` and, with validation, ``best.pt``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from components import config as config_mod
from components.data import durable
from components.models.checkpoint import CheckpointError, read_checkpoint, save_checkpoint, set_rng_state
from components.progress import Progress
from components.training.common import (
    DistInfo,
    StepTimer,
    TrainLog,
    init_distributed,
    params_equal_across_ranks,
    seed_everything,
)
from components.training.validation import Tracker, Validation, never_activated, validate

# config keys a resumed run may change (how long, how often, how fast); any other difference is an error
RESUMABLE_KEYS = frozenset({"experiment", "epochs", "max_steps", "checkpoint_every", "keep_checkpoints",
                            "log_every", "num_workers", "prefetch_factor", "eval_batch_size", "eval_pool",
                            "eval_max_queries", "inference_chunk"})


class TrainTask:
    """What one model contributes to :func:`fit`. Subclasses override the methods marked "required".

    ``cfg`` needs ``seed``, ``epochs``, ``max_steps``, ``checkpoint_every``, ``keep_checkpoints``,
    ``log_every``. ``setup`` runs on every rank after seeding; everything else after it.
    """

    name = "model"

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.info = DistInfo()

    def setup(self, info: DistInfo) -> None:
        """Read the data this rank trains on (required when the task reads data)."""
        self.info = info

    def build_model(self) -> nn.Module:
        """The module whose weights are saved (required)."""
        raise NotImplementedError

    def train_module(self, model: nn.Module) -> nn.Module:
        """The module DDP wraps (default: the model; PinnerFormer wraps both towers in one forward)."""
        return model

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def batches(self, epoch: int, start: int) -> Iterable[Any]:
        """This rank's minibatches of ``epoch`` from index ``start`` on (required)."""
        raise NotImplementedError

    def loss(self, module: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """(scalar loss, values for the step log) of one minibatch (required)."""
        raise NotImplementedError

    def count(self, batch: Any) -> int:
        """Training examples in one minibatch (for ``train_examples_per_s``)."""
        return 0

    def steps_per_epoch(self) -> int | None:
        """Minibatches per epoch on this rank when known before the epoch runs (the progress bar's total)."""
        return None

    def state(self) -> dict[str, Any]:
        """Task state a resumed run needs beside weights/optimizer/RNG (tensors and plain values)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`."""

    def start_record(self) -> dict[str, Any]:
        """Extra fields of the ``start`` log record (sizes of the data)."""
        return {}

    def model_extra(self) -> dict[str, Any]:
        """What inference needs beside the weights, saved in ``model.pt`` and every checkpoint."""
        return {}

    def finish(self, model: nn.Module) -> dict[str, Any]:
        """Rank 0, after training: metrics to add (e.g. evaluation on held-out data)."""
        return {}


def config_mismatch(saved: dict[str, Any], cfg: Any) -> list[str]:
    """``key: checkpoint value != this run's`` for every key that differs and may not change on resume."""
    now = config_mod.to_dict(cfg)
    keys = sorted((set(saved) | set(now)) - RESUMABLE_KEYS)
    return [f"{k}: {saved.get(k)!r} != {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


class Checkpoints:
    """``step-N.pt`` files in one folder: the latest, rotation to the last ``keep`` (0 = keep all), clearing."""

    def __init__(self, folder: Path, keep: int):
        self.folder, self.keep = folder, keep

    def all(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))

    def latest(self) -> Path | None:
        found = self.all()
        return found[-1] if found else None

    def save(self, model: nn.Module, opt: torch.optim.Optimizer, step: int, cfg: Any, extra: dict[str, Any]) -> None:
        save_checkpoint(self.folder / f"step-{step}.pt", model, opt, step, cfg, extra)
        if self.keep > 0:
            for old in self.all()[:-self.keep]:
                old.unlink(missing_ok=True)

    def clear(self) -> None:
        for old in self.all():
            old.unlink()


def _resume(task: TrainTask, ckpts: Checkpoints, model: nn.Module, opt: torch.optim.Optimizer,
            log: TrainLog, tracker: Tracker | None) -> tuple[int, int, int]:
    """Load the latest checkpoint (config checked first); return (step, epoch, batch) to continue from."""
    latest = ckpts.latest()
    if latest is None:
        return 0, 0, 0
    state = read_checkpoint(latest)
    diff = config_mismatch(state.get("config") or {}, task.cfg)
    if diff:
        raise CheckpointError(f"{latest}: cannot resume, the checkpoint was written with another config "
                              f"({'; '.join(diff)}); use the same config, or train without --resume to start over")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    position = state["extra"]["loop"]
    task.load_state(state["extra"].get("task", {}))
    if tracker is not None:
        tracker.load(position.get("validation") or {})
    step, epoch, batch = int(state["step"]), int(position["epoch"]), int(position["batch"])
    log.log(event="resume", checkpoint=str(latest), step=step, epoch=epoch, batch=batch)
    return step, epoch, batch


def _agree(flag: bool, info: DistInfo) -> bool:
    """Rank 0's decision, on every rank (a broadcast under torchrun)."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)])
    dist.broadcast(t, 0)
    return bool(t.item())


def fit(task: TrainTask, out_dir: str | Path, resume: bool = False,
        validation: Validation | None = None) -> dict[str, Any]:
    """Train ``task`` into ``out_dir``; under torchrun every rank calls this, rank 0 writes. Returns the metrics
    (the task's ``finish`` metrics only on rank 0). ``validation``: evaluate during training, keep the best
    weights and stop early (:class:`Validation`)."""
    cfg, out_dir = task.cfg, Path(out_dir)
    info = init_distributed()
    bar: Progress | None = None
    try:
        t0 = time.perf_counter()
        seed_everything(cfg.seed)
        task.setup(info)
        model = task.build_model()
        opt = task.optimizer(model)
        ckpts = Checkpoints(out_dir / "checkpoints", cfg.keep_checkpoints)
        log = TrainLog(out_dir / "train_log.jsonl", info)
        best_path = out_dir / "best.pt"
        tracker = Tracker(validation) if validation is not None else None
        if not resume and info.is_main:  # a fresh run: no older run's checkpoint to resume from later, a new log
            ckpts.clear()
            best_path.unlink(missing_ok=True)
            (out_dir / "train_log.jsonl").unlink(missing_ok=True)
        if info.enabled:
            dist.barrier()
        step, epoch0, batch0 = _resume(task, ckpts, model, opt, log, tracker) if resume else (0, 0, 0)
        if info.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            config_mod.save(cfg, out_dir)
        module = task.train_module(model)
        ddp = DistributedDataParallel(module) if info.enabled else module
        log.log(event="start", model=task.name, step=step, epoch=epoch0, world_size=info.world_size,
                prep_seconds=round(time.perf_counter() - t0, 3), resumed=step > 0, **task.start_record())

        def extra(epoch: int, batch: int) -> dict[str, Any]:
            loop = {"epoch": epoch, "batch": batch, **({"validation": tracker.state()} if tracker else {})}
            return {**task.model_extra(), "loop": loop, "task": task.state()}

        def check(epoch: int, batch: int) -> bool:
            """Validate on rank 0 (when a validation is given); True on every rank when training should stop."""
            if validation is None:
                return False
            stop = info.is_main and validate(validation, tracker, model, step, epoch, log, best_path, cfg,
                                              extra(epoch, batch))
            return _agree(stop, info)

        per_epoch = task.steps_per_epoch()
        total = cfg.max_steps or (cfg.epochs * per_epoch if per_epoch else None)
        timer, steady, losses, examples, t_train = StepTimer(), StepTimer(), [], 0, time.perf_counter()
        epoch, batch, stop = epoch0, batch0, bool(cfg.max_steps) and step >= cfg.max_steps
        validated_at, early = -1, False
        # the step bar: rank 0 only (other ranks count into a buffer that is never a terminal)
        bar = Progress(total=total, desc=f"train {task.name}", unit="step", file=None if info.is_main else StringIO())
        bar.__enter__()
        bar.update(step)
        while epoch < cfg.epochs and not stop:
            timer._t, steady._t, start = time.perf_counter(), time.perf_counter(), batch
            for batch, data in enumerate(task.batches(epoch, start), start=start):
                timer.data_ready()
                if batch > start:  # "steady": without each epoch's first batch (loader start-up)
                    steady.data_ready()
                ddp.train()
                loss, values = task.loss(ddp, data, step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                timer.step_done()
                if batch > start:
                    steady.step_done()
                else:
                    steady._t = time.perf_counter()
                step += 1
                bar.update(1)
                examples += task.count(data)
                losses.append(float(loss.detach()))
                if step % cfg.log_every == 0:
                    log.log(event="step", step=step, epoch=epoch, loss=round(float(np.mean(losses[-cfg.log_every:])), 5),
                            **values, **timer.as_dict())
                stop = bool(cfg.max_steps) and step >= cfg.max_steps
                if validation is not None and validation.every and step % validation.every == 0:
                    validated_at, early = step, check(epoch, batch + 1)
                    stop = stop or early
                if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or stop):
                    if info.is_main:
                        ckpts.save(model, opt, step, cfg, extra(epoch, batch + 1))
                    if info.enabled:
                        dist.barrier()
                if stop:
                    batch += 1
                    break
            else:
                epoch, batch = epoch + 1, 0
                if validation is not None and not validation.every and validated_at != step:
                    validated_at, early = step, check(epoch, 0)
                    stop = early
                if cfg.checkpoint_every and (epoch == cfg.epochs or stop) and info.is_main and ckpts.latest() != \
                        ckpts.folder / f"step-{step}.pt":
                    ckpts.save(model, opt, step, cfg, extra(epoch, 0))
        bar.close()
        if validation is not None and validated_at != step:  # the final weights are always a candidate
            check(epoch, batch)
        train_seconds = time.perf_counter() - t_train
        in_sync = params_equal_across_ranks(model) if info.enabled else True  # a collective: every rank
        metrics: dict[str, Any] = {
            "steps": step, "final_loss": float(np.mean(losses[-20:])) if losses else None,
            "world_size": info.world_size, "train_seconds": round(train_seconds, 3), "params_in_sync": in_sync,
            "train_examples_per_s": round(examples * info.world_size / max(train_seconds, 1e-9), 1),
            "parameters": sum(p.numel() for p in model.parameters()), **timer.as_dict(),
            "steady_data_wait_fraction": steady.as_dict()["data_wait_fraction"]}
        if info.is_main:
            if tracker is not None:
                metrics.update({"best_step": tracker.best_step, f"best_{validation.metric}": tracker.best,
                                "validations": tracker.count, "stopped_early": early})
                if validation.report is not None:
                    metrics["stopped_by_report"] = tracker.reported_stop
                if tracker.best is not None and best_path.exists():  # publish the best weights, not the last
                    model.load_state_dict(read_checkpoint(best_path)["model"])
            model.eval()
            save_checkpoint(out_dir / "model.pt", model, None, step, cfg, extra(epoch, batch))
            metrics.update(task.finish(model))
            never = never_activated(cfg, validation, tracker, early)
            for text in never:  # once per run, on rank 0, as PinSage's hard-negative warning
                warnings.warn(f"{task.name}: {text}", stacklevel=2)
            if never:
                metrics["never_activated"] = never
            durable.atomic_write_json(metrics, out_dir / "metrics.json")
            log.log(event="done", **{k: v for k, v in metrics.items() if isinstance(v, int | float | None)})
        if info.enabled:
            dist.barrier()
        return metrics
    finally:
        if bar is not None:
            bar.close()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
