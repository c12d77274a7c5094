"""``homefeed eval pinnerformer``: train the objective / negative-sampling / logQ variants once per seed on one
data directory and report Recall@K, K in 1..100 (:mod:`components.evaluation.pinnerformer`; the report draws
the curves) on the held-out users of a period, with the popularity baseline; writes
``pinnerformer_<dataset>.json`` and ``.md`` (an EvalResult).

Early stopping (``patience`` > 0, as in ``pinnerformer_eval``): every run is validated on the ``val`` half of
the held-out users (Recall@10, every ``val_every`` steps or each epoch), keeps its best weights and stops after
``patience`` validations without gain; report ``--period test`` (the other half) for numbers no choice saw.

Per-row experiments (``--row-experiment ROW=EXPERIMENT``): each compared objective can have its own tuned
hyperparameters (one ``homefeed tune pinnerformer --set objective=...`` study per row, the same trial budget),
so an ordering compares each objective at its best rather than both at one objective's values. A row's
experiment supplies every training value; the row still decides objective, negatives and logQ, and the
fields that define the measurement (:data:`PROTOCOL_FIELDS`) must equal the base experiment's.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from components import config as config_mod
from components.config import ConfigError
from components.data import io
from components.data.baseline import content_embeddings
from components.data.tables import write_table
from components.data.validate import load_events
from components.evaluation import papers
from components.evaluation.metrics import CURVE_KS
from components.evaluation.pinnerformer import daily_vs_realtime, per_user_split, popularity_recall, recall_at_split
from components.evaluation.protocol import SPLIT_SEED, Period, parse_seeds
from components.evaluation.result import EvalResult, write_result
from components.models.pinnerformer import load_model
from components.training.loop import Validation
from components.training.pinnerformer import EVAL_SPLIT_SEED, load_pin_table, split_users, train
from components.training.pinnerformer_data import build_sequences

OBJECTIVE_ROWS = [("next_action", "mixed", True), ("all_action", "mixed", True), ("dense_all_action", "mixed", True)]
NEGATIVE_ROWS = [("dense_all_action", neg, logq) for neg in ("in_batch", "random", "mixed") for logq in (False, True)]
POPULARITY = "popularity (baseline)"
RECALLS = tuple(f"recall@{k}" for k in CURVE_KS)
METRICS = {**{r: "higher" for r in RECALLS}, "recall@10_daily": "higher", "recall@10_realtime": "higher",
           "train_seconds": "lower", "sequences_per_s": "higher"}
EVAL_OVERRIDES = {"checkpoint_every": 0}  # evaluation runs keep model.pt only
# what is measured (held-out users, embedding time, candidate pool, window) and how runs stop: equal for every row
PROTOCOL_FIELDS = ("eval_at", "eval_user_fraction", "eval_pool", "future_window_days", "patience", "val_every")
Row = tuple[str, str, bool]
_DENSE, _NEXT = "dense_all_action/mixed/logQ", "next_action/mixed/logQ"  # = variant_name(...) of the two main rows
# the orderings every result tests (paired over seeds, Recall@10) when both rows are present; `eval merge` recomputes
ORDERINGS: tuple[tuple[str, str, str], ...] = tuple(
    (better, worse, "recall@10") for better, worse in [
        (_DENSE, _NEXT), (_DENSE, "all_action/mixed/logQ"), (_DENSE, "dense_all_action/mixed/no logQ"),
        ("dense_all_action/in_batch/logQ", "dense_all_action/in_batch/no logQ"), (_DENSE, POPULARITY),
        (_NEXT, POPULARITY)])


def variant_name(objective: str, negatives: str, logq: bool) -> str:
    """``dense_all_action/mixed/logQ``; next_action is the SASRec-style next-item baseline (one positive:
    the next action, causal transformer), as in the paper's comparison."""
    return f"{objective}/{negatives}/{'logQ' if logq else 'no logQ'}"


def content_pin_table(data_dir: str | Path, out: Path) -> Path:
    """Write the content-baseline pin table (a stand-in for PinSage output) and return its path."""
    pins, _ = content_embeddings(data_dir)
    return write_table(pins, out)


def heldout_half(users: np.ndarray, period: Period) -> np.ndarray:
    """Held-out users of a period: ``val`` and ``test`` are two disjoint halves (SPLIT_SEED), ``all`` both.
    PinnerFormer's held-out users never train, so tuning on one half and reporting on the other keeps the
    test users unseen by every choice."""
    users = np.sort(np.asarray(users, np.int64))
    if period == "all":
        return users
    perm = np.random.default_rng([SPLIT_SEED, 23]).permutation(len(users))
    half = perm[: len(users) // 2] if period == "val" else perm[len(users) // 2:]
    return np.sort(users[half])


def parse_rows(text: str | None) -> list[Row] | None:
    """``"dense_all_action/mixed/logq,next_action/mixed/logq"`` -> rows (None/"" = every row); ``nologq`` turns
    the correction off. A malformed or unknown row is a ConfigError naming the known rows."""
    if not text:
        return None
    known = list(dict.fromkeys(OBJECTIVE_ROWS + NEGATIVE_ROWS))
    rows = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        parts = item.split("/")
        row = (parts[0], parts[1], parts[2] == "logq") if len(parts) == 3 and parts[2] in ("logq", "nologq") else None
        if row not in known:
            names = ", ".join(map(row_label, known))
            raise ConfigError(f"--rows: '{item}' is not one of {names}")
        rows.append(row)
    return rows


def row_label(row: Row) -> str:
    """``dense_all_action/mixed/logq``: the row as ``--rows`` and ``--row-experiment`` spell it."""
    return f"{row[0]}/{row[1]}/{'logq' if row[2] else 'nologq'}"


def parse_row_experiments(items: list[str] | None) -> dict[Row, str]:
    """``["next_action/mixed/logq=pinnerformer_eval_ml100k_next"]`` -> {row: experiment}; a malformed item or
    unknown row is a ConfigError (the row is checked as ``--rows`` checks it)."""
    out: dict[Row, str] = {}
    for item in items or []:
        row_text, eq, experiment = item.partition("=")
        if not (eq and row_text.strip() and experiment.strip()):
            raise ConfigError(f"--row-experiment: expected ROW=EXPERIMENT (e.g. next_action/mixed/logq="
                              f"pinnerformer_eval), got '{item}'")
        [row] = parse_rows(row_text.strip())
        if row in out:
            raise ConfigError(f"--row-experiment: row '{row_text.strip()}' is given twice")
        out[row] = experiment.strip()
    return out


def row_configs(base: config_mod.PinnerFormerConfig, base_experiment: str, row_experiments: dict[Row, str],
                overrides: list[str] | None) -> dict[Row, config_mod.PinnerFormerConfig]:
    """Each row's config from its own experiment (with the same ``--set`` overrides); a ConfigError when one
    measures differently from ``base`` (a :data:`PROTOCOL_FIELDS` value differs)."""
    out = {}
    for row, experiment in row_experiments.items():
        cfg = config_mod.load(experiment, overrides, model="pinnerformer")
        differ = [f"{k} ({getattr(cfg, k)} vs {getattr(base, k)})" for k in PROTOCOL_FIELDS
                  if getattr(cfg, k) != getattr(base, k)]
        if differ:
            raise ConfigError(f"--row-experiment {row_label(row)}={experiment}: {', '.join(differ)} differ from "
                              f"--experiment {base_experiment}: every row must be measured the same way")
        out[row] = cfg
    return out


def early_stopping(cfg: config_mod.PinnerFormerConfig, data_dir: Path, table, seqs) -> Validation | None:
    """Recall@10 of the 'val' half of the held-out users (the users training holds out, computed the same way);
    None when ``cfg.patience`` is 0. The harness and ``homefeed tune`` stop on it."""
    if cfg.patience <= 0:
        return None
    all_users = io.read_table(data_dir, "users").column("user_id").to_numpy()
    val_users = heldout_half(split_users(all_users, cfg.eval_user_fraction, EVAL_SPLIT_SEED)[1], "val")
    return Validation(lambda model: recall_at_split(model, cfg, data_dir, table, val_users, seqs)["recall@10"],
                      metric="val_recall@10", direction="higher", every=cfg.val_every, patience=cfg.patience)


def run_eval(data_dir: str | Path, out_dir: str | Path, pin_embeddings: str | Path | None = None,
             experiment: str = "pinnerformer_eval", overrides: list[str] | None = None,
             rows: list[Row] | None = None, command: str | None = None,
             seeds: list[int] | str | None = None, period: Period = "all", baselines: bool = True,
             row_experiments: dict[Row, str] | None = None) -> EvalResult:
    """Train each (objective, negatives, logQ) variant once per seed and report Recall@10 on the held-out
    users of ``period``; write and return the :class:`EvalResult`. ``row_experiments`` gives a row its own
    experiment (its tuned values) instead of ``experiment``."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    dataset = str(io.read_meta(data_dir).get("dataset", data_dir.name))
    work = out_dir / f"pinnerformer_{dataset}_runs"
    if pin_embeddings is None:
        pin_embeddings = content_pin_table(data_dir, work / "content_pins.parquet")
        pin_source = "content baseline (components.data.baseline)"
    else:
        pin_source = str(pin_embeddings)
    table = load_pin_table(pin_embeddings)
    base = config_mod.load(experiment, overrides, model="pinnerformer")
    row_experiments = dict(row_experiments or {})
    per_row = row_configs(base, experiment, row_experiments, overrides)
    seeds = parse_seeds(seeds, default=base.seed)
    seqs = build_sequences(load_events(data_dir), table.ids)
    todo = rows if rows is not None else list(dict.fromkeys(OBJECTIVE_ROWS + NEGATIVE_ROWS))
    unused = [row_label(r) for r in row_experiments if r not in todo]
    if unused:
        raise ConfigError(f"--row-experiment names rows that are not evaluated: {', '.join(unused)} (add them to --rows)")
    result = EvalResult(
        model="pinnerformer", dataset=dataset, command=command or " ".join(sys.argv),
        protocol={"task": f"Recall@10 of all positives in the {base.future_window_days} days after the embedding "
                          f"time ({base.eval_at}), per user, then over users",
                  "split": f"held-out users (eval_user_fraction {base.eval_user_fraction}, SPLIT_SEED), period "
                           f"'{period}' (val/test: disjoint halves of them)",
                  "candidate pool": int(min(base.eval_pool, len(table))), "future window days": base.future_window_days,
                  "seeds": seeds, "experiment": experiment, "overrides": list(overrides or []),
                  "pin input": pin_source,
                  "early stopping": (f"Recall@10 of the 'val' half of the held-out users every "
                                     f"{f'{base.val_every} steps' if base.val_every else 'epoch'}, patience "
                                     f"{base.patience}, best weights kept" if base.patience > 0 else "none"),
                  # only when given, so results without per-row experiments still merge with each other
                  **({"row experiments": {variant_name(*r): e for r, e in row_experiments.items()}}
                     if row_experiments else {})},
        metrics=dict(METRICS))
    users = None
    runs = [(seed, row) for seed in seeds for row in todo]  # seed by seed: a cut-short run has whole seeds
    for i, (seed, (objective, negatives, logq)) in enumerate(runs):
        name = variant_name(objective, negatives, logq)
        row_cfg = per_row.get((objective, negatives, logq), base)
        cfg = dataclasses.replace(row_cfg, objective=objective, negatives=negatives, logq=logq, seed=seed,
                                  **EVAL_OVERRIDES)
        run_dir = work / row_label((objective, negatives, logq)).replace("/", "-") / f"seed-{seed}"
        t0 = time.perf_counter()
        metrics = train(cfg, data_dir, pin_embeddings, run_dir, evaluate=False,
                        validation=early_stopping(cfg, data_dir, table, seqs))
        train_s = time.perf_counter() - t0
        model, cfg_saved, extra = load_model(run_dir)
        users = heldout_half(np.asarray(extra["eval_users"], np.int64), period)
        m = recall_at_split(model, cfg_saved, data_dir, table, users, seqs)
        if (objective, negatives, logq) in OBJECTIVE_ROWS:
            m.update(daily_vs_realtime(model, cfg_saved, data_dir, table, users, seqs))
        details = {k: metrics[k] for k in ("steps", "best_step", "stopped_early") if k in metrics}
        result.add(name, seed, details={**details, "eval_users_scored": m.get("eval_users_scored")},
                   train_seconds=train_s, sequences_per_s=metrics["train_examples_per_s"],
                   **{k: m.get(k) for k in (*RECALLS, "recall@10_daily", "recall@10_realtime")})
        print(json.dumps({"variant": name, "seed": seed, **m}, default=str), flush=True)
        if i + 1 < len(runs):  # written after every run: a long evaluation stopped early keeps what it measured
            result.details["partial"] = f"{i + 1} of {len(runs)} trained runs"
            write_result(result, out_dir)
    result.details.pop("partial", None)
    if baselines and users is not None:
        pop = popularity_recall(base, seqs, users, per_user_split(data_dir, seqs), len(table))
        for seed in seeds:  # deterministic: the same value for every seed, listed per seed for pairing
            result.add(POPULARITY, seed, details={"baseline": True}, **{k: pop[k] for k in RECALLS})
    result.details["eval_users"] = 0 if users is None else len(users)
    if len(seeds) > 1:
        for better, worse, metric in ORDERINGS:
            if better in result.variants and worse in result.variants:
                result.compare(better, worse, metric)
    if base.patience > 0 and period != "test":
        result.notes.append(f"early stopping looked at the 'val' half of the held-out users, part of the reported "
                            f"'{period}' users: report --period test for numbers no choice has seen")
    result.papers = papers.for_result("pinnerformer", result.protocol)
    result.notes.append("next_action/mixed/logQ is the SASRec-style baseline: the same causal transformer "
                        "trained to predict only the next positive action.")
    write_result(result, out_dir)
    return result
