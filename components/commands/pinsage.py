"""``homefeed train pinsage``, ``homefeed embed pins`` (``eval pinsage`` is in commands/eval.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from components.cli import add_config_args
from components.commands.training import add_launch_args, run_training


def _train(args: argparse.Namespace) -> int:
    metrics = run_training("pinsage", args, data_dir=args.data)
    print(f"model written to {args.out} ({metrics['steps']} steps, final loss {metrics['final_loss']:.4f})")
    return 0


def _embed(args: argparse.Namespace) -> int:
    # torch: only this command needs it (the train commands in this group launch torchrun without importing it)
    from components.inference.pinsage import embed_pins

    path = embed_pins(args.model, args.data, Path(args.out) / "pinsage", version=args.version)
    print(f"pin embeddings published: {path}")
    return 0


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    t = groups["train"].add_parser("pinsage", help="train PinSage on a data directory")
    add_config_args(t, default_experiment="pinsage_tiny")
    t.add_argument("--data", required=True, help="data directory (homefeed data prepare)")
    t.add_argument("--out", required=True, help="model directory to write")
    add_launch_args(t)
    t.set_defaults(func=_train)

    e = groups["embed"].add_parser("pins", help="layer-wise PinSage inference; publishes <out>/pinsage/v=<version>")
    e.add_argument("--model", required=True, help="PinSage model directory")
    e.add_argument("--data", required=True, help="data directory")
    e.add_argument("--out", required=True, help="embeddings root")
    e.add_argument("--version", default=None, help="version name (default: UTC time)")
    e.set_defaults(func=_embed)
