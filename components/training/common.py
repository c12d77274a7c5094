"""The loop's building blocks: seeding, torchrun/gloo process groups, rank sharding, a JSONL training log,
a data-wait vs compute timer and the cross-rank parameter check. The loop itself is ``training/loop.py``;
checkpoint files are ``models/checkpoint.py`` (re-exported here).
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str = "gloo") -> DistInfo:
    """Join the process group that ``torchrun`` describes (WORLD_SIZE/RANK env); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(n: int, info: DistInfo) -> slice:
    """This rank's contiguous share of ``n`` items (every rank gets the same count; extras dropped)."""
    per = n // info.world_size
    return slice(info.rank * per, (info.rank + 1) * per)


@dataclass
class StepTimer:
    """Accumulates time waiting on data vs time computing (producer-consumer loaders show ~0 wait)."""

    wait_s: float = 0.0
    compute_s: float = 0.0
    _t: float = field(default_factory=time.perf_counter)

    def data_ready(self) -> None:
        now = time.perf_counter()
        self.wait_s += now - self._t
        self._t = now

    def step_done(self) -> None:
        now = time.perf_counter()
        self.compute_s += now - self._t
        self._t = now

    def as_dict(self) -> dict[str, float]:
        total = self.wait_s + self.compute_s
        return {"data_wait_s": round(self.wait_s, 4), "compute_s": round(self.compute_s, 4),
                "data_wait_fraction": round(self.wait_s / total, 4) if total else 0.0}


class TrainLog:
    """Append-only JSONL log (``train_log.jsonl``), written by rank 0 only, also echoed to stdout."""

    def __init__(self, path: str | Path | None, info: DistInfo | None = None, echo: bool = True):
        self.path = Path(path) if path else None
        self.enabled = info is None or info.is_main
        self.echo = echo
        if self.path and self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, **record: Any) -> None:
        if not self.enabled:
            return
        line = json.dumps(record, default=float)
        if self.path:
            with self.path.open("a") as f:
                f.write(line + "\n")
        if self.echo:
            print(line, flush=True)


def params_equal_across_ranks(model: torch.nn.Module) -> bool:
    """True when every parameter is bitwise identical on all ranks (used by the DDP tests)."""
    if not (dist.is_available() and dist.is_initialized()):
        return True
    ok = torch.tensor(1)
    for p in model.parameters():
        ref = p.detach().clone()
        dist.broadcast(ref, src=0)
        if not torch.equal(ref, p.detach()):
            ok = torch.tensor(0)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())
