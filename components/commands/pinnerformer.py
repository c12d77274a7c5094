"""``homefeed train pinnerformer``, ``embed users``, ``embed pin-tower`` (``eval pinnerformer``: commands/eval.py)."""

from __future__ import annotations

import argparse
import json

from components.cli import add_config_args
from components.commands.training import add_launch_args, run_training


def _train(args: argparse.Namespace) -> int:
    metrics = run_training("pinnerformer", args, data_dir=args.data, pin_embeddings=args.pin_embeddings)
    print(json.dumps(metrics, indent=2, default=float))
    return 0


def _embed_users(args: argparse.Namespace) -> int:
    # torch: only this command needs it (the train commands in this group launch torchrun without importing it)
    from components.inference.users import embed_users

    path = embed_users(args.model, args.data, args.pin_embeddings, args.out, args.date, since=args.since)
    print(f"published {path}")
    return 0


def _embed_pin_tower(args: argparse.Namespace) -> int:
    # torch: only this command needs it (the train commands in this group launch torchrun without importing it)
    from components.inference.users import embed_pin_tower

    path = embed_pin_tower(args.model, args.pin_embeddings, args.out, version=args.version)
    print(f"published {path}")
    return 0


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    t = groups["train"].add_parser("pinnerformer", help="train PinnerFormer (user embeddings from action sequences)")
    add_config_args(t, default_experiment="pinnerformer")
    t.add_argument("--data", required=True, help="data directory")
    t.add_argument("--pin-embeddings", required=True, help="pin embedding table (PinSage output) or store root")
    t.add_argument("--out", required=True, help="model directory to write")
    add_launch_args(t)
    t.set_defaults(func=_train)

    u = groups["embed"].add_parser("users", help="daily incremental PinnerFormer user embeddings for one day")
    u.add_argument("--date", required=True, help="YYYY-MM-DD: embed users active on this day")
    u.add_argument("--model", required=True, help="PinnerFormer model directory")
    u.add_argument("--data", required=True, help="data directory")
    u.add_argument("--pin-embeddings", required=True, help="pin embedding table (PinSage output) or store root")
    u.add_argument("--out", required=True, help="root; publishes ROOT/users/v=<date>")
    u.add_argument("--since", default=None, help="YYYY-MM-DD: also embed users active since this day (first run, backfill)")
    u.set_defaults(func=_embed_users)

    p = groups["embed"].add_parser("pin-tower", help="PinnerFormer pin-tower embeddings of every pin")
    p.add_argument("--model", required=True, help="PinnerFormer model directory")
    p.add_argument("--pin-embeddings", required=True, help="pin embedding table (PinSage output) or store root")
    p.add_argument("--out", required=True, help="root; publishes ROOT/pins/v=<version>")
    p.add_argument("--version", default=None, help="version name (default: today, UTC)")
    p.set_defaults(func=_embed_pin_tower)
