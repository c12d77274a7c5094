"""PinSage training: max-margin loss on related pairs, shared and curriculum hard negatives, DataLoader
producers, DDP under torchrun (gloo), checkpoints with exact resume.

    train(cfg, data_dir, out_dir, resume=False) -> metrics

    torchrun --nproc_per_node=2 -m components.training.pinsage --experiment pinsage_tiny --data D --out M

Steps: build the pin-board graph from the data before the split -> importance neighbourhoods of every pin
(seeded walks) -> related pairs (co-engagement + same board), shuffled with the seed and sharded by rank ->
PPR-band hard-negative candidates for the query pins (when ``hard_negatives``) -> epochs of minibatches from
a DataLoader (workers build each minibatch's computation graph while the trainer computes) -> Adam, DDP
gradient all-reduce -> ``checkpoints/step-N.pt`` every ``checkpoint_every`` steps, ``model.pt`` at the end.

Resume restarts from the latest checkpoint at the same (epoch, batch): minibatches depend only on
(seed, rank, epoch, batch), so a resumed run ends with the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from components import config as config_mod
from components.config import PinSageConfig
from components.data import io
from components.data.validate import load_events, pin_features
from components.graph.graph import PinBoardGraph, build_graph
from components.graph.sampling import build_neighbourhoods, hard_negative_candidates
from components.models.pinsage import build_model
from components.training.common import (
    StepTimer,
    TrainLog,
    cleanup_distributed,
    init_distributed,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
    shard,
)
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
    """Related pairs before the split, shuffled with the seed: (n, 2) pin indices."""
    until = io.read_meta(data_dir)["split_timestamp"]
    ev = load_events(data_dir)
    ev = ev[ev["timestamp"] < until]
    parts = [coengagement_pairs(ev, graph.pin_ids, cfg.pair_window_s)]
    if cfg.board_pairs:
        parts.append(board_pairs(graph, cfg.seed))
    pairs = np.concatenate(parts)
    if len(pairs) == 0:
        raise ValueError(f"{data_dir}: no related pairs (no co-engagement within pair_window_s={cfg.pair_window_s} "
                         "and no board with 2+ pins) before meta.json split_timestamp")
    return pairs[np.random.default_rng([cfg.seed, 3]).permutation(len(pairs))]


def prepare_inputs(cfg: PinSageConfig, data_dir: str | Path) -> dict[str, Any]:
    """Graph, features, neighbourhoods and pairs (the same on every rank); sets ``cfg.feature_dim``."""
    graph = build_graph(data_dir, cfg.use_engagement_edges)
    feats = graph_features(graph, data_dir)
    cfg.feature_dim = int(feats.shape[1])
    nbr_ids, nbr_w = build_neighbourhoods(graph, cfg)
    return {"graph": graph, "features": feats, "nbr_ids": nbr_ids, "nbr_w": nbr_w,
            "pairs": training_pairs(graph, data_dir, cfg)}


def _loader(ds: PairBatches, cfg: PinSageConfig) -> torch.utils.data.DataLoader:
    workers = cfg.num_workers
    return torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers,
                                       prefetch_factor=cfg.prefetch_factor if workers > 0 else None,
                                       persistent_workers=False)


def train(cfg: PinSageConfig, data_dir: str | Path, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train PinSage on ``data_dir``; write ``out_dir`` (model.pt, config.yaml, checkpoints/, train_log.jsonl,
    metrics.json). Under torchrun each rank trains on its shard of pairs; rank 0 writes. Returns the metrics."""
    info = init_distributed()
    out_dir = Path(out_dir)
    try:
        t0 = time.perf_counter()
        seed_everything(cfg.seed)
        inputs = prepare_inputs(cfg, data_dir)
        graph, feats, pairs = inputs["graph"], inputs["features"], inputs["pairs"]
        pairs = pairs[shard(len(pairs), info)]
        per_epoch = PairBatches.batches_per_epoch(len(pairs), cfg.batch_size)
        if per_epoch == 0:
            raise ValueError(f"{data_dir}: {len(pairs)} related pairs per rank is less than batch_size={cfg.batch_size}")
        total = cfg.epochs * per_epoch if cfg.max_steps <= 0 else min(cfg.max_steps, cfg.epochs * per_epoch)
        hard = None
        if cfg.hard_negatives and total > per_epoch:  # the curriculum adds hard negatives from epoch 2
            queries = np.unique(inputs["pairs"][:, 0])
            hard = np.zeros((graph.num_pins, HARD_CANDIDATES), np.int64)
            hard[queries] = hard_negative_candidates(graph, queries, cfg.hard_negative_band, HARD_CANDIDATES,
                                                     cfg.seed, cfg.restart_prob)
        prep_s = time.perf_counter() - t0

        model = build_model(cfg)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        step = 0
        ckpt_dir = out_dir / "checkpoints"
        if resume and (found := latest_checkpoint(ckpt_dir)) is not None:
            step = int(load_checkpoint(found, model, opt, restore_rng=True)["step"])
        if info.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            config_mod.save(cfg, out_dir)
        ddp = DistributedDataParallel(model) if info.enabled else model
        log = TrainLog(out_dir / "train_log.jsonl", info)
        log.log(event="start", step=step, total_steps=total, pairs_per_rank=len(pairs), world_size=info.world_size,
                pins=graph.num_pins, edges=graph.num_edges, prep_s=round(prep_s, 3), resumed=step > 0)

        timer, steady = StepTimer(), StepTimer()
        loss_sum, loss_n, last_loss = 0.0, 0, float("nan")
        while step < total:
            epoch = step // per_epoch
            ds = PairBatches(pairs, feats, inputs["nbr_ids"], inputs["nbr_w"], cfg.num_layers, cfg.batch_size,
                             cfg.num_negatives, hard, epoch if cfg.hard_negatives else 0, cfg.seed, info.rank,
                             epoch, start=step - epoch * per_epoch)
            timer._t = steady._t = time.perf_counter()
            for j, batch in enumerate(_loader(ds, cfg)):
                timer.data_ready()
                if j > 0:
                    steady.data_ready()
                emb = ddp(batch["h0"], batch["blocks"])  # (B_K, D)
                zh = emb[batch["hard"]] if batch["hard"].shape[1] else None
                loss = max_margin_loss(emb[batch["q"]], emb[batch["p"]], emb[batch["neg"]], zh, cfg.margin)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                last_loss = float(loss.detach())
                loss_sum, loss_n = loss_sum + last_loss, loss_n + 1
                timer.step_done()
                if j > 0:
                    steady.step_done()
                else:
                    steady._t = time.perf_counter()
                if step % cfg.log_every == 0 or step == total:
                    log.log(event="step", step=step, epoch=epoch + 1, loss=round(loss_sum / loss_n, 5),
                            hard_per_positive=int(batch["hard"].shape[1]), **timer.as_dict(),
                            steady_data_wait_fraction=steady.as_dict()["data_wait_fraction"])
                    loss_sum, loss_n = 0.0, 0
                if cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0:
                    if info.is_main:
                        save_checkpoint(ckpt_dir / f"step-{step}.pt", model, opt, step, cfg)
                    if info.enabled:
                        torch.distributed.barrier()
                if step >= total:
                    break

        metrics = {"steps": step, "final_loss": last_loss, "pairs_per_rank": len(pairs),
                   "world_size": info.world_size, "train_s": round(time.perf_counter() - t0, 3),
                   **timer.as_dict(), "steady_data_wait_fraction": steady.as_dict()["data_wait_fraction"]}
        if info.is_main:
            save_checkpoint(out_dir / "model.pt", model, opt, step, cfg,
                            extra={"num_pins": graph.num_pins, "feature_dim": cfg.feature_dim})
            io.atomic_write_json(metrics, out_dir / "metrics.json")
        log.log(event="done", **metrics)
        if info.enabled:
            from components.training.common import params_equal_across_ranks
            metrics["params_equal_across_ranks"] = params_equal_across_ranks(model)
            if info.is_main:
                io.atomic_write_json(metrics, out_dir / "metrics.json")
        return metrics
    finally:
        cleanup_distributed()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train PinSage (runs under torchrun for DDP)")
    p.add_argument("--experiment", default="pinsage_tiny")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    cfg = config_mod.load(args.experiment, args.overrides, model="pinsage")
    train(cfg, args.data, args.out, resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
