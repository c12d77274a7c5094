"""``homefeed train pinsage``, ``homefeed embed pins``, ``homefeed eval pinsage``."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from components import config
from components.cli import add_config_args


def _train(args: argparse.Namespace) -> int:
    cfg = config.load(args.experiment, args.overrides, model="pinsage")  # fail fast on a bad config
    if args.nproc_per_node > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc_per_node}",
               "-m", "components.training.pinsage", "--experiment", args.experiment, "--data", args.data,
               "--out", args.out] + [a for o in args.overrides for a in ("--set", o)] + (["--resume"] if args.resume else [])
        print("running:", shlex.join(cmd), flush=True)
        return subprocess.call(cmd, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    from components.training.pinsage import train

    metrics = train(cfg, args.data, args.out, resume=args.resume)
    print(f"model written to {args.out} ({metrics['steps']} steps, final loss {metrics['final_loss']:.4f})")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from components.inference.pinsage import embed_pins

    path = embed_pins(args.model, args.data, Path(args.out) / "pinsage", version=args.version)
    print(f"pin embeddings published: {path}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from components.training.pinsage_eval import compare, to_markdown

    cfg = config.load(args.experiment, args.overrides, model="pinsage")
    command = "homefeed " + shlex.join(sys.argv[1:]) if sys.argv and "homefeed" in sys.argv[0] else \
        f"homefeed eval pinsage --data {args.data} --out {args.out} --experiment {args.experiment}"
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
    result = compare(cfg, args.data, args.out, command=command, seeds=seeds)
    print(to_markdown(result))
    print(f"written: {Path(args.out) / ('pinsage_' + result['dataset'] + '.md')} and .json")
    return 0


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    t = groups["train"].add_parser("pinsage", help="train PinSage on a data directory")
    add_config_args(t, default_experiment="pinsage_tiny")
    t.add_argument("--data", required=True, help="data directory (homefeed data prepare)")
    t.add_argument("--out", required=True, help="model directory to write")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    t.add_argument("--nproc-per-node", type=int, default=1, help="processes for DDP (torchrun, gloo)")
    t.set_defaults(func=_train)

    e = groups["embed"].add_parser("pins", help="layer-wise PinSage inference; publishes <out>/pinsage/v=<version>")
    e.add_argument("--model", required=True, help="PinSage model directory")
    e.add_argument("--data", required=True, help="data directory")
    e.add_argument("--out", required=True, help="embeddings root")
    e.add_argument("--version", default=None, help="version name (default: UTC time)")
    e.set_defaults(func=_embed)

    v = groups["eval"].add_parser("pinsage", help="compare content-only, mean pooling, no hard negatives, full")
    add_config_args(v, default_experiment="pinsage_eval")
    v.add_argument("--data", required=True, help="data directory")
    v.add_argument("--out", default="out/eval", help="output folder (default out/eval)")
    v.add_argument("--seeds", default=None, help="comma-separated training seeds, e.g. 0,1,2 (default: the config's)")
    v.set_defaults(func=_eval)
