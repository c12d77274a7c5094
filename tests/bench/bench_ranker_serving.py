"""The full-size ranker served: Triton ensemble vs ONNX Runtime in process, against this machine's fp32 GEMM.

``ranker`` (3 MaskNet blocks x 512 + 4 DCNv2 layers + PEPNet), trained a few steps on synthetic_tiny (the
weights do not change the cost) and exported to ONNX. With 500-row requests (the recommend path's candidate
count) of the same raw inputs:

- Triton: the real tritonserver over the ``python_onnx`` repository (python preprocess + ONNX Runtime ranker,
  ``ranker_ensemble``), one gRPC client sending requests back to back;
- in process: the same preprocessing (``ranker_inputs``) and an ONNX Runtime session on the same ``model.onnx``;

each with ONNX Runtime at 1 and at 2 intra-op threads (this machine has 2 cores), for ``SECONDS`` per
repetition. The model's FLOPs per row are counted from its Linear layers (2 x in x out per row; the elementwise
work is small beside them). The machine's fp32 GEMM rate is ``torch.matmul`` of 2048 x 2048 fp32 matrices at 1
and 2 threads, measured in the same run, so each rows/s is also a fraction of what the cores can do.
Goal (issue #13): Triton >= 0.8x the in-process rows/s. ``/proc/loadavg`` before and after.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from components.evaluation.ranker import train_isolated
from components.models import ranker_inputs
from components.models.ranker import load_model
from components.models.ranker_examples import random_inputs
from components.models.ranker_inputs import MODEL_INPUTS
from components.serving import model_repository as mr
from components.serving.export import export_ranker
from components.serving.ranker_io import ONNX_FILE, OUTPUTS
from components.serving.triton import TritonServer
from components.serving.triton_client import RankerClient

ROWS = 500
SECONDS = 6.0
REPS = 3
GEMM_N = 2048


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "reps": len(xs)}


def linear_flops_per_row(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
    """2 x in x out summed over every Linear call of one forward, per row."""
    total = [0]

    def hook(mod, args, out):
        rows = args[0].numel() // args[0].shape[-1]
        total[0] += 2 * mod.in_features * mod.out_features * rows

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.no_grad():
            model.predict(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total[0] / inputs[0].shape[0]


def gemm_flops(threads: int) -> float:
    """fp32 FLOP/s of torch.matmul on GEMM_N x GEMM_N matrices (median of 5 after a warm-up)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(GEMM_N, GEMM_N), torch.randn(GEMM_N, GEMM_N)
        torch.matmul(a, b)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            torch.matmul(a, b)
            times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(old)
    return 2 * GEMM_N ** 3 / statistics.median(times)


def _raw_batches(pre: dict, extra: dict, n: int) -> list[dict[str, np.ndarray]]:
    """``n`` raw requests of ROWS rows (the ensemble's inputs: un-normalised dense, raw ids)."""
    out = []
    for i in range(n):
        x = random_inputs(extra, ROWS, seed=100 + i)
        dense = x["x_dense"] * np.asarray(pre["dense"]["std"], np.float32) + np.asarray(pre["dense"]["mean"], np.float32)
        out.append({"dense": dense.astype(np.float32), "sparse": np.abs(x["x_sparse"]), "surface": x["x_surface"],
                    "user_embedding": x["x_user_embedding"], "pin_embedding": x["x_pin_embedding"]})
    return out


def _in_process(sess: ort.InferenceSession, pre: dict, raw: dict[str, np.ndarray]) -> np.ndarray:
    x = {"x_dense": ranker_inputs.normalize_dense(raw["dense"], pre["dense"]["mean"], pre["dense"]["std"]),
         "x_sparse": ranker_inputs.clamp_sparse(raw["sparse"], pre["sparse"]["cardinalities"]),
         "x_surface": ranker_inputs.clamp_surface(raw["surface"], len(pre["surfaces"])),
         "x_user_embedding": raw["user_embedding"], "x_pin_embedding": raw["pin_embedding"]}
    return sess.run(list(OUTPUTS), {n: np.ascontiguousarray(x[n]) for n in MODEL_INPUTS})[1]


def _rows_per_s(fn, batches: list[dict]) -> float:
    fn(batches[0])  # warm-up
    rows, i = 0, 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < SECONDS:
        fn(batches[i % len(batches)])
        rows += ROWS
        i += 1
    return rows / (time.perf_counter() - t0)


def test_bench_full_ranker_triton_vs_onnxruntime(tiny_data, tmp_path, bench_record):
    model_dir = tmp_path / "ranker"
    train_isolated("ranker", {"max_steps": 3, "checkpoint_every": 10_000, "log_every": 10_000}, tiny_data, model_dir)
    export = export_ranker(model_dir, tmp_path / "export", data_dir=tiny_data)
    pre = json.loads((export / "preprocess.json").read_text())
    model, _, extra = load_model(model_dir)
    model.eval()
    x = random_inputs(extra, 64, seed=0)
    flops_row = linear_flops_per_row(model, tuple(torch.from_numpy(x[n]) for n in MODEL_INPUTS))
    batches = _raw_batches(pre, extra, 8)
    result: dict = {"what": "full-size ranker, 500-row requests: Triton ranker_ensemble (python_onnx, gRPC, 1 "
                            "client) vs ONNX Runtime in process (same preprocessing, same inputs), as a fraction of "
                            "torch.matmul fp32 GEMM FLOP/s at the same thread count",
                    "model": "ranker (masknet_dcnv2 + PEPNet)", "parameters": sum(p.numel() for p in model.parameters()),
                    "linear_flops_per_row": flops_row, "rows_per_request": ROWS, "seconds_per_rep": SECONDS,
                    "loadavg_before": loadavg()}
    del model
    for threads in (1, 2):
        gemm = [gemm_flops(threads) for _ in range(REPS)]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(str(export / ONNX_FILE), opts, providers=["CPUExecutionProvider"])
        repo = mr.materialize(export, tmp_path / f"repository_t{threads}",
                              options=mr.RepositoryOptions(intra_op_threads=threads))
        with TritonServer(repo, log_path=tmp_path / f"triton_t{threads}.log").start() as server, \
                RankerClient(server.grpc_url, "grpc") as client:
            # the same scores both ways (the ensemble is the in-process computation behind gRPC)
            np.testing.assert_allclose(client.score(batches[0])[1].reshape(-1),
                                       _in_process(sess, pre, batches[0]).reshape(-1), rtol=1e-4, atol=1e-5)
            ort_rps, tri_rps = [], []
            for _ in range(REPS):  # interleaved, so a load change hits both
                ort_rps.append(_rows_per_s(lambda b, s=sess: _in_process(s, pre, b), batches))
                tri_rps.append(_rows_per_s(client.score, batches))
        ratios = [t / o for t, o in zip(tri_rps, ort_rps)]
        g = statistics.median(gemm)
        result[f"threads_{threads}"] = {
            "gemm_fp32_gflops": _stats([v / 1e9 for v in gemm]),
            "onnxruntime_in_process_rows_per_s": _stats(ort_rps),
            "triton_ensemble_rows_per_s": _stats(tri_rps),
            "ratio_triton_over_in_process": _stats(ratios),
            "onnxruntime_fraction_of_gemm": statistics.median(ort_rps) * flops_row / g,
            "triton_fraction_of_gemm": statistics.median(tri_rps) * flops_row / g,
            "goal_triton_ge_0_8x_met": statistics.median(ratios) >= 0.8,
        }
        assert min(ort_rps) > 0 and min(tri_rps) > 0
    result["loadavg_after"] = loadavg()
    bench_record("ranker_serving_full_size", result)
