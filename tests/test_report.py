"""`homefeed report` and the benchmark infrastructure behind `make bench`.

The report is built from inputs of the documented shapes, written by their real writers (EvalResult files
through ``write_result``, embedding tables through ``write_table``, ``train_log.jsonl`` lines as TrainLog writes
them); the page is then opened in headless Chromium where it is installed (every image rendered, no console
error, a screenshot under out/), else parsed and every embedded image decoded. The benchmark conftest runs for
real in a pytest subprocess on a scratch copy of tests/bench.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.data.tables import EmbeddingTable, write_table
from components.evaluation.result import EvalResult, PaperNumber, write_result
from components.report import build_report
from components.report.browser import check_in_browser, chromium, decode_images

REPO = Path(__file__).resolve().parents[1]
KS = (1, 2, 5, 10, 20, 50, 100)


def _pinnerformer(rng) -> EvalResult:
    r = EvalResult("pinnerformer", "synthetic", "homefeed eval pinnerformer --data S --seeds 0,1,2",
                   protocol={"candidate pool": 1000, "future window days": 14, "users": 94, "seeds": [0, 1, 2]},
                   metrics={**{f"recall@{k}": "higher" for k in KS}, "train_seconds": "lower"})
    for v, base in (("dense_all_action / mixed", 0.30), ("next_action / in-batch", 0.22)):
        for seed in range(3):
            r.add(v, seed, train_seconds=30 + seed,
                  **{f"recall@{k}": min(1.0, base * np.log1p(k) / np.log1p(10) + 0.01 * rng.standard_normal())
                     for k in KS})
    r.papers.append(PaperNumber("PinnerFormer (arXiv 2205.04507)", "dense_all_action / mixed", "recall@10", 0.229,
                                "candidate pool 1,000,000, future window days 14", protocol_matches=False))
    return r


def _pinsage(rng) -> EvalResult:
    r = EvalResult("pinsage", "ml-100k", "homefeed eval pinsage --data D --seeds 0,1,2",
                   protocol={"pairs": 2000, "seeds": [0, 1, 2]},
                   metrics={"hit@10": "higher", "hit@50": "higher", "mrr": "higher", "pairs_per_rank": "higher"})
    for v, base in (("content-only MLP", 0.05), ("PinSage (full)", 0.07), ("PinSage, no hard negatives", 0.06)):
        for seed in range(3):
            r.add(v, seed, pairs_per_rank=1000, **{"hit@10": base + 0.004 * rng.standard_normal(),
                                                   "hit@50": 3 * base, "mrr": base / 2})
    r.papers.append(PaperNumber("toy paper", "PinSage (full)", "mrr", 0.0351, "same pairs, same pool",
                                protocol_matches=True))
    return r


def _ranker(rng) -> EvalResult:
    r = EvalResult("ranker", "synthetic", "homefeed eval ranker --seeds 0,1",
                   protocol={"split": "last day", "seeds": [0, 1]},
                   metrics={"hit3_save": "higher", "auc_save": "higher", "auc_click": "higher",
                            "peak_memory_mb": "lower"})
    for arch in ("dcnv2", "masknet_dcnv2"):
        for pep in (False, True):
            for seed in range(2):
                r.add(f"{arch}{' + PEPNet' if pep else ''}", seed, details={"pepnet": pep}, peak_memory_mb=300.0,
                      hit3_save=0.4 + 0.05 * pep + 0.01 * rng.standard_normal(), auc_save=0.6 + 0.01 * seed * pep,
                      auc_click=None)
    r.compare("dcnv2 + PEPNet", "dcnv2", "hit3_save")  # holds (+0.05, small noise)
    r.compare("dcnv2", "masknet_dcnv2 + PEPNet", "hit3_save")  # reversed
    r.compare("masknet_dcnv2 + PEPNet", "masknet_dcnv2", "auc_save")  # 0.00 then +0.01: does not hold
    return r


def _bench() -> dict:
    return {"command": "make bench", "updated_at": "2026-01-01T00:00:00+00:00",
            "machine": {"cpu": "Test CPU 9000", "usable_cores": 2, "python": "3.11.7", "torch": "2.13.0"},
            "benchmarks": {
                "ranker.onnx_vs_eager": {"status": "passed", "test": "tests/bench/bench_ranker.py::test_x",
                                         "result": {"batch": 512, "speedup_onnx": {"median": 4.0, "min": 3.2, "max": 7.5},
                                                    "latency_ms_samples": [1.0 + 0.1 * i for i in range(40)]}},
                "graph.neighbourhood_scaling": {
                    "status": "passed", "test": "tests/bench/bench_graph.py::test_y",
                    "result": {"us_per_pin_ratio_largest_vs_smallest": 1.3,
                               "rows": [{"pins": n, "seconds": {"median": n / 1e4, "min": n / 1.1e4, "max": n / 9e3},
                                         "us_per_pin": 100.0 + n / 1e5} for n in (10_000, 100_000, 1_000_000)]}},
                "serving_recommend_stages": {
                    "status": "passed", "test": "tests/bench/bench_serving.py::test_z",
                    "result": {"what": "recommend path per stage", "feast_user": {"p50_ms": 2.1, "p99_ms": 4.0},
                               "milvus": {"p50_ms": 8.3, "p99_ms": 11.7, "requests": 100}}}}}


@pytest.fixture
def inputs(tmp_path) -> tuple[Path, Path, Path]:
    """An eval folder (3 EvalResults + a stray JSON), a bench.json and a demo-like runs folder."""
    rng = np.random.default_rng(0)
    ev = tmp_path / "eval"
    for r in (_pinnerformer(rng), _pinsage(rng), _ranker(rng)):
        write_result(r, ev)
    (ev / "old_format.json").write_text(json.dumps({"model": "x", "rows": []}))
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(_bench()))

    runs = tmp_path / "runs"
    data = runs / "data"
    (data / "ground_truth").mkdir(parents=True)
    n, topics = 400, 5
    topic = rng.integers(0, topics, n)
    centres = rng.standard_normal((topics, 16)) * 3
    pd.DataFrame({"pin_id": np.arange(n), "topic": topic}).to_parquet(data / "ground_truth" / "pin_topics.parquet")
    emb = (centres[topic] + rng.standard_normal((n, 16))).astype(np.float32)
    table = write_table(EmbeddingTable(np.arange(n, dtype=np.int64), emb, "v1", dt.datetime.now(dt.UTC)),
                        runs / "pins.parquet")
    for model, scale in (("train-pinsage", 1.0), ("train-ranker", 0.7)):
        log = runs / "kfp" / "homefeed-training-2026-01-01-00-00-00-000000" / model / "model" / "train_log.jsonl"
        log.parent.mkdir(parents=True)
        lines = [{"event": "start", "step": 0, "world_size": 1}]
        lines += [{"event": "step", "step": s, "loss": scale * (1 + 2 / (s + 1))} for s in range(1, 60)]
        lines += [{"event": "done", "compute_s": 12.5, "data_wait_fraction": 0.05, "hit@10": 0.07}]
        log.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    lat = runs / "recommend_latency.json"
    lat.write_text(json.dumps({"stages": {"feast_user": list(rng.uniform(1, 3, 30)),
                                          "milvus": list(rng.uniform(5, 12, 30)),
                                          "triton": list(rng.uniform(4, 9, 30))}}))
    (runs / "demo.json").write_text(json.dumps({"data_dir": str(data), "pin_embeddings": str(table),
                                                "recommend_latency": str(lat)}))
    return ev, bench, runs


def _section(page: str, anchor: str) -> str:
    start = page.index(f"<h2 id='{anchor}'>")
    nxt = page.find("<h2 id=", start + 1)
    return page[start:nxt if nxt > 0 else len(page)]


def test_report_sections_plots_and_papers(inputs, tmp_path):
    ev, bench, runs = inputs
    out, md = tmp_path / "r" / "report.html", tmp_path / "r" / "report.md"
    info = build_report(ev, bench, out, md, runs_dir=runs)
    assert info["evaluations"] == 3 and info["benchmarks"] == 3 and info["curves"] == 2
    assert info["projection"] and info["latency_stages"] == 3
    page = out.read_text()
    quality = _section(page, "quality")
    # quality: variants with mean ± std [CI]; the curve's K=10 in the table; operational metrics elsewhere
    for text in ("dense_all_action / mixed", "PinSage (full)", "masknet_dcnv2 + PEPNet", "recall@10 ↑", "hit3_save ↑",
                 "undefined"):
        assert text in quality, text
    assert " ± " in quality and "recall@50 ↑" not in quality  # K=10 in the table, the rest in the curve
    for op in ("train_seconds", "pairs_per_rank", "peak_memory_mb", "compute_s"):
        assert op not in quality, op
        assert op in _section(page, "operations"), op
    # a paper number with another protocol is never beside ours, only in the papers' setting
    assert "0.229" not in quality
    papers = _section(page, "papers")
    assert "0.229" in papers and "candidate pool 1,000,000" in papers
    assert "pinnerformer on synthetic: candidate pool 1,000, future window days 14" in papers
    assert "<td>candidate pool; data: Pinterest vs synthetic</td>" in papers  # what differs
    assert "0.0351" in quality and "toy paper" in quality  # same protocol: beside ours
    # figures: recall@K curve, pinsage bars, ranker bars, ranker orderings, loss curves, projection, demo latency,
    # bench percentiles, latency histogram, growth curves, ratios (one ratio per benchmark: two ratios -> chart)
    images = decode_images(page)
    assert len(images) == info["images"] == 11
    assert "alt='ranker orderings'" in quality and "alt='pinsage orderings'" not in quality  # only with claims
    assert all(w >= 300 and h >= 150 for w, h in images)
    assert "old_format.json: skipped, not an EvalResult file" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3", "")  # self-contained
    assert "alt='serving_recommend_stages'" in page  # percentiles recorded as p50_ms / p99_ms
    summary = md.read_text()
    assert "### pinsage on ml-100k" in summary and "| PinSage (full) |" in summary
    assert "| ranker.onnx_vs_eager | speedup_onnx | 4 (3.2 – 7.5) |" in summary


def test_orderings_are_drawn_with_the_readmes_verdicts(tmp_path):
    """The claimed orderings of a result as written and read back: each drawn as its paired difference with the 95%
    interval, marked holds / does not hold / reversed as the README says them, one panel per metric."""
    from components.evaluation.result import read_results
    from components.report.plots import VERDICTS, ordering_rows, plot_orderings

    write_result(_ranker(np.random.default_rng(0)), tmp_path)
    r = next(x for x in read_results(tmp_path) if x.model == "ranker")
    rows = ordering_rows(r)
    assert [(m, label, said) for m, label, _, _, _, said, _ in rows] == [
        ("hit3_save", "dcnv2 + PEPNet > dcnv2", "holds"),
        ("hit3_save", "dcnv2 > masknet_dcnv2 + PEPNet", "reversed"),
        ("auc_save", "masknet_dcnv2 + PEPNet > masknet_dcnv2", "does not hold")]
    for (_, _, mean, lo, hi, said, colour), c in zip(rows, r.comparisons):
        assert (mean, mean - lo, mean + hi) == pytest.approx((c.diff_mean, c.ci_low, c.ci_high))
        assert colour == next(col for text, col in VERDICTS.values() if text == said)
    assert rows[0][2] - rows[0][3] > 0 > rows[1][2] + rows[1][4]  # holds: above 0; reversed: below
    (w, h), = decode_images(f"<img src='data:image/png;base64,{plot_orderings(r)}'>")
    assert w >= 400 and h >= 150
    r.comparisons = []
    assert plot_orderings(r) is None  # no claim, no figure


def test_one_variant_gets_a_table_not_a_one_bar_chart(tmp_path):
    r = EvalResult("ranker", "ml-100k", "python -m pipelines.demo", protocol={}, metrics={"auc_save": "higher"})
    r.add("pipeline (ranker_tiny)", 0, auc_save=0.61)
    write_result(r, tmp_path / "eval")
    info = build_report(tmp_path / "eval", tmp_path / "none.json", tmp_path / "r.html", runs_dir=None)
    page = (tmp_path / "r.html").read_text()
    assert info["images"] == 0 and "0.61" in page and "no chart of single bars" in page


def test_report_tolerates_missing_inputs(tmp_path):
    out = tmp_path / "report.html"
    info = build_report(tmp_path / "no-eval", tmp_path / "no-bench.json", out, runs_dir=tmp_path / "no-runs")
    page = out.read_text()
    assert info["evaluations"] == 0 and info["benchmarks"] == 0 and info["images"] == 0
    assert "no-eval: no such folder" in page and "no-bench.json: missing" in page and "no-runs: no such folder" in page
    assert "No model evaluations were found" in page and "No benchmark results were found" in page


def test_report_renders_in_a_browser(inputs, tmp_path):
    """Headless Chromium where installed: every image decoded and laid out, no console error, a screenshot;
    without Chromium: the page parsed and every embedded PNG decoded."""
    ev, bench, runs = inputs
    out = tmp_path / "report.html"
    info = build_report(ev, bench, out, runs_dir=runs)
    if chromium() is None:
        assert len(decode_images(out.read_text())) == info["images"]
        return
    shot = REPO / "out" / "report_test_screenshot.png"
    result = check_in_browser(out, shot)
    assert result["errors"] == [], result["errors"]
    assert len(result["images"]) == info["images"]
    assert all(i["w"] > 0 and i["h"] > 0 and i["complete"] for i in result["images"]), result["images"]
    assert shot.exists() and shot.stat().st_size > 20_000


def test_homefeed_report_command(tmp_path):
    """The CLI wiring (the rendering itself is covered in-process above): flags, summary line, notes."""
    r = EvalResult("ranker", "ml-100k", "python -m pipelines.demo", protocol={}, metrics={"auc_save": "higher"})
    r.add("pipeline (ranker_tiny)", 0, auc_save=0.61)
    write_result(r, tmp_path / "eval")
    (tmp_path / "eval" / "old_format.json").write_text("{}")
    out = tmp_path / "cli" / "report.html"
    proc = subprocess.run([str(Path(sys.executable).parent / "homefeed"), "report", "--eval", str(tmp_path / "eval"),
                           "--bench", str(tmp_path / "none.json"), "--runs", "", "--out", str(out)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}: 1 evaluations, 0 benchmarks, 0 training curves, 0 figures" in proc.stdout
    assert "missing: " in proc.stdout and "old_format.json" in proc.stdout and "none.json: missing" in proc.stdout
    assert "0.61" in out.read_text()


BENCH_FILE = '''
import time


def test_sleepy(bench_record, bench_time, bench_ratio):
    slow = bench_time(lambda: time.sleep(0.02), reps=3, warmup=0)
    fast = bench_time(lambda: time.sleep(0.002), reps=3, warmup=1)
    assert slow["reps"] == 3 and len(slow["times"]) == 3 and slow["min"] <= slow["median"] <= slow["max"]
    r = bench_ratio(slow, fast)
    bench_record("demo.sleep", {"work": 3, "slow_s": slow, "fast_s": fast, "speedup": r})


def test_records_then_fails(bench_record):
    bench_record("demo.failing", {"ratio": 2.0})
    assert False, "a benchmark assertion"
'''


def test_bench_infrastructure_end_to_end(tmp_path):
    bench_dir = tmp_path / "tests" / "bench"
    bench_dir.mkdir(parents=True)
    shutil.copy(REPO / "tests" / "bench" / "conftest.py", bench_dir / "conftest.py")
    (bench_dir / "bench_demo.py").write_text(BENCH_FILE)
    out = tmp_path / "out"
    env = {**os.environ, "HOMEFEED_BENCH_OUT": str(out)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(bench_dir)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one benchmark fails on purpose
    assert "1 failed, 1 passed" in proc.stdout  # bench_*.py collected, each test once
    doc = json.loads((out / "bench.json").read_text())
    demo = doc["benchmarks"]["demo.sleep"]
    assert demo["status"] == "passed" and demo["test"].endswith("bench_demo.py::test_sleepy")
    speed = demo["result"]["speedup"]
    assert 3 < speed["median"] < 12 and speed["min"] <= speed["median"] <= speed["max"]
    assert doc["benchmarks"]["demo.failing"]["status"] == "failed"
    assert doc["machine"]["usable_cores"] >= 1 and doc["machine"]["python"] and "torch" in doc["machine"]
    md = (out / "bench.md").read_text()
    assert "## demo.sleep" in md and "| demo.sleep | speedup |" in md and "| work | 3 |" in md
    assert "| demo.failing | ratio | 2 | failed |" in md and "## Machine" in md

    # a later run of another file updates its own entries and keeps the others
    (bench_dir / "bench_demo.py").unlink()
    (bench_dir / "bench_other.py").write_text(
        "def test_other(bench_record):\n    bench_record('demo.other', {'speedup': 1.5})\n")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((out / "bench.json").read_text())
    assert set(doc["benchmarks"]) == {"demo.sleep", "demo.failing", "demo.other"}
    assert doc["benchmarks"]["demo.sleep"]["result"]["speedup"] == demo["result"]["speedup"]
