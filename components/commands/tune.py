"""``homefeed tune pinsage|pinnerformer|ranker``: Optuna on the validation period, and the Katib Experiment.

    homefeed tune pinsage --data D --out out/tune            # TRIALS[model] trials; best params as YAML
    homefeed tune pinsage --katib --out out/tune             # only the Katib manifest (for a cluster)
    homefeed tune pinsage --trial --data D --set lr=0.001    # one trial, as Katib runs it: prints <time> mrr=...
    homefeed tune pinsage --data D --no-prune                # every trial to its end (no median pruning)
    homefeed tune pinsage --data D --trial-seeds 0,1         # each trial = the mean of two trainings
    homefeed tune ranker --experiment E --katib              # objective: E's val_metric (hit3_save, auc_save...)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

from components import config
from components.data import durable
from components.evaluation import tuning
from components.evaluation.katib import build_experiment
from components.evaluation.protocol import parse_seeds
from components.evaluation.search_space import DEFAULT_EXPERIMENT, SPACES, TRIALS, objective_name
from components.steps.images import CPU_IMAGE


def _run(args: argparse.Namespace) -> int:
    model = args.command
    experiment = args.experiment or DEFAULT_EXPERIMENT[model]
    trials = args.trials if args.trials is not None else TRIALS[model]
    prune = not args.no_prune
    overrides = config.parse_overrides(args.overrides)
    seeds = parse_seeds(args.trial_seeds, default=args.seed, flag="--trial-seeds")
    # a bad experiment or value fails here; the ranker's objective is the experiment's val_metric
    name = objective_name(model, config.load(experiment, overrides, model=model))
    if args.katib:
        manifest = build_experiment(model, experiment, trials, image=args.image, seed=args.seed,
                                    early_stopping=tuning.katib_early_stopping(prune), objective=name,
                                    overrides=overrides, trial_seeds=seeds)
        path = durable.atomic_write_bytes(Path(args.out) / f"{model}_katib.yaml", yaml.safe_dump(manifest, sort_keys=False).encode())
        print(f"written: {path}")
        return 0
    if args.data is None:
        raise config.ConfigError(f"tune {model}: --data is required (except with --katib)")
    if args.trial:
        # each validation's value, then the best weights' score: Katib's collector reads every line (its
        # medianstop stops the Job on them) and takes the last as the objective (metricStrategies: latest)
        reports = tuning.TrialReports(echo=name) if prune else None
        with tempfile.TemporaryDirectory(prefix=f"homefeed-trial-{model}-") as work:
            value, _ = tuning.mean_validation_score(model, args.data, experiment, overrides, seeds, work,
                                                    report=reports)
        print(tuning.katib_line(name, value), flush=True)
        return 0
    summary = tuning.tune(model, args.data, args.out, experiment, trials, seed=args.seed,
                          overrides=overrides, prune=prune, trial_seeds=seeds)
    print(f"best {summary['objective']}: {summary['best_value']:.4f} with {summary['best_params']}; "
          f"{summary['pruned']} of {summary['trials']} trials pruned, {summary['seconds']:.0f} s of trials")
    print(f"written: {Path(args.out) / (summary['tuned_experiment'] + '.yaml')}, {model}_trials.json, {model}_katib.yaml")
    return 0


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    sub = groups["tune"]
    for model in SPACES:
        p = sub.add_parser(model, help=f"search {', '.join(x.name for x in SPACES[model])} for {model}")
        p.add_argument("--experiment", default=None, help=f"base experiment (default {DEFAULT_EXPERIMENT[model]})")
        p.add_argument("--data", default=None, help="data directory")
        p.add_argument("--out", default="out/tune", help="output directory (default out/tune)")
        p.add_argument("--trials", type=int, default=None, help=f"trial budget (default {TRIALS[model]})")
        p.add_argument("--seed", type=int, default=0, help="training seed of every trial and the sampler's seed")
        p.add_argument("--trial-seeds", default=None, metavar="SEEDS",
                       help="comma-separated training seeds of every trial, scored by their mean (e.g. 0,1: twice "
                            "the cost, far less luck in the best trial); default: --seed alone")
        p.add_argument("--trial", action="store_true", help="run one trial with --set values; print name=value")
        p.add_argument("--katib", action="store_true", help="only write the Katib Experiment manifest")
        p.add_argument("--no-prune", action="store_true",
                       help="no median pruning: every trial trains to its end (and no Katib early stopping)")
        p.add_argument("--image", default=CPU_IMAGE, help="trial image for the Katib manifest")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="a parameter value (with --trial) or a fixed override of every trial (repeatable)")
        p.set_defaults(func=_run)
