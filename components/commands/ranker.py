"""``homefeed train ranker``, ``homefeed eval ranker``, ``homefeed export ranker``."""

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
    cfg = config.load(args.experiment, args.overrides, model="ranker")  # fail fast on a bad config
    if args.nproc_per_node > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc_per_node}",
               "-m", "components.training.ranker", "--experiment", args.experiment, "--data", args.data,
               "--out", args.out] + [a for o in args.overrides for a in ("--set", o)]
        cmd += (["--user-embeddings", args.user_embeddings] if args.user_embeddings else [])
        cmd += (["--pin-embeddings", args.pin_embeddings] if args.pin_embeddings else [])
        cmd += (["--resume"] if args.resume else [])
        print("running:", shlex.join(cmd), flush=True)
        return subprocess.call(cmd, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    from components.training.ranker import train

    m = train(cfg, args.data, args.out, args.user_embeddings, args.pin_embeddings, resume=args.resume)
    print(f"model written to {args.out} ({m['steps']} steps; eval HIT@3/save {m.get('hit3_save', float('nan')):.4f}, "
          + ", ".join(f"AUC {t} {m[f'auc_{t}']:.4f}" for t in cfg.tasks) + ")")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from components.training.ranker_eval import evaluate, to_markdown

    command = "homefeed " + shlex.join(sys.argv[1:]) if sys.argv and "homefeed" in sys.argv[0] else None
    experiments = [e.strip() for e in args.experiments.split(",") if e.strip()]
    result = evaluate(experiments, args.data, args.out, seeds=args.seeds, overrides=args.overrides,
                      command=command, user_embeddings=args.user_embeddings, pin_embeddings=args.pin_embeddings)
    print(to_markdown(result))
    print(f"written: {Path(args.out) / ('ranker_' + result['dataset'])}.md/.json/.png")
    return 0


def _export(args: argparse.Namespace) -> int:
    from components.serving.export import build_tensorrt, export_ranker, trtexec_command
    from components.serving.ranker_io import ONNX_FILE

    out = export_ranker(args.model, args.out, data_dir=args.data)
    print(f"exported to {out}: {ONNX_FILE}, preprocess.json, config.yaml (ONNX Runtime matches torch within 1e-5)")
    onnx_path, plan = out / ONNX_FILE, out / ("model_fp16.plan" if args.fp16 else "model.plan")
    if args.tensorrt:
        try:
            path = build_tensorrt(onnx_path, plan, fp16=args.fp16)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"TensorRT plan: {path}")
    else:
        print("TensorRT plan on a GPU node: " + shlex.join(trtexec_command(onnx_path, plan, fp16=args.fp16)))
    return 0


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    t = groups["train"].add_parser("ranker", help="train the multi-task ranker on a data directory")
    add_config_args(t, default_experiment="ranker_tiny")
    t.add_argument("--data", required=True, help="data directory (homefeed data prepare)")
    t.add_argument("--out", required=True, help="model directory to write")
    t.add_argument("--user-embeddings", default=None, help="user embedding table or store (default: content baseline)")
    t.add_argument("--pin-embeddings", default=None, help="pin embedding table or store (default: content baseline)")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    t.add_argument("--nproc-per-node", type=int, default=1, help="processes for DDP (torchrun, gloo)")
    t.set_defaults(func=_train)

    e = groups["eval"].add_parser("ranker", help="train and compare ranker architectures on one split")
    e.add_argument("--experiments", default="ranker_mlp_tiny,ranker_masknet_dcnv2_tiny,ranker_masknet_dcnv2_pepnet_tiny",
                   help="comma-separated ranker experiments")
    e.add_argument("--seeds", type=int, default=3, help="seeds per experiment (mean/std of HIT@3)")
    e.add_argument("--data", required=True, help="data directory")
    e.add_argument("--out", default="out/eval", help="output directory (default out/eval)")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override applied to every experiment (repeatable)")
    e.add_argument("--user-embeddings", default=None)
    e.add_argument("--pin-embeddings", default=None)
    e.set_defaults(func=_eval)

    x = groups["export"].add_parser("ranker", help="export a trained ranker to ONNX (+ TensorRT on GPU nodes)")
    x.add_argument("--model", required=True, help="model directory (homefeed train ranker)")
    x.add_argument("--out", required=True, help="export directory to write")
    x.add_argument("--data", default=None, help="data directory for the real-batch parity check "
                                                 "(default: the one the model was trained on)")
    x.add_argument("--tensorrt", action="store_true", help="also build a TensorRT plan (needs tensorrt and a GPU)")
    x.add_argument("--fp16", action="store_true", help="FP16 TensorRT plan")
    x.set_defaults(func=_export)
