"""``homefeed eval pinsage|pinnerformer|ranker|merge``: the one evaluation harness behind the CLI.

Every command takes ``--seeds`` with one meaning (:func:`components.evaluation.protocol.parse_seeds`): a
comma-separated list of training seeds, ``--seeds 0,1,2`` = three trainings per variant with seeds 0, 1
and 2, ``--seeds 3`` = one training with seed 3. Every command writes one
:class:`components.evaluation.result.EvalResult` as ``OUT/<model>_<dataset>.json`` and ``.md``;
``eval merge`` joins results run as separate commands (:mod:`components.evaluation.merge`).
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
from components.evaluation.merge import merge_results
from components.evaluation.protocol import PERIODS, parse_seeds
from components.evaluation.result import EvalResult, read_result, to_markdown, write_result

SEEDS_HELP = "comma-separated training seeds, e.g. 0,1,2 (three trainings per variant); default 0,1,2"


def _command(fallback: str) -> str:
    """The command line as typed (``homefeed eval ...`` or ``python -m components.cli eval ...``), else ``fallback``
    (a library caller such as a test passing its own argv)."""
    from_cli = sys.argv[1:2] == ["eval"] and ("homefeed" in sys.argv[0] or sys.argv[0].endswith("cli.py"))
    return "homefeed " + shlex.join(sys.argv[1:]) if from_cli else fallback


def _ordering(text: str) -> tuple[str, str, str]:
    """``'A>B:metric'`` -> (A, B, metric)."""
    head, sep, metric = text.rpartition(":")
    better, gt, worse = head.partition(">")
    if not (sep and gt and better.strip() and worse.strip() and metric.strip()):
        raise config.ConfigError(f"--ordering: expected 'BETTER>WORSE:METRIC' (variant names as in the table), got '{text}'")
    return better.strip(), worse.strip(), metric.strip()


def _merge(args: argparse.Namespace) -> int:
    results = []
    for path in args.results:
        if not Path(path).is_file():
            raise config.ConfigError(f"eval merge: {path}: no such result file")
        try:
            results.append(read_result(path))
        except ValueError as e:
            raise config.ConfigError(str(e)) from None
    model = results[0].model if results else ""
    standard = {"pinsage": pinsage_eval.ORDERINGS, "pinnerformer": pinnerformer_harness.ORDERINGS}.get(model, ())
    if model == "ranker":  # the README's orderings among the variants of the union
        standard = tuple(ranker_eval.orderings(list(dict.fromkeys(v for r in results for v in r.variants))))
    extra = [_ordering(o) for o in args.ordering]
    merged = merge_results(results, names=list(args.results), orderings=[*standard, *extra],
                           command=_command(f"homefeed eval merge {shlex.join(args.results)} --out {args.out}"),
                           drop_notes=args.drop_note)
    for better, worse, metric in extra:
        if not any((c.better, c.worse, c.metric) == (better, worse, metric) for c in merged.comparisons):
            raise config.ConfigError(f"--ordering '{better}>{worse}:{metric}': no such variant or metric; variants "
                                     f"{merged.variants}, metrics {list(merged.metrics)}")
    write_result(merged, args.out)
    if merged.model == "ranker":  # the ranker harness's chart, redrawn for the merged seeds
        ranker_eval.plot(merged, Path(args.out) / f"{merged.stem}.png")
    return _done(merged, args.out)


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
        row_experiments=pinnerformer_harness.parse_row_experiments(args.row_experiment),
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
    e.add_argument("--row-experiment", action="append", default=[], metavar="ROW=EXPERIMENT",
                   help="train ROW (as in --rows) with EXPERIMENT's values, e.g. its tuned study's, instead of "
                        "--experiment's; the measurement fields must match (repeatable)")
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

    m = groups["eval"].add_parser("merge", help="merge results of one model, dataset and protocol run as separate "
                                                "commands (e.g. one seed each) into one, orderings recomputed")
    m.add_argument("results", nargs="+", metavar="RESULT.json", help="EvalResult files (OUT/<model>_<dataset>.json)")
    m.add_argument("--out", required=True, help="output directory: writes <model>_<dataset>.json and .md there")
    m.add_argument("--ordering", action="append", default=[], metavar="'BETTER>WORSE:METRIC'",
                   help="an extra ordering to test (paired over seeds), beside the model's standard ones (repeatable)")
    m.add_argument("--drop-note", action="append", default=[], metavar="TEXT",
                   help="leave out the inputs' notes containing TEXT (a note the merge makes stale; repeatable)")
    m.set_defaults(func=_merge)
