"""Reading and writing a data directory: atomic Parquet writes, day partitions, metadata.

Every write goes to a temporary file in the destination folder and is renamed into place, so a crash
never leaves a half-written file; a reader sees the old file or the new one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.data.schemas import TABLES, TableSpec

PART_FILE = "part-0.parquet"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; published files get the usual permissions so
# that other users (a serving container, a pipeline step running as another uid) can read them.
FILE_MODE = 0o666 & ~_umask()


def day_of(ts: np.ndarray | int) -> np.ndarray:
    """Unix seconds -> day strings ``YYYY-MM-DD`` (UTC)."""
    return np.datetime_as_string(np.asarray(ts, dtype="int64").astype("datetime64[s]"), unit="D")


def day_bounds(day: str) -> tuple[int, int]:
    """``YYYY-MM-DD`` -> [start, end) in unix seconds (UTC)."""
    try:
        d = dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    except ValueError as e:
        raise ValueError(f"date '{day}' is not of the form YYYY-MM-DD") from e
    start = int(d.timestamp())
    return start, start + 86_400


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_parquet(table: pa.Table, path: str | Path, **kwargs: Any) -> Path:
    """Write ``table`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, **kwargs)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(obj: Any, path: str | Path) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def write_table(data_dir: str | Path, name: str, table: pa.Table) -> Path:
    """Write a non-partitioned table ``name`` (see ``schemas.TABLES``)."""
    spec = TABLES[name]
    if spec.partitioned:
        raise ValueError(f"table '{name}' is partitioned by day; use write_partitioned")
    return atomic_write_parquet(table, Path(data_dir) / spec.filename)


def write_partitioned(data_dir: str | Path, name: str, table: pa.Table, ts_column: str = "timestamp") -> list[Path]:
    """Split ``table`` by the UTC day of ``ts_column`` and write one ``dt=YYYY-MM-DD`` partition each.

    Each partition file is written atomically; rewriting a day replaces that day only.
    """
    root = Path(data_dir) / TABLES[name].filename
    day_index = table.column(ts_column).to_numpy() // 86_400  # UTC days since the epoch
    if len(day_index) and (day_index[1:] >= day_index[:-1]).all():
        order = None  # already in day order (the usual case): no copy
    else:
        order = np.argsort(day_index, kind="stable")
        day_index = day_index[order]
        table = table.take(pa.array(order))
    paths = []
    uniq, starts = np.unique(day_index, return_index=True)
    ends = list(starts[1:]) + [len(day_index)]
    for day, s, e in zip(day_of(uniq * 86_400), starts, ends):
        paths.append(atomic_write_parquet(table.slice(int(s), int(e - s)), root / f"dt={day}" / PART_FILE))
    return paths


def partitions(data_dir: str | Path, name: str) -> list[str]:
    """Sorted day strings that table ``name`` has partitions for."""
    root = Path(data_dir) / TABLES[name].filename
    if not root.is_dir():
        return []
    return sorted(p.name[3:] for p in root.iterdir() if p.name.startswith("dt=") and (p / PART_FILE).exists())


def partition_path(data_dir: str | Path, name: str, day: str) -> Path:
    return Path(data_dir) / TABLES[name].filename / f"dt={day}" / PART_FILE


def read_partitions(data_dir: str | Path, name: str, days: Iterable[str] | None = None) -> pa.Table:
    """Concatenate the day partitions of ``name`` (all days, or the listed ones, in day order)."""
    wanted = partitions(data_dir, name) if days is None else sorted(days)
    tables = [pq.read_table(partition_path(data_dir, name, d)) for d in wanted
              if partition_path(data_dir, name, d).exists()]
    if not tables:
        raise FileNotFoundError(f"{Path(data_dir) / TABLES[name].filename}: no day partitions"
                                + (f" for {sorted(days)}" if days is not None else ""))
    return pa.concat_tables(tables, promote_options="default")


def read_table(data_dir: str | Path, name: str) -> pa.Table:
    spec: TableSpec = TABLES[name]
    if spec.partitioned:
        return read_partitions(data_dir, name)
    path = Path(data_dir) / spec.filename
    if not path.exists():
        raise FileNotFoundError(f"{path}: table '{name}' is missing")
    return pq.read_table(path)


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (is {data_dir} a homefeed data directory?)")
    return json.loads(path.read_text())


def write_meta(data_dir: str | Path, meta: dict[str, Any]) -> Path:
    return atomic_write_json(meta, Path(data_dir) / "meta.json")


def replace_dir(src: str | Path, dst: str | Path) -> None:
    """Put the complete folder ``src`` at ``dst``; a previous ``dst`` is moved aside only once ``src`` is whole,
    then removed (two renames: readers see the old folder or the new one)."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        dst.rename(old)
        src.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        src.rename(dst)
