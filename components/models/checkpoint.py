"""Checkpoint files: atomic writes, and reads that never execute pickled code.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values (dict, list, str,
int, float, bool, None), so that :func:`read_checkpoint` can use ``torch.load(weights_only=True)``: a file
that carries any other pickled object (a class instance, a numpy array, a function) is refused with an
error instead of being executed. Keys:

    model       the module's state_dict
    optimizer   the optimizer's state_dict, or None (final ``model.pt`` files carry none)
    step        optimizer steps taken
    config      the resolved config as a plain dict (``config.to_dict``)
    rng         torch / numpy / python RNG states as tensors and ints (:func:`rng_state`)
    extra       what the model needs beside its weights (feature spec, training position, sketch...)

This module sits below the models (they read their weights with it) and above config/data; training
writes checkpoints, inference and serving read them.
"""

from __future__ import annotations

import io
import pickle
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components import config as config_mod
from components.data.durable import atomic_write_bytes


class CheckpointError(ValueError):
    """A checkpoint file is missing, unsafe to load, or does not fit what reads it."""


def rng_state() -> dict[str, Any]:
    """The torch, numpy and python RNG states as tensors and ints (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                       "gauss": py_gauss}}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if hasattr(model, "module") else model


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    step: int, cfg: Any, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write model/optimizer/RNG state, the step, the resolved config and ``extra``."""
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step),
        "config": config_mod.to_dict(cfg),
        "rng": rng_state(),
        "extra": extra or {},
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents, loaded with ``weights_only=True`` (pickled objects are refused)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: refused to load: the file holds pickled objects other than tensors "
                              f"and plain values ({first}); only checkpoints written by homefeed's "
                              "save_checkpoint are read") from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint: {e}") from e
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: expected a checkpoint dict with 'model', 'step', 'config', got "
                              f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
    return state


def load_checkpoint(path: str | Path, model: torch.nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, restore_rng: bool = True) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` into ``model``/``optimizer`` (and the RNGs)."""
    state = read_checkpoint(path)
    if model is not None:
        unwrap(model).load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if restore_rng and "rng" in state:
        set_rng_state(state["rng"])
    return state


def load_saved_config(model_dir: Path, state: dict[str, Any], expected: type) -> Any:
    """The model's config: ``config.yaml`` beside ``model.pt``, else the copy inside the checkpoint."""
    if (model_dir / "config.yaml").exists():
        cfg = config_mod.read_saved(model_dir)
    else:
        raw = dict(state.get("config") or {})
        raw.pop("model", None)
        cfg = config_mod.build(expected, raw, where=str(model_dir / "model.pt"))
    if not isinstance(cfg, expected):
        raise CheckpointError(f"{model_dir}/config.yaml: expected a {expected.__name__}, got {type(cfg).__name__}")
    return cfg


def load_trained(model_dir: str | Path, expected: type, build: Callable[[Any, dict[str, Any]], torch.nn.Module],
                 command: str) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """(model in eval mode, its config, extra) from a training output directory's ``model.pt``.

    ``build(cfg, extra)`` makes the empty model; ``command`` is what writes such a directory (for the error).
    """
    path = Path(model_dir) / "model.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no {command.split()[-1]} model (train one with `{command}`)")
    state = read_checkpoint(path)
    cfg = load_saved_config(Path(model_dir), state, expected)
    extra = state.get("extra") or {}
    model = build(cfg, extra)
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg, extra
