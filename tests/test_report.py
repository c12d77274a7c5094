"""`homefeed report` and the benchmark infrastructure behind `make bench`.

The report is built from small evaluation/benchmark JSON files of the documented shapes; the benchmark
conftest runs for real in a pytest subprocess on a scratch copy of tests/bench.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.report import PAPER, build_report, quality_metrics

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


@pytest.fixture
def inputs(tmp_path) -> tuple[Path, Path]:
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / "pinsage_ml-100k.json").write_text(json.dumps({
        "model": "pinsage", "dataset": "ml-100k", "command": "homefeed eval pinsage --data D", "pairs": 2000,
        "rows": [{"variant": "content-only (MLP on features)", "hit@10": 0.0545, "hit@50": 0.21, "mrr": 0.0267,
                  "hit@10_se": 0.005},
                 {"variant": "PinSage (full)", "hit@10": 0.0675, "hit@50": 0.2285, "mrr": 0.0341, "hit@10_se": 0.0056}],
    }))
    (ev / "pinnerformer_synthetic.json").write_text(json.dumps({
        "model": "pinnerformer", "dataset": "synthetic", "command": "homefeed eval pinnerformer --data S",
        "rows": [{"objective": "dense_all_action", "negatives": "mixed", "logq": True, "recall@10": 0.1234},
                 {"objective": "next_action", "negatives": "mixed", "logq": False, "recall@10": 0.0987}],
    }))
    (ev / "ranker_synthetic.json").write_text(json.dumps({
        "model": "ranker", "dataset": "synthetic", "command": "homefeed eval ranker --experiments a,b --seeds 3",
        "rows": [{"experiment": "ranker_mlp", "arch": "mlp", "pepnet": False, "hit3_save_mean": 0.41,
                  "hit3_save_std": 0.02, "auc_save": 0.61},
                 {"experiment": "ranker_final", "arch": "masknet_dcnv2", "pepnet": True, "hit3_save_mean": 0.47,
                  "hit3_save_std": 0.01, "auc_save": 0.66}],
    }))
    (ev / "broken.json").write_text("{not json")
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({
        "command": "make bench", "updated_at": "2026-01-01T00:00:00+00:00",
        "machine": {"cpu": "Test CPU 9000", "usable_cores": 2, "python": "3.11.7", "torch": "2.13.0"},
        "benchmarks": {
            "ranker.onnx_vs_eager": {"status": "passed", "test": "tests/bench/bench_ranker.py::test_x",
                                     "recorded_at": "2026-01-01T00:00:00+00:00",
                                     "result": {"batch": 512,
                                                "eager_s": {"median": 0.02, "min": 0.019, "max": 0.03, "reps": 5},
                                                "onnx_s": {"median": 0.005, "min": 0.004, "max": 0.006, "reps": 5},
                                                "speedup_onnx": {"median": 4.0, "min": 3.2, "max": 7.5},
                                                "latency_ms_samples": [1.0 + 0.1 * i for i in range(40)]}},
            "graph.scaling": {"status": "failed", "test": "tests/bench/bench_graph.py::test_y",
                              "result": {"ratio_largest_vs_smallest": 1.3,
                                         "scaling": [{"pins": 1000, "s": 0.1}, {"pins": 10000, "s": 1.1}]}},
        },
    }))
    return ev, bench


def test_report_has_tables_plots_and_paper_numbers(inputs, tmp_path):
    ev, bench = inputs
    out, md = tmp_path / "r" / "report.html", tmp_path / "r" / "report.md"
    info = build_report(ev, bench, out, md)
    assert info["evaluations"] == 3 and info["benchmarks"] == 2
    page = out.read_text()
    # a table per evaluation, with its values and command
    for text in ("PinSage (full)", "0.0675", "dense_all_action", "0.1234", "masknet_dcnv2", "0.47",
                 "homefeed eval ranker --experiments a,b --seeds 3", "Test CPU 9000", "speedup_onnx",
                 "ratio_largest_vs_smallest", "failed"):
        assert text in page, text
    assert page.count("<table>") >= 8
    # plots: a quality chart per evaluation, the pinsage hit@K curve, the ratio chart, the latency histogram
    images = _images(page)
    assert len(images) == 3 + 1 + 1 + 1
    assert all(img.startswith(PNG_MAGIC) and len(img) > 2000 for img in images)
    # the papers' numbers beside ours
    assert "0.229" in page and "0.67" in page and "arXiv 2412.01985" in page
    # what is missing is named
    assert "broken.json: not readable JSON" in page
    assert "no evaluation for pinsage on synthetic, pinnerformer on ml-100k, ranker on ml-100k" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3", "")  # self-contained
    summary = md.read_text()
    assert "| variant | hit@10 | hit@50 | mrr | hit@10_se |" in summary
    assert "| ranker.onnx_vs_eager | speedup_onnx | 4 (3.2 – 7.5) |" in summary
    assert "Recall@10, dense all-action, mixed negatives + logQ 0.229" in summary


def test_error_bars_come_from_std_and_se_columns(inputs):
    ev, _ = inputs
    ranker = json.loads((ev / "ranker_synthetic.json").read_text())
    assert ("hit3_save_mean", "hit3_save_std") in quality_metrics(ranker["rows"])
    pinsage = json.loads((ev / "pinsage_ml-100k.json").read_text())
    assert quality_metrics(pinsage["rows"]) == [("hit@10", "hit@10_se"), ("hit@50", None), ("mrr", None)]
    assert PAPER["pinnerformer"]["lines"]["recall@10"] == 0.229


def test_report_tolerates_missing_inputs(tmp_path):
    out = tmp_path / "report.html"
    info = build_report(tmp_path / "no-eval", tmp_path / "no-bench.json", out)
    page = out.read_text()
    assert info["evaluations"] == 0 and info["benchmarks"] == 0
    assert "no-eval: no such folder" in page and "no-bench.json: missing" in page
    assert "No model evaluations were found" in page and "No benchmark results were found" in page
    assert "0.229" in page  # the paper numbers are still listed


def test_homefeed_report_command(inputs, tmp_path):
    ev, bench = inputs
    out = tmp_path / "cli" / "report.html"
    proc = subprocess.run([str(Path(sys.executable).parent / "homefeed"), "report", "--eval", str(ev), "--bench",
                           str(bench), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}: 3 evaluations, 2 benchmarks" in proc.stdout and "missing:" in proc.stdout
    assert len(_images(out.read_text())) == 6


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
