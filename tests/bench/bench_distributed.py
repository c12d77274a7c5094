"""Distributed training through the launcher: the ranker's DDP loop under torchrun (gloo) with 1 rank vs
2 ranks on the same global work (same global batch and steps), and the launcher's start-up cost.

Both sides run in one session, several repetitions each; recorded: training throughput (examples/s, from
the loop's own timer, start-up excluded), wall time per launch, and their ratios (median/min/max).
"""

from __future__ import annotations

import statistics
import time

import pytest

from components import config
from components.data.prepare import prepare
from components.launch import TrainCall
from components.launch.local import run_local

REPS = 3
STEPS = 40


@pytest.fixture(scope="module")
def bench_data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-distributed") / "synthetic"
    prepare(config.load("synthetic", {"users": 2000, "pins": 5000, "boards": 500}), out)
    return out


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "reps": len(values)}


def test_ranker_ddp_one_vs_two_ranks(tmp_path, bench_data_dir, bench_record):
    results: dict[int, dict[str, list[float]]] = {1: {"throughput": [], "wall": []}, 2: {"throughput": [], "wall": []}}
    for rep in range(REPS):
        for nproc in (1, 2):  # interleaved, so both sides see the same machine load
            out = tmp_path / f"r{rep}-n{nproc}"
            call = TrainCall("components.training.ranker:train", "ranker", [f"max_steps={STEPS}", "batch_size=512"],
                             {"data_dir": str(bench_data_dir), "out_dir": str(out)}, path_kwargs=["data_dir"])
            t0 = time.perf_counter()
            metrics = run_local(call, nproc_per_node=nproc, timeout_s=1800)
            results[nproc]["wall"].append(time.perf_counter() - t0)
            assert metrics["world_size"] == nproc and metrics["steps"] == STEPS
            results[nproc]["throughput"].append(float(metrics["train_examples_per_s"]))
    one, two = results[1], results[2]
    speedups = [b / a for a, b in zip(one["throughput"], two["throughput"])]
    bench_record("ranker_ddp_gloo_1_vs_2_ranks", {
        "work": f"ranker (MaskNet+DCNv2+PEPNet), {STEPS} steps of global batch 512, synthetic 2k users/5k pins",
        "throughput_1_rank_examples_per_s": _stats(one["throughput"]),
        "throughput_2_ranks_examples_per_s": _stats(two["throughput"]),
        "speedup_2_ranks": _stats(speedups),
        "wall_1_rank_s": _stats(one["wall"]),
        "wall_2_ranks_s": _stats(two["wall"]),
        "wall_ratio": _stats([a / b for a, b in zip(one["wall"], two["wall"])]),
        "note": "gloo on CPU; 2 ranks share the machine's cores, so the speedup is bounded by the free cores",
    })
    assert all(t > 0 for t in one["throughput"] + two["throughput"])


def test_launcher_startup_cost(tmp_path, bench_record):
    """torchrun + import + process group for a call that does nothing: the fixed cost of every training step."""
    source = ("from components.training.common import init_distributed, cleanup_distributed\n"
              "def noop(cfg, out_dir):\n    info = init_distributed()\n    cleanup_distributed()\n"
              "    return {'world_size': info.world_size}\n")
    (tmp_path / "hf_bench_noop.py").write_text(source)
    env = {"PYTHONPATH": str(tmp_path)}
    walls: dict[int, list[float]] = {1: [], 2: []}
    for rep in range(REPS):
        for nproc in (1, 2):
            t0 = time.perf_counter()
            res = run_local(TrainCall("hf_bench_noop:noop", "ranker_tiny", [], {"out_dir": str(tmp_path / f"o{rep}")}),
                            nproc_per_node=nproc, env=env, timeout_s=600)
            walls[nproc].append(time.perf_counter() - t0)
            assert res["world_size"] == nproc
    bench_record("launcher_startup", {
        "work": "torchrun launch of a no-op training call (process group init + teardown)",
        "wall_1_rank_s": _stats(walls[1]), "wall_2_ranks_s": _stats(walls[2]),
        "startup_ratio_2_vs_1": _stats([b / a for a, b in zip(walls[1], walls[2])]),
    })
