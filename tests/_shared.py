"""Artifacts built once per test run and shared by every test that only needs "some" of them: the synthetic tiny
data, ML-100k, a tiny PinSage + PinnerFormer pair with its pin table, and a tiny ranker with its ONNX export.

Under pytest-xdist (``make test`` runs two workers) a session fixture runs once per worker; these builders run
once per *run*: the first worker to ask builds into the run's shared temporary directory under an exclusive
``flock``, the other waits for it and reuses the result. A build that failed part way is started again from
scratch. Tests must treat what they get as read-only (copy it, or write beside it in their own ``tmp_path``);
a test that checks how an artifact is built (resume, DDP, export failures) still builds its own.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from components import config


def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This run's temporary directory, the same for every xdist worker (each worker's basetemp is a child)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """``run_dir/name``, made by ``build(path)`` by the first process of this run that asks for it."""
    root = run_dir(tmp_path_factory)
    out, done = root / name, root / f"{name}.complete"  # the marker sits beside: ``out`` holds only what build made
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)  # what a failed build left
            build(out)
            done.touch()
    return out


def build_tiny_data(out: Path) -> None:
    """Experiment synthetic_tiny: 300 users, 800 pins, ~9k events."""
    from components.data.prepare import prepare

    prepare(config.load("synthetic_tiny"), out)


def build_ml100k_data(out: Path) -> None:
    """ML-100k mapped into the event schema by the installed console script, ``homefeed data prepare --dataset
    ml-100k`` (the same ``prepare`` call the library makes; tests/test_cli.py checks what it printed:
    `prepare_output`)."""
    cmd = [str(Path(sys.executable).parent / "homefeed"), "data", "prepare", "--dataset", "ml-100k", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          cwd=Path(__file__).resolve().parents[1], timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    (out.parent / f"{out.name}.prepare.txt").write_text(proc.stdout)


def prepare_output(data_dir: Path) -> str:
    """What ``homefeed data prepare`` printed when it made ``data_dir`` (build_ml100k_data)."""
    return (data_dir.parent / f"{data_dir.name}.prepare.txt").read_text()


def build_retrieval_models(data: Path, out: Path) -> None:
    """Tiny PinSage and PinnerFormer (one epoch each) and the unsharded pin table (store ``pins``, version
    ``full``): what a training run hands the daily run. ``out/pinsage``, ``out/pins``, ``out/pinnerformer``."""
    from components.inference.pinsage import embed_pins
    from components.training import pinnerformer, pinsage

    pinsage.train(config.load("pinsage_tiny", ["epochs=1"]), data, out / "pinsage")
    pins = embed_pins(out / "pinsage", data, out / "pins", version="full")
    pinnerformer.train(config.load("pinnerformer_tiny", ["epochs=1"]), data, pins, out / "pinnerformer")


def build_ranker_export(data: Path, out: Path) -> None:
    """The tiny ranker (experiment ranker_tiny, on the content embeddings) in ``out/model`` and its ONNX export
    with the parity check on real rows in ``out/export``."""
    from components.serving.export import export_ranker
    from components.training.ranker import train

    train(config.load("ranker_tiny"), data, out / "model")
    export_ranker(out / "model", out / "export", data_dir=data)
