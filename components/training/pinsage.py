"""PinSage training: max-margin loss on related pairs, shared and curriculum hard negatives, DataLoader
producers; the loop itself (DDP, checkpoints, exact resume, logs) is :func:`components.training.loop.fit`.

    train(cfg, data_dir, out_dir, resume=False, neighbourhoods=None) -> metrics

Steps: build the pin-board graph from the data before the split -> importance neighbourhoods of every pin
(seeded walks, or the ``neighbourhoods.npz`` the sample_graph step wrote) -> related pairs (co-engagement +
same board), shuffled with the seed and sharded by rank -> PPR-band hard-negative candidates for the query
pins (when ``hard_negatives``) -> epochs (of all pairs, or of ``epoch_pairs`` drawn per epoch) of minibatches from a DataLoader (workers build each minibatch's
computation graph while the trainer computes) -> Adam.

Minibatches depend only on (seed, rank, epoch, batch), so a resumed run ends with the same parameters as an
uninterrupted one.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from components.config import PinSageConfig
from components.data.validate import load_events, pin_features
from components.evaluation.protocol import train_mask
from components.graph.graph import PinBoardGraph, build_graph
from components.graph.sampling import build_neighbourhoods, hard_negative_candidates
from components.models.pinsage import build_model
from components.training.common import DistInfo, shard
from components.training.loop import TrainTask, Validation, fit
from components.training.pinsage_data import PairBatches, board_pairs, coengagement_pairs, max_margin_loss

HARD_CANDIDATES = 32  # PPR-band pins kept per query pin; each epoch draws its hard negatives from them


def graph_features(graph: PinBoardGraph, data_dir: str | Path) -> np.ndarray:
    """(P, F) float32 content features in the graph's pin-index order."""
    ids, feats = pin_features(data_dir)
    order = np.argsort(ids)
    if not np.array_equal(ids[order], graph.pin_ids):
        raise ValueError(f"{Path(data_dir) / 'pins.parquet'}: pin ids differ from the graph's pins")
    return np.ascontiguousarray(feats[order], dtype=np.float32)


def training_pairs(graph: PinBoardGraph, data_dir: str | Path, cfg: PinSageConfig) -> np.ndarray:
    """Related pairs before the split (each user's own split time with a per-user split), shuffled with the
    seed: (n, 2) pin indices."""
    ev = load_events(data_dir)
    ev = ev[train_mask(data_dir, ev["user_id"].to_numpy(), ev["timestamp"].to_numpy())]
    parts = [coengagement_pairs(ev, graph.pin_ids, cfg.pair_window_s)]
    if cfg.board_pairs:
        parts.append(board_pairs(graph, cfg.seed))
    pairs = np.concatenate(parts)
    if len(pairs) == 0:
        raise ValueError(f"{data_dir}: no related pairs (no co-engagement within pair_window_s={cfg.pair_window_s} "
                         "and no board with 2+ pins) before the split (meta.json / users.parquet split_timestamp)")
    return pairs[np.random.default_rng([cfg.seed, 3]).permutation(len(pairs))]


def read_neighbourhoods(path: str | Path, graph: PinBoardGraph, cfg: PinSageConfig) -> tuple[np.ndarray, np.ndarray]:
    """(nbr_ids (P, T), nbr_weights (P, T)) from the sample_graph step's ``neighbourhoods.npz`` (a file or the
    folder holding it), checked against this graph's pins and ``cfg.num_neighbors``."""
    path = Path(path)
    path = path / "neighbourhoods.npz" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"{path}: no neighbourhoods file (the sample_graph step writes neighbourhoods.npz)")
    with np.load(path, allow_pickle=False) as f:
        missing = {"pin_ids", "nbr_ids", "nbr_weights"} - set(f.files)
        if missing:
            raise ValueError(f"{path}: missing array(s) {sorted(missing)}")
        pin_ids, nbr_ids, nbr_w = f["pin_ids"], f["nbr_ids"], f["nbr_weights"]
    if not np.array_equal(pin_ids, graph.pin_ids):
        raise ValueError(f"{path}: neighbourhoods of {len(pin_ids)} pins that differ from the data's graph "
                         f"({graph.num_pins} pins); sample the graph of the same data directory")
    if nbr_ids.shape != (graph.num_pins, cfg.num_neighbors) or nbr_w.shape != nbr_ids.shape:
        raise ValueError(f"{path}: nbr_ids {nbr_ids.shape} / nbr_weights {nbr_w.shape}, expected "
                         f"({graph.num_pins}, num_neighbors={cfg.num_neighbors})")
    return nbr_ids.astype(np.int64), nbr_w.astype(np.float32)


def prepare_inputs(cfg: PinSageConfig, data_dir: str | Path, neighbourhoods: str | Path | None = None) -> dict[str, Any]:
    """Graph, features, neighbourhoods and pairs (the same on every rank); sets ``cfg.feature_dim``."""
    graph = build_graph(data_dir, cfg.use_engagement_edges)
    feats = graph_features(graph, data_dir)
    cfg.feature_dim = int(feats.shape[1])
    nbr_ids, nbr_w = (read_neighbourhoods(neighbourhoods, graph, cfg) if neighbourhoods is not None
                      else build_neighbourhoods(graph, cfg))
    return {"graph": graph, "features": feats, "nbr_ids": nbr_ids, "nbr_w": nbr_w,
            "pairs": training_pairs(graph, data_dir, cfg)}


class PinSageTask(TrainTask):
    """PinSage's part of the loop: pairs sharded by rank, the curriculum's hard negatives, max-margin loss."""

    name = "pinsage"

    def __init__(self, cfg: PinSageConfig, data_dir: str | Path, neighbourhoods: str | Path | None = None):
        super().__init__(cfg)
        self.data_dir, self.neighbourhoods = data_dir, neighbourhoods

    def setup(self, info: DistInfo) -> None:
        super().setup(info)
        cfg = self.cfg
        self.inputs = prepare_inputs(cfg, self.data_dir, self.neighbourhoods)
        graph, all_pairs = self.inputs["graph"], self.inputs["pairs"]
        self.pairs = all_pairs[shard(len(all_pairs), info)]
        # epoch_pairs: each epoch trains on a fresh seeded sample of the pairs (an "epoch" of a large log)
        self.epoch_pairs = len(self.pairs) if not cfg.epoch_pairs else min(len(self.pairs),
                                                                           cfg.epoch_pairs // info.world_size)
        per_epoch = self.per_epoch = PairBatches.batches_per_epoch(self.epoch_pairs, cfg.batch_size)
        if per_epoch == 0:
            raise ValueError(f"{self.data_dir}: {self.epoch_pairs} related pairs per rank and epoch is less than "
                             f"batch_size={cfg.batch_size}")
        total = cfg.epochs * per_epoch if cfg.max_steps <= 0 else min(cfg.max_steps, cfg.epochs * per_epoch)
        # The curriculum: epoch n adds n-1 hard negatives (stages of one epoch). A run shorter than one epoch
        # (max_steps) compresses it into its length, `epochs` stages of ceil(total / epochs) steps, so it still
        # reaches them; a run of an epoch or more keeps the per-epoch stages (a resume never changes them).
        self.stage_len = per_epoch if total > per_epoch else max(1, -(-total // cfg.epochs))
        self.hard, self.max_hard = None, 0
        if cfg.hard_negatives and total <= self.stage_len:
            warnings.warn(f"pinsage: hard_negatives is on but the run has one curriculum stage ({total} steps, "
                          f"epochs={cfg.epochs}): hard negatives never activate; use epochs >= 2", stacklevel=2)
        if cfg.hard_negatives and total > self.stage_len:
            queries = np.unique(all_pairs[:, 0])
            self.hard = np.zeros((graph.num_pins, HARD_CANDIDATES), np.int64)
            self.hard[queries] = hard_negative_candidates(graph, queries, cfg.hard_negative_band, HARD_CANDIDATES,
                                                          cfg.seed, cfg.restart_prob)

    def build_model(self) -> nn.Module:
        return build_model(self.cfg)

    def batches(self, epoch: int, start: int) -> torch.utils.data.DataLoader:
        cfg = self.cfg
        pairs = self.pairs
        if self.epoch_pairs < len(pairs):  # a pure function of (seed, rank, epoch): resumes see the same sample
            rng = np.random.default_rng([cfg.seed, self.info.rank, epoch, 4])
            pairs = pairs[np.sort(rng.choice(len(pairs), self.epoch_pairs, replace=False))]
        ds = PairBatches(pairs, self.inputs["features"], self.inputs["nbr_ids"], self.inputs["nbr_w"],
                         cfg.num_layers, cfg.batch_size, cfg.num_negatives, self.hard,
                         cfg.epochs - 1 if cfg.hard_negatives else 0, cfg.seed, self.info.rank, epoch, start=start,
                         stage_len=self.stage_len)
        workers = cfg.num_workers
        return torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers,
                                           prefetch_factor=cfg.prefetch_factor if workers > 0 else None,
                                           persistent_workers=False)

    def loss(self, module: nn.Module, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        emb = module(batch["h0"], batch["blocks"])  # (B_K, D)
        zh = emb[batch["hard"]] if batch["hard"].shape[1] else None  # (B, H, D)
        loss = max_margin_loss(emb[batch["q"]], emb[batch["p"]], emb[batch["neg"]], zh, self.cfg.margin)
        self.max_hard = max(self.max_hard, int(batch["hard"].shape[1]))
        return loss, {"hard_per_positive": int(batch["hard"].shape[1])}

    def count(self, batch: dict[str, Any]) -> int:
        return len(batch["q"])

    def steps_per_epoch(self) -> int:
        return self.per_epoch

    def start_record(self) -> dict[str, Any]:
        graph = self.inputs["graph"]
        return {"pairs_per_rank": len(self.pairs), "pins": graph.num_pins, "edges": graph.num_edges}

    def model_extra(self) -> dict[str, Any]:
        return {"num_pins": self.inputs["graph"].num_pins, "feature_dim": self.cfg.feature_dim}

    def state(self) -> dict[str, Any]:
        return {"max_hard": self.max_hard}

    def load_state(self, state: dict[str, Any]) -> None:
        self.max_hard = int(state.get("max_hard", 0))

    def finish(self, model: nn.Module) -> dict[str, Any]:
        if self.cfg.hard_negatives and self.max_hard == 0:  # e.g. early stopping before the second stage
            warnings.warn("pinsage: hard_negatives is on but no minibatch of this run had a hard negative "
                          f"(stopped at a step before the curriculum's second stage, {self.stage_len} steps); "
                          "this run equals 'no hard negatives'", stacklevel=2)
        return {"pairs_per_rank": len(self.pairs), "hard_per_positive_max": self.max_hard}


def train(cfg: PinSageConfig, data_dir: str | Path, out_dir: str | Path, resume: bool = False,
          neighbourhoods: str | Path | None = None, validation: Validation | None = None) -> dict[str, Any]:
    """Train PinSage on ``data_dir`` into ``out_dir`` (model.pt, config.yaml, checkpoints/, train_log.jsonl,
    metrics.json); ``neighbourhoods`` reuses the sample_graph step's output instead of re-sampling;
    ``validation`` keeps the best weights and stops early (the evaluation harness passes one)."""
    return fit(PinSageTask(cfg, data_dir, neighbourhoods), out_dir, resume=resume, validation=validation)
