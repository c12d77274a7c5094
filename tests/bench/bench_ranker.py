"""Benchmarks of the homefeed ranker (collected only by ``make bench``).

1. Per architecture, with and without PEPNet, at full size (the ``ranker_<arch>[_pepnet]`` experiments):
   training examples/s and peak RSS (each trained for a fixed number of steps in a fresh process), eager
   inference latency at batch 1 and 512, parameter count; and the cost of PEPNet as ratios per architecture.
2. ONNX Runtime vs eager PyTorch on the exported final model (masknet_dcnv2 + PEPNet) at batch 1 and 512:
   the same inputs, several repetitions, the ratio with median/min/max.
"""

from __future__ import annotations

import numpy as np
import torch

from components.evaluation.ranker import train_isolated
from components.models.ranker import ARCHS, load_model
from components.models.ranker_examples import random_inputs
from components.models.ranker_inputs import MODEL_INPUTS
from components.serving.export import export_ranker
from components.serving.ranker_io import ONNX_FILE, OUTPUTS

TRAIN_STEPS = 10
REPS = 15


def _latency(bench_time, fn) -> dict:
    return bench_time(fn, reps=REPS, warmup=3)


def test_bench_ranker_architectures(tiny_data, tmp_path, bench_record, bench_time, bench_ratio):
    torch.set_num_threads(1)
    rows, timings = {}, {}
    for arch in ARCHS:
        for pepnet in (False, True):
            exp = f"ranker_{arch}" + ("_pepnet" if pepnet else "")
            model_dir = tmp_path / exp
            m = train_isolated(exp, {"max_steps": TRAIN_STEPS, "epochs": 100, "batch_size": 512, "checkpoint_every": 10_000,
                                     "log_every": 10_000}, tiny_data, model_dir)
            model, _, extra = load_model(model_dir)
            lat = {}
            for b in (1, 512):
                x = tuple(torch.from_numpy(v) for v in random_inputs(extra, b, seed=b).values())
                with torch.no_grad():
                    lat[b] = _latency(bench_time, lambda x=x, model=model: model.predict(*x))
            timings[exp] = lat
            rows[exp] = {"arch": arch, "pepnet": pepnet, "parameters": m["parameters"],
                         "train_examples_per_s": m["train_examples_per_s"], "peak_rss_mb": m["peak_rss_mb"],
                         "latency_b1_s": lat[1], "latency_b512_s": lat[512]}
            assert m["steps"] == TRAIN_STEPS and np.isfinite(m["loss"])
    pepnet_cost = {arch: {"latency_b512_ratio": bench_ratio(timings[f"ranker_{arch}_pepnet"][512], timings[f"ranker_{arch}"][512]),
                          "latency_b1_ratio": bench_ratio(timings[f"ranker_{arch}_pepnet"][1], timings[f"ranker_{arch}"][1]),
                          "train_throughput_ratio": rows[f"ranker_{arch}"]["train_examples_per_s"]
                          / rows[f"ranker_{arch}_pepnet"]["train_examples_per_s"]}
                   for arch in ARCHS}
    bench_record("ranker_architectures", {
        "work": f"{TRAIN_STEPS} training steps of batch 512 on synthetic_tiny per model; latency over {REPS} reps, "
                "one thread, eager PyTorch",
        "models": rows, "pepnet_cost (slowdown = with / without)": pepnet_cost})


def test_bench_onnxruntime_vs_eager(tiny_data, tmp_path, bench_record, bench_time, bench_ratio):
    import onnxruntime as ort

    torch.set_num_threads(1)
    model_dir = tmp_path / "ranker"
    train_isolated("ranker", {"max_steps": 5, "checkpoint_every": 10_000, "log_every": 10_000}, tiny_data, model_dir)
    export_dir = export_ranker(model_dir, tmp_path / "export")
    model, _, extra = load_model(model_dir)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(export_dir / ONNX_FILE), opts, providers=["CPUExecutionProvider"])
    result = {"model": "ranker (masknet_dcnv2 + PEPNet, full size)",
              "parameters": sum(p.numel() for p in model.parameters()), "threads": 1}
    for b in (1, 512):
        x = random_inputs(extra, b, seed=b)
        xt = tuple(torch.from_numpy(x[n]) for n in MODEL_INPUTS)
        with torch.no_grad():
            eager = _latency(bench_time, lambda xt=xt: model.predict(*xt))
            want = model.predict(*xt)
        onnx_t = _latency(bench_time, lambda x=x: sess.run(list(OUTPUTS), x))
        got = sess.run(list(OUTPUTS), x)
        assert max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want)) <= 1e-5
        result[f"batch_{b}"] = {"eager_s": eager, "onnxruntime_s": onnx_t,
                                "onnxruntime_speedup_ratio": bench_ratio(eager, onnx_t)}
    bench_record("ranker_onnxruntime_vs_eager", result)
