"""``homefeed eval pinsage|pinnerformer|ranker``: the one evaluation harness behind the CLI.

Every command takes ``--seeds`` with one meaning (:func:`components.evaluation.protocol.parse_seeds`): a
comma-separated list of training seeds, ``--seeds 0,1,2`` = three trainings per variant with seeds 0, 1
and 2, ``--seeds 3`` = one training with seed 3. Every command writes one
:class:`components.evaluation.result.EvalResult` as ``OUT/<model>_<dataset>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from components import config
from components.cli import add_config_args
from components.evaluation import pinnerformer_harness
from components.evaluation import pinsage as pinsage_eval
from components.evaluation import ranker as ranker_eval
from components.evaluation.protocol import PERIODS, parse_seeds
from components.evaluation.result import EvalResult, to_markdown

SEEDS_HELP = "comma-separated training seeds, e.g. 0,1,2 (three trainings per variant); default 0,1,2"


def _command(fallback: str) -> str:
    return "homefeed " + shlex.join(sys.argv[1:]) if sys.argv and "homefeed" in sys.argv[0] else fallback


def _done(result: EvalResult, out: str) -> int:
    print(to_markdown(result))
    print(f"written: {Path(out) / result.stem}.json and .md")
    return 0


def _pinsage(args: argparse.Namespace) -> int:
    cfg = config.load(args.experiment, args.overrides, model="pinsage")
    seeds = parse_seeds(args.seeds)
    result = pinsage_eval.compare(cfg, args.data, args.out, seeds=seeds, period=args.period,
                                  baselines=not args.no_baselines, variants=pinsage_eval.select_variants(args.variants),
                                  command=_command(f"homefeed eval pinsage --experiment {args.experiment} "
                                                   f"--data {args.data} --out {args.out} --seeds {args.seeds}"))
    return _done(result, args.out)


def _pinnerformer(args: argparse.Namespace) -> int:
    result = pinnerformer_harness.run_eval(
        args.data, args.out, args.pin_embeddings, args.experiment, args.overrides, seeds=parse_seeds(args.seeds),
        period=args.period, baselines=not args.no_baselines, rows=pinnerformer_harness.parse_rows(args.rows),
        command=_command(f"homefeed eval pinnerformer --experiment {args.experiment} --data {args.data} "
                         f"--out {args.out} --seeds {args.seeds}"))
    return _done(result, args.out)


def _ranker(args: argparse.Namespace) -> int:
    experiments = [e.strip() for e in args.experiments.split(",") if e.strip()]
    result = ranker_eval.evaluate(experiments, args.data, args.out, seeds=parse_seeds(args.seeds),
                                  overrides=args.overrides, command=_command(""), baselines=not args.no_baselines,
                                  period=args.period,
                                  user_embeddings=args.user_embeddings, pin_embeddings=args.pin_embeddings)
    print(f"chart: {Path(args.out) / result.stem}.png")
    return _done(result, args.out)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="data directory (homefeed data prepare)")
    p.add_argument("--out", default="out/eval", help="output directory (default out/eval)")
    p.add_argument("--seeds", default="0,1,2", help=SEEDS_HELP)
    p.add_argument("--no-baselines", action="store_true", help="skip the baselines (popularity, ...)")


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    v = groups["eval"].add_parser("pinsage", help="related pins: baselines, content-only, mean pooling, "
                                                   "no hard negatives, full PinSage")
    add_config_args(v, default_experiment="pinsage_eval")
    _common(v)
    v.add_argument("--period", choices=PERIODS, default="all",
                   help="held-out pairs from the val (first half), test (second half) or all evaluation days")
    v.add_argument("--variants", default="", help="comma-separated subset of content-only, mean-pooling, "
                                                  "no-hard-negatives, full (default: all)")
    v.set_defaults(func=_pinsage)

    e = groups["eval"].add_parser("pinnerformer", help="Recall@10: objectives, negatives, logQ, daily vs real-time")
    add_config_args(e, default_experiment="pinnerformer_eval")
    _common(e)
    e.add_argument("--period", choices=PERIODS, default="all",
                   help="held-out users: val or test half, or all of them")
    e.add_argument("--pin-embeddings", default=None, help="pin embedding table (default: content baseline)")
    e.add_argument("--rows", default="", help="comma-separated objective/negatives/logq|nologq rows, e.g. "
                                              "dense_all_action/mixed/logq,next_action/mixed/logq (default: all)")
    e.set_defaults(func=_pinnerformer)

    r = groups["eval"].add_parser("ranker", help="train and compare ranker architectures and baselines on one split")
    r.add_argument("--experiments", default="ranker_mlp_tiny,ranker_masknet_dcnv2_tiny,ranker_masknet_dcnv2_pepnet_tiny",
                   help="comma-separated ranker experiments")
    _common(r)
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override applied to every experiment (repeatable)")
    r.add_argument("--period", choices=PERIODS, default="all",
                   help="score the requests of the val (first half), test (second half) or all evaluation days")
    r.add_argument("--user-embeddings", default=None)
    r.add_argument("--pin-embeddings", default=None)
    r.set_defaults(func=_ranker)
