"""``homefeed train ranker``, ``homefeed export ranker`` (``eval ranker`` is in commands/eval.py)."""

from __future__ import annotations

import argparse
import shlex
import sys

from components import config
from components.cli import add_config_args
from components.commands.training import add_launch_args, run_training
from components.evaluation.result import fmt
from components.serving.ranker_io import ONNX_FILE


def _train(args: argparse.Namespace) -> int:
    m = run_training("ranker", args, data_dir=args.data, user_embeddings=args.user_embeddings,
                     pin_embeddings=args.pin_embeddings)
    tasks = config.load(args.experiment, args.overrides, model="ranker").tasks
    print(f"model written to {args.out} ({m['steps']} steps; eval HIT@3/save {fmt(m.get('hit3_save'))}, "
          + ", ".join(f"AUC {t} {fmt(m.get(f'auc_{t}'))}" for t in tasks) + ")")
    return 0


def _export(args: argparse.Namespace) -> int:
    # torch: only this command needs it (the train commands in this group launch torchrun without importing it)
    from components.serving.export import build_tensorrt, export_ranker, trtexec_command

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
    add_launch_args(t)
    t.set_defaults(func=_train)

    x = groups["export"].add_parser("ranker", help="export a trained ranker to ONNX (+ TensorRT on GPU nodes)")
    x.add_argument("--model", required=True, help="model directory (homefeed train ranker)")
    x.add_argument("--out", required=True, help="export directory to write")
    x.add_argument("--data", default=None, help="data directory for the real-batch parity check "
                                                 "(default: the one the model was trained on)")
    x.add_argument("--tensorrt", action="store_true", help="also build a TensorRT plan (needs tensorrt and a GPU)")
    x.add_argument("--fp16", action="store_true", help="FP16 TensorRT plan")
    x.set_defaults(func=_export)
