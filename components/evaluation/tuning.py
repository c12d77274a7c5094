"""Hyperparameter tuning under the validation / test protocol: ``homefeed tune <model>`` with Optuna.

One search space per model (:data:`SPACES`), one fixed trial budget per model (:data:`TRIALS`, the same for
every variant that is compared), one objective measured on the *validation* period only
(:mod:`components.evaluation.protocol`): PinSage's MRR on held-out pairs of the validation days, PinnerFormer's
Recall@10 on the validation half of the held-out users, the ranker's HIT@3/save on the validation days'
requests. The test period is never scored while tuning; ``homefeed eval ... --period test`` reports it
once, with the tuned experiment.

The best parameters are written as a YAML experiment (``<experiment>_tuned``, extending the base one) and
the same search space becomes a Katib ``Experiment`` (:mod:`components.evaluation.katib`) for clusters.
"""

from __future__ import annotations

import dataclasses
import json
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
from components.evaluation.protocol import Period, period_bounds
from components.evaluation.ranker import ranker_period_metrics
from components.evaluation.search_space import DEFAULT_EXPERIMENT, OBJECTIVE, SPACES, TRIALS, Model, Param
from components.graph.graph import build_graph
from components.models.pinnerformer import load_model as load_pinnerformer
from components.training import pinnerformer as pinnerformer_training
from components.training import ranker as ranker_training
from components.training.pinnerformer_data import build_sequences


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
                     work_dir: str | Path, period: Period = "val", overrides: dict[str, Any] | None = None) -> float:
    """Train ``experiment`` with ``overrides`` then ``params`` and ``seed``, and return the objective on
    ``period`` (validation by default: the only period tuning looks at). With ``patience`` > 0 (the ``*_eval``
    experiments) a trial stops early on the validation period exactly as the evaluation harness does, so a
    trial costs what one evaluation run costs and scores its best validated weights."""
    overrides = {**(overrides or {}), **params, "seed": seed,
                 "checkpoint_every": 0 if model != "ranker" else 1_000_000_000}
    cfg = config_mod.load(experiment, overrides, model=model)
    work_dir = Path(work_dir)
    if model == "pinsage":
        graph = build_graph(data_dir, cfg.use_engagement_edges)
        pairs = pinsage_eval.heldout_pairs(data_dir, graph.pin_ids, cfg, period)
        val_pairs = pinsage_eval.heldout_pairs(data_dir, graph.pin_ids, cfg, "val") if cfg.patience > 0 else None
        emb, _ = pinsage_eval.train_and_embed(cfg, data_dir, work_dir / "model", val_pairs)
        return pinsage_eval.ranking_metrics(emb, pairs, cfg.eval_pool)["mrr"]
    if model == "pinnerformer":
        pins_path = content_pin_table(data_dir, work_dir / "content_pins.parquet")
        table = pinnerformer_training.load_pin_table(pins_path)
        seqs = build_sequences(load_events(data_dir), table.ids)
        pinnerformer_training.train(cfg, data_dir, pins_path, work_dir / "model", evaluate=False,
                                    validation=early_stopping(cfg, Path(data_dir), table, seqs))
        net, cfg_saved, extra = load_pinnerformer(work_dir / "model")
        users = heldout_half(np.asarray(extra["eval_users"], np.int64), period)
        r = recall_at_split(net, cfg_saved, data_dir, table, users, seqs)
        return float(r["recall@10"] or 0.0)
    val = period_bounds(data_dir, "val") if cfg.patience > 0 else None  # as the evaluation harness trains
    ranker_training.train(cfg, data_dir, work_dir / "model", val_period=val)
    return ranker_period_metrics(work_dir / "model", data_dir, period)["hit3_save"] or 0.0


def tune(model: Model, data_dir: str | Path, out_dir: str | Path, experiment: str | None = None,
         trials: int | None = None, seed: int = 0, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the Optuna study (TPE, seeded; trial 0 is ``experiment``'s own values) on the validation period;
    write ``<out>/<experiment>_tuned.yaml`` (the best parameters as an experiment), ``<out>/<model>_trials.json`` and the Katib manifest
    ``<out>/<model>_katib.yaml``. Returns the summary written to the JSON file."""
    if model not in SPACES:
        raise config_mod.ConfigError(f"tune: model '{model}' is not one of {sorted(SPACES)}")
    experiment = experiment or DEFAULT_EXPERIMENT[model]
    base = config_mod.load(experiment, overrides, model=model)  # a bad experiment or key fails before any training
    trials = TRIALS[model] if trials is None else int(trials)
    if trials < 1:
        raise config_mod.ConfigError(f"tune: --trials must be >= 1, got {trials}")
    out_dir = Path(out_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    # trial 0 is the experiment as configured, so a small budget never picks values that scored below it
    study.enqueue_trial(current_params(base, SPACES[model]))
    records: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, SPACES[model])
        value = validation_score(model, data_dir, experiment, params, seed, out_dir / "trials" / f"{model}-{trial.number}",
                                 overrides=overrides)
        records.append({"trial": trial.number, "params": params, OBJECTIVE[model]: value})
        print(f"[tune {model}] trial {trial.number}: {params} -> {OBJECTIVE[model]} {value:.4f} (validation)", flush=True)
        return value

    study.optimize(objective, n_trials=trials)
    tuned = f"{experiment}_tuned"
    best = {k: (float(v) if isinstance(v, float) else v) for k, v in study.best_params.items()}
    durable.atomic_write_bytes(out_dir / f"{tuned}.yaml", yaml.safe_dump({tuned: {"extends": experiment, **(overrides or {}), **best}},
                                                                     sort_keys=False).encode())
    manifest = build_experiment(model, experiment, trials, seed=seed)
    durable.atomic_write_bytes(out_dir / f"{model}_katib.yaml", yaml.safe_dump(manifest, sort_keys=False).encode())
    summary = {"model": model, "experiment": experiment, "tuned_experiment": tuned, "trials": trials, "seed": seed,
               "objective": f"{OBJECTIVE[model]} on the validation period (higher is better)",
               "best_params": best, "best_value": float(study.best_value), "records": records,
               "space": [dataclasses.asdict(p) for p in SPACES[model]]}
    durable.atomic_write_bytes(out_dir / f"{model}_trials.json", json.dumps(summary, indent=2).encode())
    return summary
