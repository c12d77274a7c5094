"""Hyperparameter tuning under the validation / test protocol: ``homefeed tune <model>`` with Optuna.

One search space per model (:data:`SPACES`), one fixed trial budget per model (:data:`TRIALS`, the same for
every variant that is compared), one objective measured on the *validation* period only
(:mod:`components.evaluation.protocol`): PinSage's MRR on held-out pairs of the validation days, PinnerFormer's
Recall@10 on the validation half of the held-out users, the ranker's ``val_metric`` (HIT@3/save by default, or
``auc_<task>``: :func:`components.evaluation.search_space.objective_name`) on the validation days' requests, the
metric its early stopping validates. The test period is never scored while tuning; ``homefeed eval ... --period test`` reports it
once, with the tuned experiment.

The best parameters are written as a YAML experiment (``<experiment>_tuned``, extending the base one) and
the same search space becomes a Katib ``Experiment`` (:mod:`components.evaluation.katib`) for clusters.

Pruning (on unless ``prune=False``): every trial reports its validation metric after each validation
(``trial.report(value, step=validation index)``, through the training loop's optional ``Validation.report``
hook, so nothing below this layer knows Optuna), and a :class:`optuna.pruners.MedianPruner` stops a trial whose
best value so far is below the median of the earlier trials' values at the same validation. Trial 0 (the
config's own values) reports but is never pruned. Pruning needs validation during training (``patience`` > 0,
the ``*_eval`` experiments); without it a trial has no intermediate values and runs to its end.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml

from components import config as config_mod
from components.data import durable
from components.data.validate import load_events
from components.evaluation import pinsage as pinsage_eval
from components.evaluation.katib import build_experiment
from components.evaluation.pinnerformer import recall_at_split
from components.evaluation.pinnerformer_harness import content_pin_table, early_stopping, heldout_half
from components.evaluation.protocol import Period, parse_seeds, period_bounds
from components.evaluation.ranker import ranker_period_metrics
from components.evaluation.result import rfc3339_utc
from components.evaluation.search_space import DEFAULT_EXPERIMENT, SPACES, TRIALS, Model, Param, objective_name
from components.graph.graph import build_graph
from components.models.pinnerformer import load_model as load_pinnerformer
from components.training import pinnerformer as pinnerformer_training
from components.training import ranker as ranker_training
from components.training.pinnerformer_data import build_sequences

# MedianPruner settings. 5 startup trials: the median at a validation is taken over at least 5 finished trials
# (fewer make it one or two runs' noise; 5 of a 20-trial budget is Optuna's default). 2 warm-up validations: no
# trial is pruned at its first two validations (index 0 and 1), where a low learning rate that ends best can
# still trail (the *_eval experiments validate each epoch; their runs last 3-8 (ranker) to 12-30 (PinSage)
# validations). Katib's medianstop gets the same numbers (katib.build_experiment: min_trials_required 5,
# start_step 3 = the third reported value).
PRUNE_STARTUP_TRIALS = 5
PRUNE_WARMUP_VALIDATIONS = 2
Report = Callable[[int, float | None], bool]  # training.loop.Validation.report: (validation index, value) -> stop


def katib_early_stopping(prune: bool = True) -> tuple[int, int] | None:
    """Katib medianstop's (min_trials_required, start_step) matching :func:`default_pruner`, or None: Katib counts
    a trial's reported values from 1 and applies the rule from the ``start_step``-th on, Optuna's warm-up counts
    validation indices from 0, so start_step = warm-up + 1."""
    return (PRUNE_STARTUP_TRIALS, PRUNE_WARMUP_VALIDATIONS + 1) if prune else None


DEFAULT_PRUNING = f"MedianPruner(n_startup_trials={PRUNE_STARTUP_TRIALS}, n_warmup_steps={PRUNE_WARMUP_VALIDATIONS})"


def default_pruner() -> optuna.pruners.BasePruner:
    """The study's pruner: median stopping with the settings above."""
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP_TRIALS, n_warmup_steps=PRUNE_WARMUP_VALIDATIONS)


def katib_line(name: str, value: float) -> str:
    """``<RFC 3339 UTC time> name=value``: Katib's StdOut/File collector takes the line's first word as the
    observation's time when it parses as RFC 3339 (early stopping needs the order of the values) and reads
    ``name=value`` with its default filter."""
    return f"{rfc3339_utc(microseconds=True)} {name}={value:.6f}"


@dataclasses.dataclass
class TrialReports:
    """One trial's validation values, the ``report`` hook of its training: each value is reported to the Optuna
    ``trial`` (when given) and the pruner asked whether to stop (only when ``prune``: never for trial 0);
    ``echo`` prints each value as a Katib line (``homefeed tune --trial``)."""

    trial: optuna.Trial | None = None
    prune: bool = False
    echo: str | None = None  # the objective's name to print, or None
    values: list[float | None] = dataclasses.field(default_factory=list)
    pruned_at: int | None = None

    def __call__(self, index: int, value: float | None) -> bool:
        self.values.append(value)
        if value is None:  # undefined (e.g. no save in the period): nothing to report or compare
            return False
        if self.echo:
            print(katib_line(self.echo, value), flush=True)
        if self.trial is None:
            return False
        self.trial.report(value, index)
        if self.prune and self.trial.should_prune():
            self.pruned_at = index
            return True
        return False


def suggest(trial: optuna.Trial, space: list[Param]) -> dict[str, Any]:
    """Optuna's suggestion for every parameter of ``space``."""
    out: dict[str, Any] = {}
    for p in space:
        if p.kind == "float":
            out[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
        elif p.kind == "int":
            out[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
        else:
            out[p.name] = trial.suggest_categorical(p.name, list(p.choices))
    return out


def current_params(cfg: Any, space: list[Param]) -> dict[str, Any]:
    """The config's own value of every parameter of ``space``, clipped into its range (Optuna's first trial)."""
    out: dict[str, Any] = {}
    for p in space:
        value = getattr(cfg, p.name)
        if p.kind == "categorical":
            out[p.name] = value if value in p.choices else p.choices[0]
        else:
            value = min(max(value, p.low), p.high)
            out[p.name] = int(value) if p.kind == "int" else float(value)
    return out


def validation_score(model: Model, data_dir: str | Path, experiment: str, params: dict[str, Any], seed: int,
                     work_dir: str | Path, period: Period = "val", overrides: dict[str, Any] | None = None,
                     report: Report | None = None) -> float:
    """Train ``experiment`` with ``overrides`` then ``params`` and ``seed``, and return the objective on
    ``period`` (validation by default: the only period tuning looks at). With ``patience`` > 0 (the ``*_eval``
    experiments) a trial stops early on the validation period exactly as the evaluation harness does, so a
    trial costs what one evaluation run costs and scores its best validated weights. ``report`` is called with
    each validation (a :class:`TrialReports`); when it stopped training, :class:`optuna.TrialPruned` is raised
    instead of scoring."""
    overrides = {**(overrides or {}), **params, "seed": seed,
                 "checkpoint_every": 0 if model != "ranker" else 1_000_000_000}
    cfg = config_mod.load(experiment, overrides, model=model)
    work_dir = Path(work_dir)
    if model == "pinsage":
        graph = build_graph(data_dir, cfg.use_engagement_edges)
        pairs = pinsage_eval.heldout_pairs(data_dir, graph.pin_ids, cfg, period)
        val_pairs = pinsage_eval.heldout_pairs(data_dir, graph.pin_ids, cfg, "val") if cfg.patience > 0 else None
        emb, metrics = pinsage_eval.train_and_embed(cfg, data_dir, work_dir / "model", val_pairs, report=report)
        _raise_if_pruned(metrics)
        return pinsage_eval.ranking_metrics(emb, pairs, cfg.eval_pool)["mrr"]
    if model == "pinnerformer":
        pins_path = content_pin_table(data_dir, work_dir / "content_pins.parquet")
        table = pinnerformer_training.load_pin_table(pins_path)
        seqs = build_sequences(load_events(data_dir), table.ids)
        validation = early_stopping(cfg, Path(data_dir), table, seqs)
        if validation is not None and report is not None:
            validation = dataclasses.replace(validation, report=report)
        metrics = pinnerformer_training.train(cfg, data_dir, pins_path, work_dir / "model", evaluate=False,
                                              validation=validation)
        _raise_if_pruned(metrics)
        net, cfg_saved, extra = load_pinnerformer(work_dir / "model")
        users = heldout_half(np.asarray(extra["eval_users"], np.int64), period)
        r = recall_at_split(net, cfg_saved, data_dir, table, users, seqs)
        return float(r["recall@10"] or 0.0)
    val = period_bounds(data_dir, "val") if cfg.patience > 0 else None  # as the evaluation harness trains
    _raise_if_pruned(ranker_training.train(cfg, data_dir, work_dir / "model", val_period=val, report=report))
    # the metric early stopping validated (val_metric); an undefined one (no save / one class) scores 0
    return ranker_period_metrics(work_dir / "model", data_dir, period)[cfg.validation_metric()] or 0.0


def mean_validation_score(model: Model, data_dir: str | Path, experiment: str, params: dict[str, Any],
                          seeds: list[int], work_dir: str | Path, overrides: dict[str, Any] | None = None,
                          report: Report | None = None) -> tuple[float, list[float]]:
    """The mean of :func:`validation_score` over ``seeds`` (one training each) and the per-seed values.

    One seed's early-stopped validation score moves by as much as a study's gain (README: PinSage's best trial,
    re-run with its values rounded to 4 digits, fell from MRR 0.0396 to 0.0329), so a best-of-N over single
    runs picks lucky runs; the mean of a few seeds is the fix. Only the first seed reports to ``report``: the
    pruner compares trials on the same seed's curve, and a trial it stops never trains the other seeds. With one
    seed the trial trains in ``work_dir`` itself (as before), else in ``work_dir/seed-<s>``."""
    work_dir = Path(work_dir)
    values = [validation_score(model, data_dir, experiment, params, s,
                               work_dir if len(seeds) == 1 else work_dir / f"seed-{s}", overrides=overrides,
                               report=report if i == 0 else None)
              for i, s in enumerate(seeds)]
    return float(np.mean(values)), values


def _raise_if_pruned(metrics: dict[str, Any]) -> None:
    if metrics.get("stopped_by_report"):
        raise optuna.TrialPruned(f"pruned after validation {metrics.get('validations')}")


def tune(model: Model, data_dir: str | Path, out_dir: str | Path, experiment: str | None = None,
         trials: int | None = None, seed: int = 0, overrides: dict[str, Any] | None = None, prune: bool = True,
         pruner: optuna.pruners.BasePruner | None = None, trial_seeds: list[int] | None = None) -> dict[str, Any]:
    """Run the Optuna study (TPE, seeded; trial 0 is ``experiment``'s own values) on the validation period;
    write ``<out>/<experiment>_tuned.yaml`` (the best parameters as an experiment), ``<out>/<model>_trials.json``
    and the Katib manifest ``<out>/<model>_katib.yaml``. With ``prune`` (default) each trial reports its
    validations and ``pruner`` (default :func:`default_pruner`) may stop it; trial 0 is never pruned. Every
    trial's record has its ``seconds``; a pruned one its last value, ``pruned: true`` and
    ``stopped_at_validation``. ``trial_seeds`` (default ``[seed]``): every trial trains once per seed and
    scores their mean (:func:`mean_validation_score`; its record lists ``per_seed``). Returns the summary
    written to the JSON file."""
    if model not in SPACES:
        raise config_mod.ConfigError(f"tune: model '{model}' is not one of {sorted(SPACES)}")
    experiment = experiment or DEFAULT_EXPERIMENT[model]
    base = config_mod.load(experiment, overrides, model=model)  # a bad experiment or key fails before any training
    trials = TRIALS[model] if trials is None else int(trials)
    if trials < 1:
        raise config_mod.ConfigError(f"tune: --trials must be >= 1, got {trials}")
    seeds = parse_seeds(trial_seeds or None, default=seed, flag="trial_seeds")
    out_dir = Path(out_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # what trials.json says of the pruning: the default's settings come from the constants it is built from (Optuna
    # has no public accessor); a pruner given by the caller is named by its class
    pruning = (f"{type(pruner).__name__} (given)" if pruner is not None else DEFAULT_PRUNING) if prune else None
    pruner = (pruner or default_pruner()) if prune else optuna.pruners.NopPruner()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)
    # trial 0 is the experiment as configured, so a small budget never picks values that scored below it
    study.enqueue_trial(current_params(base, SPACES[model]))
    records: list[dict[str, Any]] = []
    name = objective_name(model, base)  # the ranker's val_metric (what its trials validate), else OBJECTIVE

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, SPACES[model])
        reports = TrialReports(trial, prune=trial.number > 0) if prune else None
        t0 = time.perf_counter()
        record: dict[str, Any] = {"trial": trial.number, "params": params}
        try:
            value, per_seed = mean_validation_score(model, data_dir, experiment, params, seeds,
                                                    out_dir / "trials" / f"{model}-{trial.number}",
                                                    overrides=overrides, report=reports)
        except optuna.TrialPruned:
            last = next(v for v in reversed(reports.values) if v is not None)
            records.append({**record, name: last, "pruned": True, "stopped_at_validation": reports.pruned_at,
                            "validations": len(reports.values), "seconds": round(time.perf_counter() - t0, 1)})
            print(f"[tune {model}] trial {trial.number}: {params} pruned at validation {reports.pruned_at} "
                  f"({name} {last:.4f})", flush=True)
            raise
        if len(seeds) > 1:
            record["per_seed"] = dict(zip(map(str, seeds), per_seed, strict=True))
        records.append({**record, name: value, "pruned": False,
                        **({"validations": len(reports.values)} if reports is not None else {}),
                        "seconds": round(time.perf_counter() - t0, 1)})
        print(f"[tune {model}] trial {trial.number}: {params} -> {name} {value:.4f} (validation)", flush=True)
        return value

    study.optimize(objective, n_trials=trials)
    tuned = f"{experiment}_tuned"
    best = {k: (float(v) if isinstance(v, float) else v) for k, v in study.best_params.items()}
    durable.atomic_write_bytes(out_dir / f"{tuned}.yaml", yaml.safe_dump({tuned: {"extends": experiment, **(overrides or {}), **best}},
                                                                     sort_keys=False).encode())
    manifest = build_experiment(model, experiment, trials, seed=seed, early_stopping=katib_early_stopping(prune),
                                objective=name, overrides=overrides, trial_seeds=seeds)
    durable.atomic_write_bytes(out_dir / f"{model}_katib.yaml", yaml.safe_dump(manifest, sort_keys=False).encode())
    summary = {"model": model, "experiment": experiment, "tuned_experiment": tuned, "trials": trials, "seed": seed,
               "trial_seeds": seeds,
               "objective": f"{name} on the validation period (higher is better)", "objective_metric": name,
               "pruning": f"{pruning} on each validation; trial 0 never pruned" if pruning else "off (--no-prune)",
               "pruned": sum(r["pruned"] for r in records),
               "seconds": round(sum(r["seconds"] for r in records), 1),
               "best_params": best, "best_value": float(study.best_value), "records": records,
               "space": [dataclasses.asdict(p) for p in SPACES[model]]}
    durable.atomic_write_bytes(out_dir / f"{model}_trials.json", json.dumps(summary, indent=2).encode())
    return summary
