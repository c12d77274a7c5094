"""The ranker evaluation harness: train several experiments on the same split with several seeds and report,
in one run, HIT@3/save, AUC per task, peak training memory, inference latency (batch 512 and 1), parameter
count and reproducibility (mean and std of HIT@3/save over seeds).

    homefeed eval ranker --experiments a,b,c --seeds 0,1,2 --data DIR --out out/eval

writes an :class:`EvalResult` as ``OUT/ranker_<dataset>.json`` and ``.md``, plus ``.png``; with the
baselines (per-pin popularity, logistic regression, LightGBM) on the same split and features. Each (experiment, seed) trains in a fresh
process so that its peak memory is its own: peak RSS is sampled every 5 ms while ``train`` runs.

Early stopping (``patience`` > 0, as in the ``*_eval`` experiments): each run is validated on the ``val``
period's requests (its experiment's ``val_metric``: HIT@3/save by default, or ``auc_<task>``; the protocol records
it per experiment, so ``eval merge`` keeps runs stopped on different metrics apart), keeps its best weights and stops after ``patience`` validations without
gain; report with ``--period test`` so that no choice saw the reported requests.
"""

from __future__ import annotations

import io as _io
import json
import multiprocessing as mp
import os
import statistics
import threading
import time
from pathlib import Path
from queue import Empty
from typing import Any

import numpy as np
import torch

from components import config as config_mod
from components.data import durable, io
from components.evaluation import papers
from components.evaluation.metrics import auc, hit_at_k
from components.evaluation.protocol import Period, in_period, parse_seeds, period_bounds
from components.evaluation.ranker_baselines import gbdt, logistic_regression, popularity_scores
from components.evaluation.result import EvalResult, write_result
from components.models.ranker import FeatureSpec, load_model
from components.models.ranker_examples import random_inputs
from components.models.ranker_inputs import MODEL_INPUTS
from components.training.ranker import evaluate as evaluate_model
from components.training.ranker import load_impressions, prepare_data, train


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RSSSampler:
    """Samples this process's resident memory in a background thread; ``peak`` is the highest seen."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.start = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def _train_worker(experiment: str, overrides: dict[str, Any], data_dir: str, model_dir: str,
                  user_embeddings: str | None, pin_embeddings: str | None, queue: Any) -> None:
    try:
        torch.set_num_threads(1)
        cfg = config_mod.load(experiment, overrides, model="ranker")
        val = period_bounds(data_dir, "val") if cfg.patience > 0 else None  # early stopping on validation only
        with RSSSampler() as mem:
            metrics = train(cfg, data_dir, model_dir, user_embeddings, pin_embeddings, val_period=val)
        metrics["peak_rss_mb"] = round(mem.peak / 2**20, 1)
        metrics["train_rss_increase_mb"] = round((mem.peak - mem.start) / 2**20, 1)
        queue.put(("ok", metrics))
    except BaseException as e:  # reported to the parent, which raises with the experiment's name
        queue.put(("error", f"{type(e).__name__}: {e}"))


def wait_for_child(proc: Any, queue: Any, what: str, poll_s: float = 1.0) -> tuple[str, Any]:
    """The child's report from ``queue``; if the child dies without one (killed, out of memory, a crash in native
    code), an error naming its exit code instead of waiting forever."""
    while True:
        try:
            return queue.get(timeout=poll_s)
        except Empty:
            if proc.is_alive():
                continue
            try:  # it may have reported just before exiting
                return queue.get(timeout=poll_s)
            except Empty:
                raise RuntimeError(f"{what}: the training process exited with code {proc.exitcode} "
                                   "before reporting a result") from None


def train_isolated(experiment: str, overrides: dict[str, Any], data_dir: str | Path, model_dir: str | Path,
                   user_embeddings: str | None = None, pin_embeddings: str | None = None) -> dict[str, Any]:
    """Train one experiment in a fresh (spawned) process; returns its metrics plus its peak memory."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_train_worker, args=(experiment, overrides, str(data_dir), str(model_dir),
                                                  user_embeddings, pin_embeddings, queue))
    proc.start()
    status, payload = wait_for_child(proc, queue, f"ranker experiment '{experiment}'")
    proc.join()
    if status != "ok":
        raise RuntimeError(f"ranker experiment '{experiment}' ({overrides}) failed: {payload}")
    return payload


def inference_latency(model_dir: str | Path, batch_sizes: tuple[int, ...] = (512, 1), reps: int = 30,
                      warmup: int = 3) -> dict[str, float]:
    """Median eager-PyTorch latency (ms, one thread) of the serving forward for each batch size."""
    model, _, extra = load_model(model_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for b in batch_sizes:
            x = random_inputs(extra, b, seed=b)
            inputs = tuple(torch.from_numpy(x[n]) for n in MODEL_INPUTS)
            times = []
            with torch.no_grad():
                for i in range(warmup + reps):
                    t = time.perf_counter()
                    model.predict(*inputs)
                    if i >= warmup:
                        times.append(time.perf_counter() - t)
            out[f"latency_ms_b{b}"] = round(1000 * statistics.median(times), 3)
    finally:
        torch.set_num_threads(threads)
    return out


METRIC_DIRECTIONS: dict[str, str] = {"hit3_save": "higher", "hit3_save_norm": "higher", "train_seconds": "lower",
                                      "peak_rss_mb": "lower", "parameters": "lower", "latency_ms_b512": "lower",
                                      "latency_ms_b1": "lower"}
BASELINES = ("popularity (per-pin rate)", "logistic regression", "GBDT (LightGBM)")
EVAL_OVERRIDES = {"checkpoint_every": 1_000_000_000}  # one checkpoint at the last step: keep-last
ORDERING_METRICS = ("hit3_save", "auc_save")


def orderings(variants: list[str], metrics: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    """The orderings the README claims, for the variants present, as (better, worse, metric) on HIT@3/save and
    AUC(save): each final model (a ``*_pepnet`` experiment whose non-PEPNet twin also ran) > its twin, > every
    other model, > LightGBM and > logistic regression; every model > popularity. ``homefeed eval ranker`` records
    them with any number of seeds (one seed: "undefined") and ``eval merge`` recomputes them over the union."""
    models = [v for v in variants if v not in BASELINES]
    finals = [v for v in models if "_pepnet" in v and v.replace("_pepnet", "") in models]
    out: list[tuple[str, str, str]] = []
    for metric in ORDERING_METRICS:
        if metrics is not None and metric not in metrics:
            continue
        for final in finals:
            twin = final.replace("_pepnet", "")
            out += [(final, worse, metric) for worse in [twin, *(m for m in models if m not in (final, twin)),
                                                         BASELINES[2], BASELINES[1]] if worse in variants]
        if BASELINES[0] in variants:
            out += [(m, BASELINES[0], metric) for m in models]
    return out


def period_rows(data_dir: str | Path, cfg: Any, extra: dict[str, Any], period: Period) -> np.ndarray:
    """Indices of prepare_data's evaluation rows that fall in ``period`` (their order: load_impressions')."""
    df = load_impressions(data_dir, FeatureSpec.from_dict(extra["spec"]), cfg.tasks)
    ts = df["timestamp"].to_numpy()
    ts = ts[ts >= int(extra["split_timestamp"])]  # the evaluation rows, in prepare_data's order
    return np.flatnonzero(in_period(ts, period_bounds(data_dir, period)))


def ranker_period_metrics(model_dir: str | Path, data_dir: str | Path, period: Period) -> dict[str, Any]:
    """A trained ranker's metrics (AUC per task, HIT@3/save) on the evaluation requests of one period only,
    with the embedding tables it was trained with."""
    net, cfg, extra = load_model(model_dir)
    _, evaluation, prep = prepare_data(cfg, data_dir, extra.get("user_embeddings_path"), extra.get("pin_embeddings_path"))
    return evaluate_model(net, evaluation.subset(period_rows(data_dir, cfg, prep, period)), cfg.tasks, cfg.task_weights)


def baseline_runs(cfg: Any, data_dir: str | Path, seeds: list[int], user_embeddings: str | None,
                  pin_embeddings: str | None, gbdt_rounds: int = 200, period: Period = "all"
                  ) -> list[tuple[str, int, dict[str, float | None]]]:
    """(name, seed, metrics) of each ranker baseline on the ranker's own split and features, scored on the
    evaluation requests of ``period``."""
    train, evaluation, extra = prepare_data(cfg, data_dir, user_embeddings, pin_embeddings)
    spec = FeatureSpec.from_dict(extra["spec"])
    df = load_impressions(data_dir, spec, cfg.tasks)
    is_train = df["timestamp"].to_numpy() < extra["split_timestamp"]
    train_pins = df["pin_id"].to_numpy()[is_train][-len(train):]  # prepare_data keeps the latest rows
    rows = period_rows(data_dir, cfg, extra, period)
    evaluation = evaluation.subset(rows)
    eval_pins = df["pin_id"].to_numpy()[~is_train][rows]
    out = []
    cache: dict[str, tuple[np.ndarray, float]] = {}
    for seed in seeds:
        for name, fn in ((BASELINES[0], lambda s: popularity_scores(train_pins, train.labels, eval_pins)),
                         (BASELINES[1], lambda s: logistic_regression(train, evaluation, s)),
                         (BASELINES[2], lambda s: gbdt(train, evaluation, s, rounds=gbdt_rounds))):
            # all three are deterministic (counts; L-BFGS from zeros; LightGBM without bagging, deterministic):
            # fitted once, listed under every seed so that the models' seeds pair with them
            if name not in cache:
                t0 = time.perf_counter()
                cache[name] = fn(seed), time.perf_counter() - t0
            probs, seconds = cache[name]  # (n_eval, K)
            m: dict[str, float | None] = {f"auc_{t}": auc(evaluation.labels[:, k], probs[:, k]) for k, t in enumerate(cfg.tasks)}
            if "save" in cfg.tasks:
                save = evaluation.labels[:, cfg.tasks.index("save")]
                hit = hit_at_k(evaluation.request_id, probs[:, cfg.tasks.index("save")], save, k=3)
                m.update(hit3_save=hit["hit"], hit3_save_norm=hit["hit_norm"])
            m["train_seconds"] = seconds
            out.append((name, seed, m))
            print(f"[eval ranker] baseline {name} seed {seed}: HIT@3/save {m.get('hit3_save')}, "
                  f"AUC save {m.get('auc_save')}", flush=True)
    return out


def evaluate(experiments: list[str], data_dir: str | Path, out_dir: str | Path = "out/eval",
             seeds: list[int] | str | int | None = None, overrides: list[str] | dict[str, Any] | None = None,
             command: str | None = None, user_embeddings: str | None = None, pin_embeddings: str | None = None,
             baselines: bool = True, period: Period = "all") -> EvalResult:
    """Train every experiment once per seed on ``data_dir``'s split (plus the baselines); score the
    evaluation requests of ``period``; write and return the :class:`EvalResult` (``ranker_<dataset>.json``,
    ``.md``, ``.png``)."""
    if not experiments:
        raise config_mod.ConfigError("eval ranker: no experiments given")
    seeds = parse_seeds(seeds if seeds is not None else "0,1,2")
    extra = overrides if isinstance(overrides, dict) else config_mod.parse_overrides(overrides)
    cfgs = {e: config_mod.load(e, extra, model="ranker") for e in experiments}  # fail fast on any bad name
    meta = io.read_meta(data_dir)
    dataset = str(meta.get("dataset", Path(data_dir).name))
    out_dir = Path(out_dir)
    runs_root = out_dir / "runs" / f"ranker_{dataset}"
    tasks = list(cfgs[experiments[0]].tasks)
    result = EvalResult(
        model="ranker", dataset=dataset,
        command=command or _default_command(experiments, data_dir, out_dir, seeds, overrides),
        protocol={"split": f"impressions before meta.json split_timestamp train; period '{period}' of the ones "
                           "after it evaluate (protocol.period_bounds)",
                  "queries": "every evaluation request with at least one save (HIT@3/save); every row (AUC)",
                  "candidate pool": "each request's logged impressions", "seeds": seeds,
                  "overrides": extra, "tasks": tasks,
                  "early stopping": {e: (f"{_val_metric_text(c)} on the 'val' period every {c.val_every or 'epoch'}"
                                         f"{' steps' if c.val_every else ''}, patience {c.patience}, best weights "
                                         "kept (report --period test)") if c.patience > 0 else "none"
                                     for e, c in cfgs.items()}},
        metrics={**{k: v for k, v in METRIC_DIRECTIONS.items() if k.startswith("hit")},
                 **{f"auc_{t}": "higher" for t in tasks},
                 **{k: v for k, v in METRIC_DIRECTIONS.items() if not k.startswith("hit")}})
    if baselines:
        for name, seed, m in baseline_runs(cfgs[experiments[0]], data_dir, seeds, user_embeddings, pin_embeddings,
                                           period=period):
            result.add(name, seed, details={"baseline": True}, **m)
    for exp in experiments:
        for i, seed in enumerate(seeds):
            model_dir = runs_root / exp / f"seed-{seed}"
            m = train_isolated(exp, {**extra, **EVAL_OVERRIDES, "seed": seed}, data_dir, model_dir,
                               user_embeddings, pin_embeddings)
            if period != "all":  # the trainer scores every evaluation day: rescore the period's requests
                m.update(ranker_period_metrics(model_dir, data_dir, period))
            if i == 0:
                m.update(inference_latency(model_dir))
            result.add(exp, seed, details={"arch": cfgs[exp].arch, "pepnet": cfgs[exp].pepnet,
                                           "model_dir": str(model_dir), "rows_train": m.get("rows_train"),
                                           "rows_eval": m.get("rows_eval"), "steps": m.get("steps"),
                                           "best_step": m.get("best_step"), "stopped_early": m.get("stopped_early")},
                       **{k: m.get(k) for k in result.metrics})
            print(f"[eval ranker] {exp} seed {seed}: HIT@3/save {m.get('hit3_save')}, AUC save {m.get('auc_save')}, "
                  f"{m['train_seconds']:.1f} s", flush=True)
    for better, worse, metric in orderings(result.variants, result.metrics):  # 1 seed: each one "undefined"
        result.compare(better, worse, metric)
    result.papers = papers.for_result("ranker", result.protocol)
    result.notes.append("Baselines score requests by p(save); the models by the serving score (score_weights). "
                        "Latency: eager PyTorch, one thread, median, first seed only. Peak RSS: the training "
                        "process (spawned per run) including data loading.")
    write_result(result, out_dir)
    plot(result, out_dir / f"ranker_{dataset}.png")
    return result


def _val_metric_text(cfg: Any) -> str:
    """The early-stopping metric as the protocol says it: ``HIT@3/save`` for the default (the text of results
    written before ``val_metric`` existed, so they still merge), else ``AUC(<task>) (val_metric auc_<task>)``."""
    key = cfg.validation_metric()
    return "HIT@3/save" if key == "hit3_save" else f"AUC({key.removeprefix('auc_')}) (val_metric {key})"


def _default_command(experiments: list[str], data_dir: str | Path, out_dir: Path, seeds: list[int],
                     overrides: list[str] | dict[str, Any] | None) -> str:
    sets = overrides.items() if isinstance(overrides, dict) else (o.split("=", 1) for o in overrides or [])
    return (f"homefeed eval ranker --experiments {','.join(experiments)} --seeds {','.join(map(str, seeds))} "
            f"--data {data_dir} --out {out_dir}" + "".join(f" --set {k}={json.dumps(v) if not isinstance(v, str) else v}"
                                                        for k, v in sets))


def plot(result: EvalResult, path: str | Path) -> Path:
    """A PNG bar chart: HIT@3/save mean with its 95% interval, and AUC(save), per variant."""
    import matplotlib  # a heavy import, needed only for this chart

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display backend on a server

    names = list(result.variants)
    hit = [result.stat(v, "hit3_save") for v in names]
    auc_key = "auc_save" if "auc_save" in result.metrics else next(k for k in result.metrics if k.startswith("auc_"))
    aucs = [result.stat(v, auc_key).mean for v in names]
    fig, axes = plt.subplots(1, 2, figsize=(11, max(3.5, 0.35 * len(names) + 1.5)))
    y = np.arange(len(names))
    means = [s.mean if s.mean is not None else 0.0 for s in hit]
    err = [(s.mean - s.ci_low) if s.ci_low is not None else 0.0 for s in hit]
    axes[0].barh(y, means, xerr=err, color="#c8102e")
    axes[0].set_title(f"HIT@3/save (95% CI, seeds {result.seeds()})")
    axes[1].barh(y, [a if a is not None else 0.0 for a in aucs], color="#555555")
    axes[1].set_title(auc_key.replace("_", " ").upper())
    defined = [a for a in aucs if a is not None]
    axes[1].set_xlim(max(0.0, min(defined, default=0.5) - 0.05), 1.0)
    for ax in axes:
        ax.set_yticks(y, names if ax is axes[0] else [""] * len(names))
        ax.invert_yaxis()  # the first variant on top, as in the Markdown table
    fig.suptitle(f"homefeed ranker on {result.dataset}")
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return durable.atomic_write_bytes(path, buf.getvalue())
