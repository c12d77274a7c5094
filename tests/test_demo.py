"""`python -m pipelines.demo` (what `make demo` runs), for real on the synthetic tiny data.

The whole demo runs once (kfp.local training + daily pipelines, a real tritonserver, Feast SQLite, Milvus Lite,
the report): its terminal output stays short and meaningful, the runner's JSON goes to the log, the report it
writes renders in headless Chromium where installed (screenshot: out/report_screenshot.png), and no process is
left behind. The quiet-output plumbing and a failing run are checked on their own, cheaply.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from components.evaluation.result import read_results
from components.report.browser import check_in_browser, chromium, decode_images

REPO = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^\[\d\d:\d\d\] ")


def _demo(args: list[str], tmp_path: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOMEFEED_QUIET": "", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "pipelines.demo", "--out", str(tmp_path / "demo"),
                           "--report", str(tmp_path / "report.html"), "--eval-dir", str(tmp_path / "eval"),
                           "--bench", str(tmp_path / "no-bench.json"), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _leftovers(marker: str) -> list[str]:
    """Processes whose command line mentions ``marker`` (this test's scratch folder)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()[1:] if marker in line and "ps -eo" not in line]


def test_quiet_output_sends_subprocess_output_to_the_log(tmp_path):
    """Everything written to fds 1/2 (also by subprocesses) lands in the log; the console stays clean."""
    script = textwrap.dedent(f"""
        import subprocess, sys
        from pathlib import Path
        from pipelines.demo_console import Console, quiet_output
        with quiet_output(Path({str(tmp_path / 'demo.log')!r}), verbose=False) as stream:
            console = Console(stream, log=sys.stdout)
            console.line("stage one")
            print('{{"executor_input": 1}}')
            subprocess.run([sys.executable, "-c", "import sys; print('child out'); print('child err', file=sys.stderr)"])
            console.line("stage two")
        print("after")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [STAMP.sub("", x) for x in lines] == ["stage one", "stage two", "after"], lines
    assert proc.stderr == ""
    log = (tmp_path / "demo.log").read_text()
    for text in ('{"executor_input": 1}', "child out", "child err", "### demo: [00:00] stage one"):
        assert text in log, text


def test_task_lines_show_the_headline_metrics(tmp_path):
    """A finished task's line shows the metrics the README leads with: PinnerFormer's Recall@10 and Recall@100
    (Recall@1/2/5 are 0 at demo size) with the users scored, the ranker's AUC(save) and HIT@3/save; a task
    without them its first quality metrics, else its loss."""
    from pipelines.demo import headline_metrics
    from pipelines.demo_console import _task_outputs

    pf = {"steps": 176.0, "final_loss": 6.94, "recall@1": 0.0, "recall@2": 0.0, "recall@5": 0.0, "recall@10": 0.0208,
          "recall@20": 0.104, "recall@50": 0.229, "recall@100": 0.521, "eval_users_scored": 4.0}
    ranker = {"auc_save": 0.690, "auc_closeup": 0.670, "loss": 1.86, "hit3_save": 0.853, "auc_mean": 0.664}
    for name, metrics in (("pf", pf), ("ranker", ranker), ("other", {"ndcg@5": 0.5, "steps": 3.0}),
                          ("pinsage", {"final_loss": 0.0515, "steps": 3156.0})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "executor_output.json").write_text(json.dumps(
            {"artifacts": {"metrics": {"artifacts": [{"metadata": metrics}]}}}))
    assert _task_outputs(tmp_path / "pf") == "recall@10 0.021, recall@100 0.521 (4 users scored)"
    assert _task_outputs(tmp_path / "ranker") == "auc_save 0.690, hit3_save 0.853, auc_mean 0.664"
    assert _task_outputs(tmp_path / "other") == "ndcg@5 0.500"
    assert _task_outputs(tmp_path / "pinsage") == "final_loss 0.0515, steps 3156"
    summary = {"artifacts": {"train-pinnerformer": {"metrics": {"metadata": pf}},
                             "evaluate-ranker": {"metrics": {"metadata": ranker}}}}
    assert headline_metrics(summary) == "PinnerFormer Recall@10 0.021, ranker AUC(save) 0.690, HIT@3/save 0.853"


def test_bad_parameter_exits_2_naming_it(tmp_path):
    proc = _demo(["--tiny", "--set", "no_such_param=1"], tmp_path, timeout=300)  # kfp import: minutes under load
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no_such_param" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.slow
def test_failing_step_one_line_and_the_log(tmp_path):
    """A step that fails (unknown data experiment): one FAILED line naming the log, exit 1, no traceback shown."""
    proc = _demo(["--tiny", "--set", "data_experiment=no_such_experiment"], tmp_path, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "FAILED" in out and "demo.log" in out and "Traceback" not in out
    assert "no_such_experiment" in (tmp_path / "demo" / "demo.log").read_text()
    assert _leftovers(str(tmp_path)) == []


@pytest.mark.slow
def test_demo_end_to_end_quiet_serving_report_in_browser(tmp_path):
    proc = _demo(["--tiny"], tmp_path, timeout=1800)
    demo = tmp_path / "demo"
    try:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        lines = [x for x in proc.stdout.splitlines() if x.strip()]
        # quiet: at most ~40 lines, each a stamped stage/step line or the summary; no runner JSON
        assert len(lines) <= 40, "\n".join(lines)
        assert proc.stderr.strip() == "", proc.stderr[-2000:]
        assert not any(x.lstrip().startswith(("{", "}", '"')) or "executor" in x for x in lines), "\n".join(lines)
        text = "\n".join(lines)
        for step in ("Prepare data", "Train PinSage", "Train ranker", "Build pin index (Milvus)",
                     "Materialise to Feast", "recommend service", "POST /v1/recommend", "p50 per stage", "report ->",
                     "Summary", "curl -s -X POST", "/readyz", "--stop-serving"):
            assert step in text, step
        log = (demo / "demo.log").read_text()
        assert "executor_input" in log or "outputFile" in log  # the runner's JSON went to the log

        # the printed curl command works against the service the demo left running
        curl = next(x for x in lines if "curl -s -X POST" in x).split("query", 1)[1].strip()
        got = subprocess.run(["bash", "-c", curl], cwd=REPO, capture_output=True, text=True, timeout=120)
        body = json.loads(got.stdout)
        assert len(body["items"]) == 10 and "timings_ms" in body, got.stdout[:1000] + got.stderr

        # what the report is made of
        info = json.loads((demo / "demo.json").read_text())
        assert Path(info["pin_embeddings"]).exists() and Path(info["data_dir"]).is_dir()
        latency = json.loads((demo / "recommend_latency.json").read_text())
        assert {"milvus", "triton"} <= set(latency["stages"])
        assert len(latency["stages"]["total"]) == latency["requests"]  # unknown users skip milvus/triton stages
        assert all(0 < len(v) <= latency["requests"] for v in latency["stages"].values())
        results = {r.model: r for r in read_results(tmp_path / "eval")}
        assert {"ranker", "pinnerformer"} <= set(results)
        assert "auc_save" in results["ranker"].metrics and "compute_s" not in results["ranker"].metrics
        pf = results["pinnerformer"]  # the paper's Recall@10 comes along, flagged as another protocol
        assert pf.protocol["candidate pool"] < 1_000_000 and pf.papers
        assert not any(p.protocol_matches for p in pf.papers)
        page = (tmp_path / "report.html").read_text()
        quality = page[page.index("<h2 id='quality'>"):page.index("<h2 id='training'>")]
        assert "0.229" not in quality and "0.229" in page[page.index("<h2 id='papers'>"):]
        for section in ("Training curves", "Pin embeddings", "Recommend latency", "Operational counters"):
            assert section in page
        n_images = len(decode_images(page))
        assert n_images >= 3  # loss curves, projection, latency (one-variant results are tables)
        if chromium() is not None:
            shot = REPO / "out" / "report_screenshot.png"
            seen = check_in_browser(tmp_path / "report.html", shot)
            assert seen["errors"] == [] and len(seen["images"]) == n_images
            assert all(i["w"] > 0 and i["complete"] for i in seen["images"]), seen["images"]
    finally:
        stop = subprocess.run([sys.executable, "-m", "pipelines.demo", "--stop-serving", "--out", str(demo)],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
    assert stop.returncode == 0 and "tritonserver" in stop.stdout and "recommend service" in stop.stdout, stop
    assert _leftovers(str(tmp_path)) == []  # tritonserver, the service and every step process stopped
