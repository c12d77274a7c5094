"""The ranker evaluation harness: train several experiments on the same split with several seeds and report,
in one run, HIT@3/save, AUC per task, peak training memory, inference latency (batch 512 and 1), parameter
count and reproducibility (mean and std of HIT@3/save over seeds).

    homefeed eval ranker --experiments a,b,c --seeds 3 --data DIR --out out/eval

writes ``OUT/ranker_<dataset>.json``, ``.md`` and ``.png``. Each (experiment, seed) trains in a fresh
process so that its peak memory is its own: peak RSS is sampled every 5 ms while ``train`` runs.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components import config as config_mod
from components.data import io


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
        from components.training.ranker import train

        cfg = config_mod.load(experiment, overrides, model="ranker")
        with RSSSampler() as mem:
            metrics = train(cfg, data_dir, model_dir, user_embeddings, pin_embeddings)
        metrics["peak_rss_mb"] = round(mem.peak / 2**20, 1)
        metrics["train_rss_increase_mb"] = round((mem.peak - mem.start) / 2**20, 1)
        queue.put(("ok", metrics))
    except BaseException as e:  # reported to the parent, which raises with the experiment's name
        queue.put(("error", f"{type(e).__name__}: {e}"))


def train_isolated(experiment: str, overrides: dict[str, Any], data_dir: str | Path, model_dir: str | Path,
                   user_embeddings: str | None = None, pin_embeddings: str | None = None) -> dict[str, Any]:
    """Train one experiment in a fresh (spawned) process; returns its metrics plus its peak memory."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_train_worker, args=(experiment, overrides, str(data_dir), str(model_dir),
                                                  user_embeddings, pin_embeddings, queue))
    proc.start()
    status, payload = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"ranker experiment '{experiment}' ({overrides}) failed: {payload}")
    return payload


def inference_latency(model_dir: str | Path, batch_sizes: tuple[int, ...] = (512, 1), reps: int = 30,
                      warmup: int = 3) -> dict[str, float]:
    """Median eager-PyTorch latency (ms, one thread) of the serving forward for each batch size."""
    from components.models.ranker import load_model
    from components.serving.export import random_inputs
    from components.serving.ranker_io import MODEL_INPUTS

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


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return float(np.mean(xs)) if xs else float("nan")


def _std(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def evaluate(experiments: list[str], data_dir: str | Path, out_dir: str | Path = "out/eval", seeds: int = 3,
             overrides: list[str] | dict[str, Any] | None = None, command: str | None = None,
             user_embeddings: str | None = None, pin_embeddings: str | None = None) -> dict[str, Any]:
    """Train every experiment with ``seeds`` seeds on ``data_dir``'s split; write and return the comparison."""
    if not experiments:
        raise config_mod.ConfigError("eval ranker: no experiments given")
    if seeds < 1:
        raise config_mod.ConfigError(f"eval ranker: --seeds must be >= 1, got {seeds}")
    extra = overrides if isinstance(overrides, dict) else config_mod.parse_overrides(overrides)
    cfgs = {e: config_mod.load(e, extra, model="ranker") for e in experiments}  # fail fast on any bad name
    meta = io.read_meta(data_dir)
    dataset = str(meta.get("dataset", Path(data_dir).name))
    out_dir = Path(out_dir)
    runs_root = out_dir / "runs" / f"ranker_{dataset}"
    tasks = cfgs[experiments[0]].tasks
    rows, runs = [], []
    for exp in experiments:
        per_seed = []
        for s in range(seeds):
            seed = cfgs[exp].seed + s
            model_dir = runs_root / exp / f"seed-{seed}"
            m = train_isolated(exp, {**extra, "seed": seed}, data_dir, model_dir, user_embeddings, pin_embeddings)
            m.update({"experiment": exp, "seed": seed, "model_dir": str(model_dir)})
            if s == 0:
                m.update(inference_latency(model_dir))
            per_seed.append(m)
            runs.append(m)
            print(f"[eval ranker] {exp} seed {seed}: HIT@3/save {m.get('hit3_save', float('nan')):.4f}, "
                  f"AUC save {m.get('auc_save', float('nan')):.4f}, {m['train_seconds']:.1f} s", flush=True)
        hits = [r.get("hit3_save", float("nan")) for r in per_seed]
        row = {"experiment": exp, "arch": cfgs[exp].arch, "pepnet": cfgs[exp].pepnet,
               "hit3_save_mean": _mean(hits), "hit3_save_std": _std(hits),
               "hit3_save_norm_mean": _mean([r.get("hit3_save_norm", float("nan")) for r in per_seed]),
               **{f"auc_{t}": _mean([r[f"auc_{t}"] for r in per_seed]) for t in tasks},
               "parameters": per_seed[0]["parameters"],
               "peak_rss_mb": max(r["peak_rss_mb"] for r in per_seed),
               "train_rss_increase_mb": max(r["train_rss_increase_mb"] for r in per_seed),
               "latency_ms_b512": per_seed[0]["latency_ms_b512"], "latency_ms_b1": per_seed[0]["latency_ms_b1"],
               "train_examples_per_s": _mean([r["train_examples_per_s"] for r in per_seed]),
               "seeds": seeds}
        rows.append(row)
    result = {"model": "ranker", "dataset": dataset, "data_dir": str(Path(data_dir).resolve()),
              "command": command or _default_command(experiments, data_dir, out_dir, seeds, overrides),
              "tasks": tasks, "seeds": seeds, "overrides": extra, "rows_train": runs[0]["rows_train"],
              "rows_eval": runs[0]["rows_eval"], "rows": rows, "runs": runs,
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    stem = out_dir / f"ranker_{dataset}"
    io.atomic_write_json(result, stem.with_suffix(".json"))
    io.atomic_write_bytes(stem.with_suffix(".md"), to_markdown(result).encode())
    plot(result, stem.with_suffix(".png"))
    return result


def _default_command(experiments: list[str], data_dir: str | Path, out_dir: Path, seeds: int,
                     overrides: list[str] | dict[str, Any] | None) -> str:
    sets = overrides.items() if isinstance(overrides, dict) else (o.split("=", 1) for o in overrides or [])
    return (f"homefeed eval ranker --experiments {','.join(experiments)} --seeds {seeds} --data {data_dir} "
            f"--out {out_dir}" + "".join(f" --set {k}={json.dumps(v) if not isinstance(v, str) else v}"
                                          for k, v in sets))


def to_markdown(result: dict[str, Any]) -> str:
    tasks = result["tasks"]
    head = ["experiment", "arch", "PEPNet", "HIT@3/save (mean ± std)", *[f"AUC {t}" for t in tasks], "params",
            "peak RSS MB", "latency b512 ms", "latency b1 ms", "train ex/s"]
    lines = [f"### Ranker comparison on {result['dataset']} ({result['rows_train']:,} train / "
             f"{result['rows_eval']:,} eval impressions, {result['seeds']} seeds)", "",
             f"`{result['command']}`", "",
             "| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    for r in result["rows"]:
        cells = [r["experiment"], r["arch"], "yes" if r["pepnet"] else "no",
                 f"{r['hit3_save_mean']:.4f} ± {r['hit3_save_std']:.4f}",
                 *[f"{r[f'auc_{t}']:.4f}" for t in tasks], f"{r['parameters']:,}", f"{r['peak_rss_mb']:.0f}",
                 f"{r['latency_ms_b512']:.2f}", f"{r['latency_ms_b1']:.3f}", f"{r['train_examples_per_s']:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "HIT@3/save: saves among each request's top 3 by the serving score, averaged over eval requests "
              "with a save. AUC: mean over seeds. Latency: eager PyTorch, one thread, median. Peak RSS: the "
              "training process (spawned per run) including data loading."]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """A PNG bar chart: HIT@3/save mean ± std and AUC(save) per experiment."""
    import io as _io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = [r["experiment"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, max(3.5, 0.35 * len(rows) + 1.5)))
    y = np.arange(len(rows))
    axes[0].barh(y, [r["hit3_save_mean"] for r in rows], xerr=[r["hit3_save_std"] for r in rows], color="#c8102e")
    axes[0].set_title(f"HIT@3/save ({result['seeds']} seeds)")
    auc_key = "auc_save" if "auc_save" in rows[0] else f"auc_{result['tasks'][0]}"
    axes[1].barh(y, [r[auc_key] for r in rows], color="#555555")
    axes[1].set_title(auc_key.replace("_", " ").upper())
    lo = min(r[auc_key] for r in rows)
    axes[1].set_xlim(max(0.0, lo - 0.05), 1.0)
    for ax in axes:
        ax.set_yticks(y, names if ax is axes[0] else [""] * len(rows))
        ax.invert_yaxis()  # the first experiment on top, as in the Markdown table
    fig.suptitle(f"homefeed ranker on {result['dataset']}")
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return io.atomic_write_bytes(path, buf.getvalue())
