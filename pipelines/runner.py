"""Compile, run locally (``kfp.local``) and submit the pipelines; used by ``homefeed pipeline`` and the demo.

A local run executes the same DAG as the cluster with ``kfp.local.SubprocessRunner(use_venv=False)``:
each step is a subprocess of this Python environment. Persistent state that outlives a run (the user
embedding store, the Feast repo, the Milvus Lite file) goes under ``<out>/store``; the run's artifacts
under ``<out>/kfp/<pipeline>-<timestamp>/<task>/<output>``. After a run, ``<out>/<pipeline>-run.json``
lists every artifact path and the parameters, and the daily run reads the training run's summary.
"""

from __future__ import annotations

import builtins
import datetime as dt
import inspect
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kfp
import yaml
from kfp import compiler
from kfp import local as kfp_local

from components.data.durable import atomic_write_bytes
from components.data.io import read_meta
from pipelines import daily_embedding, training

PIPELINES = {"training": "homefeed-training", "daily": "homefeed-daily-embedding"}

TINY_TRAINING = {
    "data_experiment": "synthetic_tiny",
    "pinsage_experiment": "pinsage_tiny",
    "pinnerformer_experiment": "pinnerformer_tiny",
    "ranker_experiment": "ranker_tiny",
    "min_auc": 0.0,
}


def pipeline_func(name: str, local: bool = False, local_import: bool = False) -> Callable:
    """The pipeline function ``training`` or ``daily`` (cluster settings unless ``local``); ``local_import``:
    the local training DAG starts from import_data instead of prepare_data (see pipelines.training.build)."""
    if name == "training":
        return training.build(local=local, local_import=local_import)
    if name == "daily":
        return daily_embedding.build(local=local)
    raise ValueError(f"unknown pipeline '{name}'; expected one of {', '.join(PIPELINES)}")


def compile_pipelines(out_dir: str | Path, names: list[str] | None = None) -> list[Path]:
    """Compile the cluster pipelines to ``<out_dir>/<name>.yaml`` (atomically); return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names or list(PIPELINES):
        path = out_dir / f"{name}.yaml"
        tmp = out_dir / f".{name}.tmp.yaml"
        compiler.Compiler().compile(pipeline_func(name), str(tmp))
        tmp.replace(path)
        paths.append(path)
    return paths


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``["min_auc=0.6", "ranker_overrides=[epochs=2]"]`` -> typed values (YAML; dates stay strings)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"pipeline parameter '{item}' is not of the form name=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw else ""
        out[key.strip()] = raw if isinstance(value, dt.date) else value  # dates stay YYYY-MM-DD strings
    return out


def _check_params(func: Callable, params: dict[str, Any], name: str) -> None:
    known = set(inspect.signature(func.pipeline_func).parameters) if hasattr(func, "pipeline_func") else None
    if known is None:
        known = set(func.component_spec.inputs or {})
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"pipeline '{name}': unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def check_params(name: str, params: dict[str, Any], local: bool = True) -> None:
    """Raise ValueError naming any parameter pipeline ``name`` does not have (before anything runs)."""
    _check_params(pipeline_func(name, local=local), params, name)


def _summary(root: Path, prefix: str, since: float) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The newest run directory of ``prefix`` and, per task, each output artifact's path and metadata
    (metrics included) from the task's ``executor_output.json``."""
    runs = [p for p in root.glob(f"{prefix}-*") if p.is_dir() and p.stat().st_mtime >= since - 1]
    if not runs:
        raise RuntimeError(f"{root}: no {prefix}-* run directory was written")
    run = max(runs, key=lambda p: p.stat().st_mtime)
    tasks: dict[str, dict[str, Any]] = {}
    for task in sorted(p for p in run.iterdir() if p.is_dir()):
        out_file = task / "executor_output.json"
        outputs = json.loads(out_file.read_text()).get("artifacts", {}) if out_file.exists() else {}
        tasks[task.name] = {name: {"path": a["artifacts"][0]["uri"], "metadata": a["artifacts"][0].get("metadata", {})}
                            for name, a in outputs.items() if a.get("artifacts")}
    return run, tasks


@contextmanager
def local_session(pipeline_root: Path, workspace_root: Path) -> Iterator[None]:
    """``kfp.local`` initialised for a run (SubprocessRunner without a venv, errors raised), and this process's
    ``print`` as it was afterwards. kfp.local 2.17 indents ``print`` for each task by swapping ``builtins.print``
    and putting back the one it found; the threads of a ``dsl.ParallelFor`` (the sharded daily run) put back each
    other's, so ``print`` stayed indented in the process: the Katib lines of a later ``homefeed tune --trial``
    started with spaces and Katib would not have read their time."""
    original = builtins.print
    kfp_local.init(runner=kfp_local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
                   workspace_root=str(workspace_root), raise_on_error=True)
    try:
        yield
    finally:
        builtins.print = original


def run_local(name: str, out: str | Path, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run pipeline ``name`` with ``kfp.local``; write and return ``<out>/<name>-run.json``.

    ``training`` defaults to the tiny experiments; ``daily`` defaults to the artifacts of the last local
    training run in ``out`` and to the first held-out day of its data.
    """
    out = Path(out).resolve()
    store = out / "store"
    params = dict(params or {})
    if name == "training":
        params = {**TINY_TRAINING, "embeddings_root": str(store / "embeddings"),
                  "feature_repo": str(store / "feature_repo"), "milvus_uri": str(store / "milvus.db"), **params}
    elif name == "daily":
        params = {**daily_defaults(out, params.get("date")), **params}
    func = pipeline_func(name, local=True, local_import=bool(params.get("import_config")))
    _check_params(func, params, name)
    root = out / "kfp"
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with local_session(root, out / "kfp-workspace"):
        func(**params)
    run_dir, tasks = _summary(root, PIPELINES[name], t0)
    summary = {"pipeline": PIPELINES[name], "run_dir": str(run_dir), "seconds": round(time.time() - t0, 1),
               "parameters": params, "artifacts": tasks}
    atomic_write_bytes(out / f"{name}-run.json", json.dumps(summary, indent=2).encode())
    return summary


def daily_defaults(out: Path, date: str | None = None) -> dict[str, Any]:
    """Daily parameters from the last local training run in ``out`` (its data, models and stores)."""
    path = out / "training-run.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no local training run to take models from; run "
                                "`homefeed pipeline run training --local` first (or pass the *_uri parameters)")
    t = json.loads(path.read_text())
    a, p = t["artifacts"], t["parameters"]
    data = (a.get("prepare-data") or a.get("import-data") or {}).get("data", {}).get("path")
    if not data:  # the training pipeline builds its data with prepare_data or, given an import config, import_data
        raise ValueError(f"{path}: neither prepare-data nor import-data wrote a data artifact")
    if not date:
        split = int(read_meta(data)["split_timestamp"])
        date = dt.datetime.fromtimestamp(split, dt.UTC).strftime("%Y-%m-%d")
    return {"date": date, "data_uri": data, "pinsage_model_uri": a["train-pinsage"]["model"]["path"],
            "pinnerformer_model_uri": a["train-pinnerformer"]["model"]["path"],
            "embeddings_root": p["embeddings_root"],
            "feature_repo": p["feature_repo"], "milvus_uri": p["milvus_uri"]}


def submit(name: str, host: str, params: dict[str, Any] | None = None, experiment: str = "homefeed",
           run_name: str | None = None) -> str:
    """Submit the cluster pipeline ``name`` to the KFP API at ``host`` with ``kfp.Client``; return the run id.

    Multi-user KFP needs the profile namespace: ``$KFP_NAMESPACE`` (set by the Helm chart's CronJob).
    """
    func = pipeline_func(name)
    params = dict(params or {})
    _check_params(func, params, name)
    namespace = os.environ.get("KFP_NAMESPACE") or None
    client = kfp.Client(host=host, namespace=namespace) if namespace else kfp.Client(host=host)
    result = client.create_run_from_pipeline_func(func, arguments=params, experiment_name=experiment,
                                                  namespace=namespace,
                                                  run_name=run_name or f"{PIPELINES[name]}-{int(time.time())}")
    return result.run_id
