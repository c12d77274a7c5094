"""Training the homefeed ranker: weighted binary cross-entropy over K tasks on the data layer's impressions.

Training rows are impressions before ``meta["split_timestamp"]``, evaluation rows the ones after. Dense
features are normalised with statistics of the training rows (saved with the model and exported for
serving); user and pin embeddings are joined from embedding tables (None -> the content baseline).
Runs alone or under ``torchrun --nproc_per_node=2`` (gloo DDP; each rank takes its shard of every epoch's
permutation); checkpoints every ``checkpoint_every`` steps and resumes from the latest.

    python -m components.training.ranker --experiment ranker_tiny --data DIR --out MODEL_DIR [--resume]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as fn

from components import config as config_mod
from components.config import RankerConfig
from components.data import io
from components.data.schemas import SURFACES
from components.data.validate import DataValidationError, load_table
from components.inference.tables import EmbeddingTable, VersionedStore, read_table
from components.models.ranker import FeatureSpec, Ranker
from components.serving.ranker_io import clamp_sparse, clamp_surface, normalize_dense
from components.training import common
from components.training.metrics import auc, hit_at_k

EmbeddingSource = str | Path | EmbeddingTable | None


@dataclass
class RankerData:
    """Model-ready arrays for a set of impressions (inputs in ranker_io.MODEL_INPUTS order)."""

    dense: np.ndarray  # (n, N) float32, normalised
    sparse: np.ndarray  # (n, S) int64
    surface: np.ndarray  # (n, 1) int64
    user: np.ndarray  # (n, D_user) float32
    pin: np.ndarray  # (n, D_pin) float32
    labels: np.ndarray  # (n, K) float32
    request_id: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, rows: np.ndarray | slice | None = None) -> tuple[torch.Tensor, ...]:
        rows = slice(None) if rows is None else rows
        return tuple(torch.from_numpy(np.ascontiguousarray(a[rows]))
                     for a in (self.dense, self.sparse, self.surface, self.user, self.pin))

    def subset(self, rows: np.ndarray) -> RankerData:
        return RankerData(*(a[rows] for a in (self.dense, self.sparse, self.surface, self.user, self.pin,
                                             self.labels, self.request_id)))


def read_embeddings(source: EmbeddingSource) -> EmbeddingTable | None:
    """An embedding table from a table file, a directory holding one, or a VersionedStore root (CURRENT)."""
    if source is None or isinstance(source, EmbeddingTable):
        return source
    path = Path(source)
    if (path / "CURRENT").exists():
        return VersionedStore(path).read()
    return read_table(path)


def embedding_tables(data_dir: str | Path, user_embeddings: EmbeddingSource = None,
                     pin_embeddings: EmbeddingSource = None) -> tuple[EmbeddingTable, EmbeddingTable]:
    """(user table, pin table); a missing one is taken from the content baseline."""
    users, pins = read_embeddings(user_embeddings), read_embeddings(pin_embeddings)
    if users is None or pins is None:
        from components.inference.baseline import content_embeddings

        base_pins, base_users = content_embeddings(data_dir)
        users = users if users is not None else base_users
        pins = pins if pins is not None else base_pins
    return users, pins


def feature_spec(meta: dict[str, Any], users: EmbeddingTable, pins: EmbeddingTable) -> FeatureSpec:
    sparse = dict(meta["sparse_features"])
    return FeatureSpec(dense=list(meta["dense_features"]), sparse=list(sparse), cardinalities=[int(c) for c in sparse.values()],
                       user_dim=users.dim, pin_dim=pins.dim, user_features=list(meta.get("user_features", [])),
                       pin_features=list(meta.get("pin_features", [])))


def load_impressions(data_dir: str | Path, spec: FeatureSpec, tasks: list[str]) -> pd.DataFrame:
    """All impressions, checked to hold every feature and label column the ranker needs."""
    df = load_table(data_dir, "impressions")
    where = Path(data_dir) / "impressions"
    needed = spec.dense + spec.sparse + [f"label_{t}" for t in tasks]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataValidationError([f"{where}: missing column(s) {missing}; meta.json and the ranker tasks "
                                   f"{tasks} expect them (have {sorted(df.columns)})"])
    return df.sort_values(["timestamp", "request_id"], kind="stable").reset_index(drop=True)


def dense_stats(df: pd.DataFrame, spec: FeatureSpec) -> tuple[list[float], list[float]]:
    x = df[spec.dense].to_numpy(np.float64)
    return x.mean(0).tolist(), x.std(0).tolist()


def to_arrays(df: pd.DataFrame, spec: FeatureSpec, tasks: list[str], mean: list[float], std: list[float],
              users: EmbeddingTable, pins: EmbeddingTable) -> tuple[RankerData, dict[str, int]]:
    """Impressions -> model inputs exactly as serving builds them (ranker_io's normalisation and clamps)."""
    surface = pd.Categorical(df["surface"], categories=list(SURFACES)).codes.astype(np.int64)
    user, user_found = users.lookup(df["user_id"].to_numpy())
    pin, pin_found = pins.lookup(df["pin_id"].to_numpy())
    data = RankerData(
        dense=normalize_dense(df[spec.dense].to_numpy(np.float32), mean, std),
        sparse=clamp_sparse(df[spec.sparse].to_numpy(np.int64), spec.cardinalities),
        surface=clamp_surface(surface, len(SURFACES)),
        user=user, pin=pin,
        labels=df[[f"label_{t}" for t in tasks]].to_numpy(np.float32),
        request_id=df["request_id"].to_numpy(np.int64))
    return data, {"missing_user_embeddings": int((~user_found).sum()), "missing_pin_embeddings": int((~pin_found).sum())}


def prepare_data(cfg: RankerConfig, data_dir: str | Path, user_embeddings: EmbeddingSource = None,
                 pin_embeddings: EmbeddingSource = None) -> tuple[RankerData, RankerData, dict[str, Any]]:
    """(train, eval, extra): the time split, normalisation fitted on train, and what inference needs."""
    meta = io.read_meta(data_dir)
    users, pins = embedding_tables(data_dir, user_embeddings, pin_embeddings)
    spec = feature_spec(meta, users, pins)
    df = load_impressions(data_dir, spec, cfg.tasks)
    split = int(meta["split_timestamp"])
    is_train = df["timestamp"].to_numpy() < split
    if not is_train.any() or is_train.all():
        raise DataValidationError([f"{Path(data_dir) / 'impressions'}: need impressions both before and after "
                                   f"split_timestamp {split} (have {int(is_train.sum())} before, "
                                   f"{int((~is_train).sum())} after)"])
    train_df = df[is_train]
    if cfg.max_train_rows and len(train_df) > cfg.max_train_rows:
        train_df = train_df.iloc[-cfg.max_train_rows:]  # the most recent rows before the split
    mean, std = dense_stats(train_df, spec)
    train, miss_train = to_arrays(train_df, spec, cfg.tasks, mean, std, users, pins)
    evaluation, miss_eval = to_arrays(df[~is_train], spec, cfg.tasks, mean, std, users, pins)
    extra = {"spec": spec.__dict__.copy(), "dense_mean": mean, "dense_std": std, "tasks": list(cfg.tasks),
             "score_weights": list(cfg.score_weights), "dataset": meta.get("dataset"), "split_timestamp": split,
             "user_embeddings": users.model_version, "pin_embeddings": pins.model_version,
             "data_dir": str(Path(data_dir).resolve()),
             "user_embeddings_path": _path_or_none(user_embeddings), "pin_embeddings_path": _path_or_none(pin_embeddings),
             "rows": {"train": len(train), "eval": len(evaluation)}, "missing": {"train": miss_train, "eval": miss_eval}}
    return train, evaluation, extra


def _path_or_none(source: EmbeddingSource) -> str | None:
    return str(Path(source).resolve()) if isinstance(source, str | Path) else None


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted binary cross-entropy: sum_k w_k * mean_b BCE(logit_bk, y_bk)."""
    per_task = fn.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(0)  # (K,)
    return (per_task * weights).sum()


@torch.no_grad()
def predict(model: Ranker, data: RankerData, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (n, K), score (n,)) in eval mode."""
    was_training = model.training
    model.eval()
    probs, scores = [], []
    for start in range(0, len(data), batch_size):
        p, s = model.predict(*data.inputs(slice(start, start + batch_size)))
        probs.append(p.numpy())
        scores.append(s[:, 0].numpy())
    model.train(was_training)
    k = len(model.score_weights)
    return (np.concatenate(probs) if probs else np.zeros((0, k), np.float32),
            np.concatenate(scores) if scores else np.zeros(0, np.float32))


def evaluate(model: Ranker, data: RankerData, tasks: list[str], weights: list[float],
             batch_size: int = 4096) -> dict[str, float]:
    """AUC per task, weighted log-loss, HIT@3/save ranked by the serving score and by p(save)."""
    probs, score = predict(model, data, batch_size)
    out: dict[str, float] = {}
    for k, t in enumerate(tasks):
        out[f"auc_{t}"] = auc(data.labels[:, k], probs[:, k])
    logits = torch.logit(torch.from_numpy(probs).clamp(1e-7, 1 - 1e-7))
    out["loss"] = float(loss_fn(logits, torch.from_numpy(data.labels), torch.tensor(weights)))
    if "save" in tasks:
        save = data.labels[:, tasks.index("save")]
        by_score = hit_at_k(data.request_id, score, save, k=3)
        out["hit3_save"] = by_score["hit"]
        out["hit3_save_norm"] = by_score["hit_norm"]
        out["hit3_save_p_save"] = hit_at_k(data.request_id, probs[:, tasks.index("save")], save, k=3)["hit"]
        out["requests_with_save"] = by_score["requests"]
    return out


def train(cfg: RankerConfig, data_dir: str | Path, out_dir: str | Path, user_embeddings: EmbeddingSource = None,
          pin_embeddings: EmbeddingSource = None, resume: bool = False) -> dict[str, Any]:
    """Train the ranker; write MODEL_DIR (model.pt, config.yaml, checkpoints/, train_log.jsonl, metrics.json).

    Returns the metrics (on rank 0; other ranks return {}).
    """
    info = common.init_distributed()
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    common.seed_everything(cfg.seed)
    train_data, eval_data, extra = prepare_data(cfg, data_dir, user_embeddings, pin_embeddings)
    model = Ranker(cfg, FeatureSpec.from_dict(extra["spec"]))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    if resume and (latest := common.latest_checkpoint(ckpt_dir)) is not None:
        step = int(common.load_checkpoint(latest, model, optimizer)["step"])
    elif not resume and info.is_main:  # a fresh run: no stale checkpoint to resume from later, a new log
        for old in ckpt_dir.glob("step-*.pt") if ckpt_dir.exists() else []:
            old.unlink()
        (out_dir / "train_log.jsonl").unlink(missing_ok=True)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if info.enabled else model

    local_batch = max(1, cfg.batch_size // info.world_size)
    per_rank = len(train_data) // info.world_size
    steps_per_epoch = max(1, math.ceil(per_rank / local_batch))
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    weights = torch.tensor(cfg.task_weights, dtype=torch.float32)
    log = common.TrainLog(out_dir / "train_log.jsonl", info)
    log.log(event="start", step=step, total_steps=total, world_size=info.world_size, rows_train=len(train_data),
            rows_eval=len(eval_data), arch=cfg.arch, pepnet=cfg.pepnet)
    timer = common.StepTimer()
    ddp.train()
    t0, examples, perm, perm_epoch = time.perf_counter(), 0, None, -1
    while step < total:
        epoch, i = divmod(step, steps_per_epoch)
        if epoch != perm_epoch:  # the same permutation on every rank, resumable from any step
            perm = np.random.default_rng(cfg.seed * 100_003 + epoch).permutation(len(train_data))
            perm = perm[common.shard(len(train_data), info)]
            perm_epoch = epoch
        rows = perm[i * local_batch:(i + 1) * local_batch]
        inputs, labels = train_data.inputs(rows), torch.from_numpy(train_data.labels[rows])
        timer.data_ready()
        loss = loss_fn(ddp(*inputs), labels, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        timer.step_done()
        step += 1
        examples += len(rows)
        if step % cfg.log_every == 0 or step == total:
            log.log(event="step", step=step, epoch=epoch, loss=float(loss.detach()))
        if step % cfg.checkpoint_every == 0 or step == total:
            if info.is_main:
                common.save_checkpoint(ckpt_dir / f"step-{step}.pt", model, optimizer, step, cfg, extra)
            if info.enabled:
                torch.distributed.barrier()
    train_s = time.perf_counter() - t0

    in_sync = common.params_equal_across_ranks(model) if info.enabled else True  # a collective: every rank
    metrics: dict[str, Any] = {}
    if info.is_main:
        metrics = evaluate(model, eval_data, cfg.tasks, cfg.task_weights, cfg.eval_batch_size)
        metrics.update({"steps": step, "world_size": info.world_size, "train_seconds": round(train_s, 3),
                        "train_examples_per_s": round(examples * info.world_size / max(train_s, 1e-9), 1),
                        "params_in_sync": in_sync,
                        "parameters": sum(p.numel() for p in model.parameters()),
                        "rows_train": len(train_data), "rows_eval": len(eval_data), **timer.as_dict()})
        common.save_checkpoint(out_dir / "model.pt", model, None, step, cfg, extra)
        config_mod.save(cfg, out_dir)
        io.atomic_write_json(metrics, out_dir / "metrics.json")
        log.log(event="done", **{k: v for k, v in metrics.items() if isinstance(v, int | float)})
    common.cleanup_distributed()
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m components.training.ranker", description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="ranker")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--user-embeddings", default=None, help="user embedding table (default: content baseline)")
    p.add_argument("--pin-embeddings", default=None, help="pin embedding table (default: content baseline)")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    cfg = config_mod.load(args.experiment, args.overrides, model="ranker")
    metrics = train(cfg, args.data, args.out, args.user_embeddings, args.pin_embeddings, resume=args.resume)
    if metrics:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
