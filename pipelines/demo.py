"""``make demo``: the whole platform on this machine, end to end, with progress printed throughout.

1. the training pipeline on MovieLens-100k through ``kfp.local`` (data, PinSage, PinnerFormer, ranker,
   evaluation, ONNX export, Feast registration, Milvus index);
2. one daily embedding run (the first held-out day: incremental users, new pin versions, alias switch);
3. serving: Feast (SQLite online store), Milvus Lite and a local Triton server (the exported ranker in a
   python-backend model repository) started, and recommendations printed for a few users;
4. the evaluation report ``out/report.html`` (components/report.py) with the pipeline's model metrics;
5. every server stopped (also on failure or Ctrl-C).

Everything goes under ``out/demo`` (``--out``); the report under ``out/``. ``--tiny`` runs on the
synthetic tiny dataset instead (about two minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

# Model sizes for the demo on ML-100k: the papers' architectures, trained briefly so the demo fits in
# minutes on 2 cores (`homefeed eval <model>` runs the full comparisons).
DEMO_TRAINING = {
    "data_experiment": "ml100k",
    "pinsage_experiment": "pinsage_tiny",
    "pinnerformer_experiment": "pinnerformer_tiny",
    "ranker_experiment": "ranker_tiny",
    "pinsage_overrides": ["epochs=2"],
    "pinnerformer_overrides": ["epochs=2"],
    "ranker_overrides": ["epochs=2"],
    "user_backfill_days": 90,  # a new user store replays the last 90 event days (users as of their last activity)
    "min_auc": 0.5,
}
DEMO_USERS = 3


class Progress:
    """Numbered, timed progress lines."""

    def __init__(self, total: int):
        self.t0 = time.perf_counter()
        self.total = total
        self.n = 0

    def step(self, text: str) -> None:
        self.n += 1
        print(f"\n[{self.elapsed()}] ({self.n}/{self.total}) {text}", flush=True)

    def info(self, text: str) -> None:
        print(f"[{self.elapsed()}]     {text}", flush=True)

    def elapsed(self) -> str:
        s = int(time.perf_counter() - self.t0)
        return f"{s // 60:02d}:{s % 60:02d}"


def _metrics(summary: dict[str, Any], task: str, output: str = "metrics") -> dict[str, Any]:
    return summary["artifacts"].get(task, {}).get(output, {}).get("metadata", {})


def write_evaluations(training: dict[str, Any], daily: dict[str, Any], eval_dir: Path, dataset: str) -> list[Path]:
    """One evaluation JSON per model (the report's input contract) from the pipeline's logged metrics.

    A file already written by ``homefeed eval`` (a full comparison) is left as it is.
    """
    from components.data.io import atomic_write_json

    command = "python -m pipelines.demo"
    params = training["parameters"]
    rows = {
        "pinsage": [{"variant": f"pipeline ({params['pinsage_experiment']})", **_metrics(training, "train-pinsage")}],
        "pinnerformer": [{"variant": f"pipeline ({params['pinnerformer_experiment']})",
                          **_metrics(training, "train-pinnerformer")}],
        "ranker": [{"variant": f"pipeline ({params['ranker_experiment']})", **_metrics(training, "evaluate-ranker")}],
    }
    written = []
    for model, model_rows in rows.items():
        path = eval_dir / f"{model}_{dataset}.json"
        if path.exists() and json.loads(path.read_text()).get("source") != "pipeline":
            continue
        atomic_write_json({"model": model, "dataset": dataset, "command": command, "source": "pipeline",
                           "note": "metrics logged by the training pipeline's steps (one trained model, one seed)",
                           "rows": model_rows, "pipeline_run": training["run_dir"],
                           "daily_run": daily["run_dir"]}, path)
        written.append(path)
    return written


def serve_and_recommend(out: Path, training: dict[str, Any], daily: dict[str, Any], progress: Progress,
                        users: int = DEMO_USERS) -> list[dict[str, Any]]:
    """Start Triton over the exported ranker, then ask Feast -> Milvus -> Triton for recommendations."""
    import numpy as np

    from components.inference.tables import VersionedStore
    from components.serving.model_repository import materialize
    from components.serving.recommend import RecommendConfig, Recommender, format_table
    from components.serving.triton import TritonServer

    export_dir = Path(training["artifacts"]["export-ranker"]["exported"]["path"])
    p = daily["parameters"]
    repo = materialize(export_dir, out / "triton_repository", target="python_onnx")
    progress.info(f"Triton model repository: {repo}")
    results = []
    with TritonServer(repo, log_path=out / "tritonserver.log").start() as server:
        progress.info(f"tritonserver ready (http {server.url}, grpc {server.grpc_url}); Feast repo {p['feature_repo']}; "
                      f"Milvus Lite {p['milvus_uri']}")
        cfg = RecommendConfig(feature_repo=Path(p["feature_repo"]), milvus_uri=p["milvus_uri"],
                              triton_url=server.grpc_url, preprocess=export_dir)
        table = VersionedStore(Path(p["embeddings_root"]) / "users").read()
        rng = np.random.default_rng(0)
        picked = sorted(rng.choice(table.ids, size=min(users, len(table)), replace=False).tolist())
        with Recommender(cfg) as rec:
            for user in picked:
                r = rec.recommend(int(user), k=10)
                print(f"\n--- recommendations for user {user} ---\n{format_table(r)}", flush=True)
                results.append(r.to_dict())
        progress.info("stopping tritonserver")
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/demo", help="demo folder (default out/demo; replaced on each run)")
    ap.add_argument("--report", default="out/report.html", help="report path (default out/report.html)")
    ap.add_argument("--eval-dir", default="out/eval", help="evaluation JSON folder (default out/eval)")
    ap.add_argument("--tiny", action="store_true", help="synthetic tiny data instead of ML-100k (fast)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from components.report import build_report
    from pipelines.runner import TINY_TRAINING, run_local

    progress = Progress(total=5)
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    params = dict(TINY_TRAINING if args.tiny else DEMO_TRAINING)
    dataset = "synthetic" if args.tiny else "ml-100k"

    progress.step(f"training pipeline on {dataset} with kfp.local (SubprocessRunner): 12 steps, logs below")
    training = run_local("training", out, params)
    ev = _metrics(training, "evaluate-ranker")
    progress.info(f"training pipeline done in {training['seconds']} s; ranker AUC(save) {ev.get('auc_save', float('nan')):.3f}, "
                  f"HIT@3/save {ev.get('hit3_save', float('nan')):.3f}")

    progress.step("daily embedding pipeline for the first held-out day")
    daily = run_local("daily", out)
    users = _metrics(daily, "embed-users", "stats")
    progress.info(f"daily run for {daily['parameters']['date']} done in {daily['seconds']} s; "
                  f"{int(users.get('users', 0))} users in the merged table")

    progress.step("serving: Feast (SQLite) + Milvus Lite + Triton; recommendations for a few users")
    recs = serve_and_recommend(out, training, daily, progress)

    progress.step(f"evaluation report -> {args.report}")
    eval_dir = Path(args.eval_dir)
    for path in write_evaluations(training, daily, eval_dir, dataset):
        progress.info(f"wrote {path}")
    report = build_report(eval_dir=eval_dir, bench_path=Path(args.report).parent / "bench.json", out=args.report)
    for note in report["notes"]:
        progress.info(f"report note: {note}")

    progress.step("done: every server stopped")
    summary = {"training_run": training["run_dir"], "daily_run": daily["run_dir"], "report": report["html"],
               "recommendations": len(recs), "elapsed": progress.elapsed()}
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
