"""Helpers shared by the Kubeflow steps (imported inside each step function, so that the lightweight
local components and the containerized cluster components run the same code). Its own imports are at
module level: importing it is what a step does once it runs."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

from components import config
from components.data.io import read_meta
from components.data.tables import TABLE_FILE, VersionedStore, read_table


def load_config(experiment: str, overrides: list[str] | None, model: str | None = None):
    """``config.load`` plus the resolved config as a plain dict (for artifact metadata)."""
    cfg = config.load(experiment, list(overrides or []), model=model)
    return cfg, config.to_dict(cfg)


def numeric_items(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of ``values`` (nested dicts flattened with ``.``), as floats."""
    out: dict[str, float] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(numeric_items(v, key + "."))
        elif isinstance(v, bool):
            out[key] = float(v)
        elif isinstance(v, int | float) and math.isfinite(float(v)):
            out[key] = float(v)
    return out


def log_metrics(artifact: Any, values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Log every finite number of ``values`` on a KFP ``Metrics`` artifact; returns what was logged."""
    logged = numeric_items(values, prefix)
    for k, v in logged.items():
        artifact.log_metric(k, v)
    return logged


def dir_size(path: str | Path) -> int:
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def table_path(path: str | Path) -> Path:
    """The published embedding table of an artifact: ``path`` may be a VersionedStore root (CURRENT), an
    embeddings root holding one store (``users/`` or ``pins/``, as components.inference.users writes),
    a folder with the table, or the table file."""
    path = Path(path)
    if (path / "CURRENT").exists():
        return VersionedStore(path).path()
    if path.is_dir():
        stores = [p for p in sorted(path.iterdir()) if (p / "CURRENT").exists()]
        if len(stores) == 1:
            return VersionedStore(stores[0]).path()
        if len(stores) > 1:
            raise ValueError(f"{path}: several embedding stores ({', '.join(p.name for p in stores)}); name one")
        return path / TABLE_FILE
    return path


def default_date(data_dir: str | Path) -> str:
    """The last training day: the UTC day before ``meta.json``'s ``split_timestamp`` (YYYY-MM-DD)."""
    split = int(read_meta(data_dir)["split_timestamp"])
    return (dt.datetime.fromtimestamp(split, dt.UTC) - dt.timedelta(days=1)).strftime("%Y-%m-%d")


def describe_users(users: Any, stats: Any, table: Any, date: str, root: str, previous: str | None,
                   replay: list[str], config: dict, **extra: Any) -> None:
    """The metadata and metrics of a user-embedding output (``embed_users`` unsharded, ``merge_users``)."""
    users.metadata.update({"date": date, "store_root": root, "previous_version": previous or "",
                           "replayed_days": replay, "model_version": table.model_version, "config": config})
    log_metrics(stats, {"users": len(table), "dim": table.dim, "merged": previous is not None or bool(replay),
                        "replayed_days": len(replay), **extra})


def describe_pins(embeddings: Any, stats: Any, model: Any, path: str | Path, shard: int, shards: int) -> None:
    """The metadata and metrics of a pin-embedding output (``embed_pins``, ``embed_pin_tower``): the published
    table's path and model version, the model's config, the table's size and the shard it holds."""
    table = read_table(path)
    embeddings.metadata["table"] = str(path)
    embeddings.metadata["model_version"] = table.model_version
    embeddings.metadata["config"] = model.metadata.get("config", {})
    log_metrics(stats, {"pins": len(table), "dim": table.dim, "shard": shard, "shards": shards})
