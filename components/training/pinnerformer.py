"""PinnerFormer training loop (arXiv 2205.04507): sampled softmax over user/pin towers.

``train(cfg, data_dir, pin_embeddings, out_dir, resume=False) -> dict``; under torchrun:

    torchrun --nproc_per_node=2 -m components.training.pinnerformer --experiment pinnerformer_tiny \\
        --data DIR --pin-embeddings PATH --out MODEL_DIR [--set k=v] [--resume]

Steps: events before ``meta["split_timestamp"]`` -> one CSR row per user (pinnerformer_data) -> a
held-out set of users (``eval_user_fraction``) never trains -> each epoch samples sequences and
targets on the fly by objective -> batches go through the sequence tower and the pin tower ->
sampled softmax with in-batch / random / mixed negatives, logQ from a count-min sketch of the
targets, a learned clamped temperature and equal weight per user. Ranks train on disjoint shards of
each epoch's examples (DDP, gloo); rank 0 writes atomic checkpoints every ``checkpoint_every``
steps, and ``resume`` continues from the latest one at the same batch of the same epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from components import config as config_mod
from components.config import PinnerFormerConfig
from components.data import io
from components.data.validate import load_events
from components.inference.tables import EmbeddingTable, VersionedStore, read_table
from components.models.pinnerformer import PinnerFormer
from components.training import common
from components.training.countmin import CountMinSketch
from components.training.losses import sampled_softmax_loss
from components.training.pinnerformer_data import (
    NEGATIVES,
    OBJECTIVES,
    UserSequences,
    build_sequences,
    collate_examples,
    sample_examples,
)


def load_pin_table(path: str | Path) -> EmbeddingTable:
    """An embedding table from a Parquet file, a ``v=<version>`` folder or a VersionedStore root (CURRENT)."""
    path = Path(path)
    if path.is_dir() and (path / "CURRENT").exists():
        return VersionedStore(path).read()
    table = read_table(path)
    if len(table) == 0:
        raise ValueError(f"{path}: pin embedding table is empty")
    return table


def split_users(user_ids: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train users, held-out users): a seeded random ``fraction`` of the users is held out."""
    if not 0 <= fraction < 1:
        raise ValueError(f"pinnerformer config: eval_user_fraction must be in [0, 1), got {fraction}")
    ids = np.sort(np.asarray(user_ids, np.int64))
    perm = np.random.default_rng([seed, 7]).permutation(len(ids))
    n_eval = int(round(fraction * len(ids)))
    return np.sort(ids[perm[n_eval:]]), np.sort(ids[perm[:n_eval]])


class _Towers(nn.Module):
    """Both towers in one forward, so DDP sees every parameter used inside ``forward``."""

    def __init__(self, model: PinnerFormer):
        super().__init__()
        self.model = model

    def forward(self, pins: torch.Tensor, batch: dict[str, torch.Tensor], neg_rows: torch.Tensor | None):
        out = self.model(pins[batch["pin_row"]], batch["action"], batch["surface"], batch["duration"],
                         batch["timestamp"], batch["valid"])  # (B, M, D)
        query = out[batch["pair_row"], batch["pair_pos"]]  # (P, D)
        positive = self.model.embed_pins(pins[batch["target_row"]])  # (P, D)
        negative = self.model.embed_pins(pins[neg_rows]) if neg_rows is not None else None  # (N, D)
        return query, positive, negative, self.model.temperature()


def check_config(cfg: PinnerFormerConfig) -> None:
    if cfg.objective not in OBJECTIVES:
        raise config_mod.ConfigError(f"pinnerformer: objective '{cfg.objective}' is not one of {OBJECTIVES}")
    if cfg.negatives not in NEGATIVES:
        raise config_mod.ConfigError(f"pinnerformer: negatives '{cfg.negatives}' is not one of {NEGATIVES}")
    if cfg.d_model % cfg.num_heads:
        raise config_mod.ConfigError(f"pinnerformer: d_model {cfg.d_model} is not divisible by num_heads "
                                     f"{cfg.num_heads}")


def prepare_training_data(cfg: PinnerFormerConfig, data_dir: str | Path, table: EmbeddingTable
                          ) -> tuple[UserSequences, np.ndarray, np.ndarray, int]:
    """(train-period sequences, train user positions, held-out user ids, split timestamp)."""
    split = int(io.read_meta(data_dir)["split_timestamp"])
    events = load_events(data_dir)
    seqs = build_sequences(events[events["timestamp"] < split], table.ids)
    all_users = io.read_table(data_dir, "users").column("user_id").to_numpy()
    train_users, eval_users = split_users(all_users, cfg.eval_user_fraction, cfg.seed)
    pos = seqs.index_of(train_users)
    return seqs, pos[pos >= 0], eval_users, split


def train(cfg: PinnerFormerConfig, data_dir: str | Path, pin_embeddings: str | Path, out_dir: str | Path,
          resume: bool = False, evaluate: bool = True) -> dict:
    """Train PinnerFormer; write ``out_dir`` (model.pt, config.yaml, checkpoints/, train_log.jsonl,
    metrics.json); return the metrics."""
    check_config(cfg)
    info = common.init_distributed()
    out_dir = Path(out_dir)
    table = load_pin_table(pin_embeddings)
    cfg = dataclasses.replace(cfg, pin_dim=table.dim)
    object.__setattr__(cfg, "_experiment", getattr(cfg, "_experiment", None))
    common.seed_everything(cfg.seed)
    seqs, train_pos, eval_users, split = prepare_training_data(cfg, data_dir, table)
    pins = torch.from_numpy(np.ascontiguousarray(table.embeddings, dtype=np.float32))  # (N, E)
    model = PinnerFormer(cfg)
    towers: nn.Module = _Towers(model)
    if info.enabled:
        towers = DistributedDataParallel(towers)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sketch = CountMinSketch(cfg.sketch_width, cfg.sketch_depth, seed=cfg.seed)
    log = common.TrainLog(out_dir / "train_log.jsonl", info)
    ckpt_dir = out_dir / "checkpoints"
    step, start_epoch, start_batch = 0, 0, 0
    if resume:
        latest = common.latest_checkpoint(ckpt_dir)
        if latest is not None:
            state = common.load_checkpoint(latest, model, opt)
            step = int(state["step"])
            start_epoch, start_batch = int(state["extra"]["epoch"]), int(state["extra"]["batch"])
            sketch.load_state_dict(state["extra"]["sketch"])
            log.log(event="resume", checkpoint=str(latest), step=step, epoch=start_epoch, batch=start_batch)
    if info.is_main:
        config_mod.save(cfg, out_dir)

    def extra(epoch: int, batch: int) -> dict:
        return {"epoch": epoch, "batch": batch, "sketch": sketch.state_dict(), "split_timestamp": split,
                "eval_users": eval_users.tolist(), "pin_table_version": table.model_version,
                "data_dir": str(data_dir)}

    timer = common.StepTimer()
    n_seqs, n_pairs, losses = 0, 0, []
    t0 = time.perf_counter()
    done = False
    epoch, bi = start_epoch, 0
    for epoch in range(start_epoch, cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])
        examples = sample_examples(seqs, train_pos, cfg, rng)
        examples = [examples[i] for i in rng.permutation(len(examples))]
        examples = examples[common.shard(len(examples), info)]
        batches = [examples[i:i + cfg.batch_size] for i in range(0, len(examples), cfg.batch_size)]
        for bi, exs in enumerate(batches):
            if epoch == start_epoch and bi < start_batch:
                continue
            if cfg.max_steps and step >= cfg.max_steps:
                done = True
                break
            batch = collate_examples(seqs, exs)
            timer.data_ready()
            towers.train()
            neg_rows = None
            if cfg.negatives in ("random", "mixed"):
                g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * info.world_size + info.rank)
                neg_rows = torch.randint(0, len(pins), (cfg.num_random_negatives,), generator=g)
            query, positive, negative, tau = towers(pins, batch, neg_rows)
            target = batch["target_row"].numpy()
            sketch.add(target)
            logq_pos = logq_rand = None
            if cfg.logq:
                expected = len(target) * np.maximum(sketch.probability(target), 1e-12)
                logq_pos = torch.from_numpy(np.log(expected).astype(np.float32))
                logq_rand = float(np.log(cfg.num_random_negatives / len(pins)))
            loss = sampled_softmax_loss(
                query, positive, batch["target_row"], batch["pair_user"], tau,
                in_batch=cfg.negatives in ("in_batch", "mixed"), random_negatives=negative,
                random_ids=neg_rows, logq_positive=logq_pos, logq_random=logq_rand)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            timer.step_done()
            step += 1
            n_seqs += len(exs)
            n_pairs += len(target)
            losses.append(float(loss.detach()))
            if step % cfg.log_every == 0:
                log.log(step=step, epoch=epoch, loss=round(float(np.mean(losses[-cfg.log_every:])), 5),
                        temperature=round(float(tau.detach()), 5), pairs=len(target))
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and info.is_main:
                common.save_checkpoint(ckpt_dir / f"step-{step}.pt", model, opt, step, cfg, extra(epoch, bi + 1))
        if done:
            break
    elapsed = time.perf_counter() - t0
    end_epoch, end_batch = (epoch, bi) if done else (cfg.epochs, 0)
    equal = common.params_equal_across_ranks(model)
    metrics: dict = {"steps": step, "final_loss": float(np.mean(losses[-20:])) if losses else None,
                     "sequences_per_s": n_seqs * info.world_size / elapsed if elapsed > 0 else 0.0,
                     "pairs": n_pairs * info.world_size, "world_size": info.world_size,
                     "params_equal_across_ranks": equal, "temperature": float(model.temperature().detach()),
                     "train_users": int(len(train_pos)), "eval_users": int(len(eval_users)),
                     "dropped_unknown_pins": seqs.dropped_unknown_pins, **timer.as_dict()}
    if info.is_main:
        model.eval()
        state_extra = extra(end_epoch, end_batch)
        common.save_checkpoint(ckpt_dir / f"step-{step}.pt", model, opt, step, cfg, state_extra)
        common.save_checkpoint(out_dir / "model.pt", model, None, step, cfg, state_extra)
        if evaluate and len(eval_users):
            from components.training.pinnerformer_eval import recall_at_split

            metrics.update(recall_at_split(model, cfg, data_dir, table, eval_users))
        io.atomic_write_json(metrics, out_dir / "metrics.json")
        log.log(event="done", **{k: v for k, v in metrics.items() if not isinstance(v, dict)})
    common.cleanup_distributed()
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m components.training.pinnerformer", description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="pinnerformer")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data", required=True)
    p.add_argument("--pin-embeddings", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    cfg = config_mod.load(args.experiment, args.overrides, model="pinnerformer")
    metrics = train(cfg, args.data, args.pin_embeddings, args.out, resume=args.resume)
    if not dist.is_initialized():
        print(json.dumps({k: v for k, v in metrics.items()}, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
