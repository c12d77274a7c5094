"""PinnerFormer training (arXiv 2205.04507): sampled softmax over user/pin towers; the loop itself (DDP,
checkpoints, exact resume, logs) is :func:`components.training.loop.fit`.

    train(cfg, data_dir, pin_embeddings, out_dir, resume=False) -> metrics

Steps: events before ``meta["split_timestamp"]`` -> one CSR row per user (pinnerformer_data) -> a
held-out set of users (``eval_user_fraction``, independent of the training seed) never trains -> each
epoch samples sequences and targets on the fly by objective -> batches go through the sequence tower and
the pin tower -> sampled softmax (``training.losses``) with in-batch / random / mixed negatives, logQ from a
count-min sketch of the targets (saved in every checkpoint), a learned clamped temperature and equal weight
per user. Ranks train on disjoint shards of each epoch's examples.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from components.config import PinnerFormerConfig
from components.data import io
from components.data.tables import EmbeddingTable, VersionedStore, read_table
from components.data.validate import load_events
from components.evaluation.pinnerformer import recall_at_split
from components.evaluation.protocol import train_mask
from components.models.pinnerformer import PinnerFormer
from components.training.common import DistInfo, shard
from components.training.countmin import CountMinSketch
from components.training.loop import TrainTask, Validation, fit
from components.training.losses import sampled_softmax_loss
from components.training.pinnerformer_data import UserSequences, build_sequences, collate_examples, sample_examples


def open_table(path: str | Path, what: str = "pin embedding table") -> EmbeddingTable:
    """An embedding table from a Parquet file, a ``v=<version>`` folder or a VersionedStore root (CURRENT);
    an empty one is an error naming ``what``. Every trainer opens its embedding inputs with this."""
    path = Path(path)
    table = VersionedStore(path).read() if path.is_dir() and (path / "CURRENT").exists() else read_table(path)
    if len(table) == 0:
        raise ValueError(f"{path}: {what} is empty")
    return table


load_pin_table = open_table  # the name components.inference.users and the evaluation harness import


EVAL_SPLIT_SEED = 0  # equal to components.evaluation.protocol.SPLIT_SEED (tests/test_evaluation_protocol.py)


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


def prepare_training_data(cfg: PinnerFormerConfig, data_dir: str | Path, table: EmbeddingTable
                          ) -> tuple[UserSequences, np.ndarray, np.ndarray, int]:
    """(train-period sequences, train user positions, held-out user ids, split timestamp). The train period is
    each user's actions before their own split time with a per-user split (users.parquet split_timestamp)."""
    split = int(io.read_meta(data_dir)["split_timestamp"])
    events = load_events(data_dir)
    seqs = build_sequences(events[train_mask(data_dir, events["user_id"].to_numpy(), events["timestamp"].to_numpy())],
                           table.ids)
    all_users = io.read_table(data_dir, "users").column("user_id").to_numpy()
    # held-out users do not depend on the training seed: every seed is evaluated on the same users
    train_users, eval_users = split_users(all_users, cfg.eval_user_fraction, EVAL_SPLIT_SEED)
    pos = seqs.index_of(train_users)
    return seqs, pos[pos >= 0], eval_users, split


class PinnerFormerTask(TrainTask):
    """PinnerFormer's part of the loop: examples sampled per epoch, random negatives, logQ, sampled softmax."""

    name = "pinnerformer"

    def __init__(self, cfg: PinnerFormerConfig, data_dir: str | Path, table: EmbeddingTable, evaluate: bool = True):
        super().__init__(cfg)
        self.data_dir, self.table, self.evaluate = data_dir, table, evaluate
        self.sketch = CountMinSketch(cfg.sketch_width, cfg.sketch_depth, seed=cfg.seed)

    def setup(self, info: DistInfo) -> None:
        super().setup(info)
        self.seqs, self.train_pos, self.eval_users, self.split = prepare_training_data(self.cfg, self.data_dir,
                                                                                        self.table)
        self.pins = torch.from_numpy(np.ascontiguousarray(self.table.embeddings, dtype=np.float32))  # (N, E)

    def build_model(self) -> nn.Module:
        return PinnerFormer(self.cfg)

    def train_module(self, model: nn.Module) -> nn.Module:
        return _Towers(model)

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def batches(self, epoch: int, start: int):
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, epoch])
        examples = sample_examples(self.seqs, self.train_pos, cfg, rng)
        examples = [examples[i] for i in rng.permutation(len(examples))]
        examples = examples[shard(len(examples), self.info)]
        for i in range(start * cfg.batch_size, len(examples), cfg.batch_size):
            yield collate_examples(self.seqs, examples[i:i + cfg.batch_size])

    def loss(self, module: nn.Module, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg, info, n_pins = self.cfg, self.info, len(self.pins)
        neg_rows = None
        if cfg.negatives in ("random", "mixed"):
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * info.world_size + info.rank)
            neg_rows = torch.randint(0, n_pins, (cfg.num_random_negatives,), generator=g)  # (N,)
        query, positive, negative, tau = module(self.pins, batch, neg_rows)
        target = batch["target_row"].numpy()
        self.sketch.add(target)
        logq_pos = logq_rand = None
        if cfg.logq:
            expected = len(target) * np.maximum(self.sketch.probability(target), 1e-12)  # (P,)
            logq_pos = torch.from_numpy(np.log(expected).astype(np.float32))
            logq_rand = float(np.log(cfg.num_random_negatives / n_pins))
        loss = sampled_softmax_loss(
            query, positive, batch["target_row"], batch["pair_user"], tau,
            in_batch=cfg.negatives in ("in_batch", "mixed"), random_negatives=negative,
            random_ids=neg_rows, logq_positive=logq_pos, logq_random=logq_rand)
        return loss, {"temperature": round(float(tau.detach()), 5), "pairs": len(target)}

    def count(self, batch: dict[str, Any]) -> int:
        return int(batch["valid"].shape[0])  # sequences

    def state(self) -> dict[str, Any]:
        return {"sketch": self.sketch.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.sketch.load_state_dict(state["sketch"])

    def start_record(self) -> dict[str, Any]:
        return {"train_users": int(len(self.train_pos)), "eval_users": int(len(self.eval_users))}

    def model_extra(self) -> dict[str, Any]:
        return {"split_timestamp": self.split, "eval_users": self.eval_users.tolist(),
                "pin_table_version": self.table.model_version, "data_dir": str(self.data_dir)}

    def finish(self, model: nn.Module) -> dict[str, Any]:
        out: dict[str, Any] = {"temperature": float(model.temperature().detach()),
                               "train_users": int(len(self.train_pos)), "eval_users": int(len(self.eval_users)),
                               "dropped_unknown_pins": self.seqs.dropped_unknown_pins}
        if self.evaluate and len(self.eval_users):
            out.update(recall_at_split(model, self.cfg, self.data_dir, self.table, self.eval_users))
        return out


def train(cfg: PinnerFormerConfig, data_dir: str | Path, pin_embeddings: str | Path, out_dir: str | Path,
          resume: bool = False, evaluate: bool = True, validation: Validation | None = None) -> dict[str, Any]:
    """Train PinnerFormer into ``out_dir`` (model.pt, config.yaml, checkpoints/, train_log.jsonl, metrics.json);
    ``evaluate`` adds Recall@10 of the held-out users to the metrics; ``validation`` keeps the best weights and
    stops early (the evaluation harness passes one)."""
    table = load_pin_table(pin_embeddings)
    cfg = dataclasses.replace(cfg, pin_dim=table.dim)
    return fit(PinnerFormerTask(cfg, data_dir, table, evaluate), out_dir, resume=resume, validation=validation)
