"""Benchmarks of PinSage inference and training (collected only by ``make bench``).

1. Layer-wise inference (every node's layer k once from layer k-1) vs per-node K-hop recomputation, on the
   same model and graph: the ratio, and layer-wise cost per pin as the number of pins grows (linear scaling).
2. Training throughput with the producer-consumer DataLoader (workers build the sub-graphs while the trainer
   computes) vs sampling inline (num_workers = 0), on ML-100k: steps/s and the time waiting on data.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from components import config
from components.models.pinsage import PinSage
from components.models.pinsage_layerwise import layerwise_embeddings, per_node_embeddings
from components.training.pinsage import prepare_inputs, train

REPS = 3


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "reps": len(xs)}


def _random_neighbourhoods(num_pins: int, T: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    nbr = rng.integers(0, num_pins, (num_pins, T))
    w = rng.random((num_pins, T)).astype(np.float32)
    return nbr, w / w.sum(1, keepdims=True)


def test_bench_layerwise_vs_per_node(ml100k_data, bench_record):
    torch.set_num_threads(1)
    cfg = config.load("pinsage")
    inp = prepare_inputs(cfg, ml100k_data)
    torch.manual_seed(0)
    model = PinSage(cfg).eval()
    P = len(inp["features"])
    lw_times = []
    for _ in range(REPS):
        t = time.perf_counter()
        lw = layerwise_embeddings(model, inp["features"], inp["nbr_ids"], inp["nbr_w"], cfg.inference_chunk)
        lw_times.append(time.perf_counter() - t)
    subset = np.arange(0, P, 8)
    pn_times = []
    for _ in range(REPS):
        t = time.perf_counter()
        ref = per_node_embeddings(model, inp["features"], inp["nbr_ids"], inp["nbr_w"], subset)
        pn_times.append((time.perf_counter() - t) * P / len(subset))  # extrapolated to every pin
    err = float(np.abs(lw[subset] - ref).max())
    lw_med, pn_med = statistics.median(lw_times), statistics.median(pn_times)

    scaling = []
    for n in (20_000, 80_000, 320_000):
        feats = np.random.default_rng(1).standard_normal((n, cfg.feature_dim)).astype(np.float32)
        nbr, w = _random_neighbourhoods(n, cfg.num_neighbors)
        ts = []
        for _ in range(REPS):
            t = time.perf_counter()
            layerwise_embeddings(model, feats, nbr, w, cfg.inference_chunk)
            ts.append(time.perf_counter() - t)
        scaling.append({"pins": n, "seconds": _stats(ts), "us_per_pin": 1e6 * statistics.median(ts) / n})
        print(scaling[-1])
    result = {
        "pins": P, "num_layers": cfg.num_layers, "num_neighbors": cfg.num_neighbors, "hidden_dim": cfg.hidden_dim,
        "layerwise_s": _stats(lw_times), "per_node_s_extrapolated": _stats(pn_times),
        "per_node_pins_timed": len(subset), "speedup_layerwise": pn_med / lw_med,
        "speedup_min_max": [min(pn_times) / max(lw_times), max(pn_times) / min(lw_times)],
        "max_abs_diff": err, "scaling": scaling,
        "us_per_pin_ratio_largest_vs_smallest": scaling[-1]["us_per_pin"] / scaling[0]["us_per_pin"],
    }
    bench_record("pinsage.layerwise_vs_per_node_inference", result)
    print({k: v for k, v in result.items() if k != "scaling"})
    assert err < 1e-5


def test_bench_training_prefetch_vs_inline(ml100k_data, tmp_path, bench_record):
    rows = {}
    for workers in (0, 2):
        runs = []
        for rep in range(REPS):
            cfg = config.load("pinsage", {"max_steps": 30, "num_workers": workers, "checkpoint_every": 0,
                                          "log_every": 1000, "epochs": 1})
            m = train(cfg, ml100k_data, tmp_path / f"w{workers}_{rep}")
            loop_s = m["data_wait_s"] + m["compute_s"]
            runs.append({"steps_per_s": m["steps"] / loop_s, "data_wait_fraction": m["data_wait_fraction"],
                         "steady_data_wait_fraction": m["steady_data_wait_fraction"]})
        rows[f"num_workers={workers}"] = {
            "steps_per_s": _stats([r["steps_per_s"] for r in runs]),
            "data_wait_fraction": _stats([r["data_wait_fraction"] for r in runs]),
            "steady_data_wait_fraction": _stats([r["steady_data_wait_fraction"] for r in runs]),
        }
        print(workers, rows[f"num_workers={workers}"])
    a, b = rows["num_workers=0"]["steps_per_s"], rows["num_workers=2"]["steps_per_s"]
    result = {"steps": 30, "batch_size": 256, "rows": rows, "speedup_prefetch": b["median"] / a["median"],
              "speedup_min_max": [b["min"] / a["max"], b["max"] / a["min"]],
              "note": "2 shared CPU cores: workers compete with the trainer for the same cores"}
    bench_record("pinsage.training_prefetch_vs_inline", result)
