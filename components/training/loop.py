"""One training loop for every model: ``fit(task, out_dir, resume)``.

The loop owns what the models share (FuxiCTR's one ``fit`` for many models): seeding, the torchrun/gloo
process group (torn down in ``finally``, always), DDP, resume from the latest checkpoint after checking
that its config matches this run's, stale checkpoints of an older run cleared on a fresh run, checkpoint
rotation (``checkpoint_every`` steps, the last ``keep_checkpoints`` kept; 0 = none / all), one log schema
(``train_log.jsonl``: every record has ``event`` in start | resume | step | done) and one set of metric
names (``steps``, ``final_loss``, ``world_size``, ``train_seconds``, ``train_examples_per_s``,
``params_in_sync``, ``parameters``, ``data_wait_s``, ``compute_s``, ``data_wait_fraction``,
``steady_data_wait_fraction``, plus what the task's ``finish`` adds).

A model supplies a :class:`TrainTask` (build, batches, loss, checkpoint extras); see
``docs/interfaces.md`` for a ten-line example. Position in training is (epoch, batch): a task's
``batches(epoch, start)`` must depend only on (seed, rank, epoch), so a resumed run sees exactly the
minibatches an uninterrupted one would have seen.

Output directory: ``model.pt`` (weights + config + ``task.model_extra()``, no optimizer), ``config.yaml``,
``checkpoints/step-N.pt``, ``train_log.jsonl``, ``metrics.json``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from components import config as config_mod
from components.data import io
from components.models.checkpoint import CheckpointError, read_checkpoint, save_checkpoint, set_rng_state
from components.training.common import (
    DistInfo,
    StepTimer,
    TrainLog,
    init_distributed,
    params_equal_across_ranks,
    seed_everything,
)

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
            log: TrainLog) -> tuple[int, int, int]:
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
    step, epoch, batch = int(state["step"]), int(position["epoch"]), int(position["batch"])
    log.log(event="resume", checkpoint=str(latest), step=step, epoch=epoch, batch=batch)
    return step, epoch, batch


def fit(task: TrainTask, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train ``task`` into ``out_dir``; under torchrun every rank calls this, rank 0 writes. Returns the metrics
    (the task's ``finish`` metrics only on rank 0)."""
    cfg, out_dir = task.cfg, Path(out_dir)
    info = init_distributed()
    try:
        t0 = time.perf_counter()
        seed_everything(cfg.seed)
        task.setup(info)
        model = task.build_model()
        opt = task.optimizer(model)
        ckpts = Checkpoints(out_dir / "checkpoints", cfg.keep_checkpoints)
        log = TrainLog(out_dir / "train_log.jsonl", info)
        if not resume and info.is_main:  # a fresh run: no older run's checkpoint to resume from later, a new log
            ckpts.clear()
            (out_dir / "train_log.jsonl").unlink(missing_ok=True)
        if info.enabled:
            dist.barrier()
        step, epoch0, batch0 = _resume(task, ckpts, model, opt, log) if resume else (0, 0, 0)
        if info.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            config_mod.save(cfg, out_dir)
        module = task.train_module(model)
        ddp = DistributedDataParallel(module) if info.enabled else module
        log.log(event="start", model=task.name, step=step, epoch=epoch0, world_size=info.world_size,
                prep_seconds=round(time.perf_counter() - t0, 3), resumed=step > 0, **task.start_record())

        def extra(epoch: int, batch: int) -> dict[str, Any]:
            return {**task.model_extra(), "loop": {"epoch": epoch, "batch": batch}, "task": task.state()}

        timer, steady, losses, examples, t_train = StepTimer(), StepTimer(), [], 0, time.perf_counter()
        epoch, batch, stop = epoch0, batch0, bool(cfg.max_steps) and step >= cfg.max_steps
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
                examples += task.count(data)
                losses.append(float(loss.detach()))
                if step % cfg.log_every == 0:
                    log.log(event="step", step=step, epoch=epoch, loss=round(float(np.mean(losses[-cfg.log_every:])), 5),
                            **values, **timer.as_dict())
                stop = bool(cfg.max_steps) and step >= cfg.max_steps
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
                if cfg.checkpoint_every and epoch == cfg.epochs and info.is_main and ckpts.latest() != \
                        ckpts.folder / f"step-{step}.pt":
                    ckpts.save(model, opt, step, cfg, extra(epoch, 0))
        train_seconds = time.perf_counter() - t_train
        in_sync = params_equal_across_ranks(model) if info.enabled else True  # a collective: every rank
        metrics: dict[str, Any] = {
            "steps": step, "final_loss": float(np.mean(losses[-20:])) if losses else None,
            "world_size": info.world_size, "train_seconds": round(train_seconds, 3), "params_in_sync": in_sync,
            "train_examples_per_s": round(examples * info.world_size / max(train_seconds, 1e-9), 1),
            "parameters": sum(p.numel() for p in model.parameters()), **timer.as_dict(),
            "steady_data_wait_fraction": steady.as_dict()["data_wait_fraction"]}
        if info.is_main:
            model.eval()
            save_checkpoint(out_dir / "model.pt", model, None, step, cfg, extra(epoch, batch))
            metrics.update(task.finish(model))
            io.atomic_write_json(metrics, out_dir / "metrics.json")
            log.log(event="done", **{k: v for k, v in metrics.items() if isinstance(v, int | float | None)})
        if info.enabled:
            dist.barrier()
        return metrics
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
