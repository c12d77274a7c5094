"""``homefeed train pinnerformer``, ``embed users``, ``embed pin-tower``, ``eval pinnerformer``."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from components import config
from components.cli import add_config_args


def _train(args: argparse.Namespace) -> int:
    cfg = config.load(args.experiment, args.overrides, model="pinnerformer")  # errors early, with the key
    if args.nproc_per_node > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc_per_node}",
               "-m", "components.training.pinnerformer", "--experiment", args.experiment, "--data", args.data,
               "--pin-embeddings", args.pin_embeddings, "--out", args.out]
        for item in args.overrides:
            cmd += ["--set", item]
        if args.resume:
            cmd.append("--resume")
        return subprocess.call(cmd, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    from components.training.pinnerformer import train

    metrics = train(cfg, args.data, args.pin_embeddings, args.out, resume=args.resume)
    print(json.dumps(metrics, indent=2, default=float))
    return 0


def _embed_users(args: argparse.Namespace) -> int:
    from components.inference.users import embed_users

    path = embed_users(args.model, args.data, args.pin_embeddings, args.out, args.date, since=args.since)
    print(f"published {path}")
    return 0


def _embed_pin_tower(args: argparse.Namespace) -> int:
    from components.inference.users import embed_pin_tower

    path = embed_pin_tower(args.model, args.pin_embeddings, args.out, version=args.version)
    print(f"published {path}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from components.training.pinnerformer_eval import run_eval

    command = "homefeed " + " ".join(sys.argv[1:]) if sys.argv and "homefeed" in sys.argv[0] else None
    result = run_eval(args.data, args.out, args.pin_embeddings, args.experiment, args.overrides, command=command)
    print(open(os.path.join(args.out, f"pinnerformer_{result['dataset']}.md")).read())
    return 0


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    t = groups["train"].add_parser("pinnerformer", help="train PinnerFormer (user embeddings from action sequences)")
    add_config_args(t, default_experiment="pinnerformer")
    t.add_argument("--data", required=True, help="data directory")
    t.add_argument("--pin-embeddings", required=True, help="pin embedding table (PinSage output) or store root")
    t.add_argument("--out", required=True, help="model directory to write")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    t.add_argument("--nproc-per-node", type=int, default=1, help="processes (torchrun, gloo); default 1")
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

    e = groups["eval"].add_parser("pinnerformer", help="Recall@10: objectives, negatives, logQ, daily vs real-time")
    add_config_args(e, default_experiment="pinnerformer_eval")
    e.add_argument("--data", required=True, help="data directory")
    e.add_argument("--out", default="out/eval", help="output directory (default out/eval)")
    e.add_argument("--pin-embeddings", default=None, help="pin embedding table (default: content baseline)")
    e.set_defaults(func=_eval)
