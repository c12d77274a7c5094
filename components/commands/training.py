"""What ``homefeed train pinsage|pinnerformer|ranker`` share: one launcher call (components.launch), the
same path the Kubeflow train_* steps take: in this process, or torchrun with ``--nproc-per-node``."""

from __future__ import annotations

import argparse
from typing import Any

from components.launch import launch, train_call


def add_launch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--nproc-per-node", type=int, default=1, help="processes for DDP (torchrun, gloo); default 1")


def run_training(model: str, args: argparse.Namespace, **inputs: str | None) -> dict[str, Any]:
    """Train ``model`` with the parsed CLI arguments; ``inputs`` are the input paths; returns rank 0's metrics."""
    call = train_call(model, args.experiment, args.overrides, args.out, resume=args.resume, **inputs)
    return launch(call, nproc_per_node=args.nproc_per_node)
