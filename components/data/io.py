"""Reading and writing a data directory: day or month partitions, tables, metadata.

Every file is written through :mod:`components.data.durable` (temporary file, fsync, rename, folder fsync), so
a crash never leaves a half-written file; Parquet page checksums are verified on read.

Partitioned tables (events, impressions) live in ``<table>/dt=<key>/*.parquet`` where ``<key>`` is a
UTC day ``YYYY-MM-DD`` or, for long sparse logs, a UTC month ``YYYY-MM`` (one granularity per table).
Every ``*.parquet`` file of a partition folder belongs to it (the writer names its file
``part-0.parquet``); names starting with ``.`` are temporary files and ignored.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.data.durable import atomic_write_json, atomic_write_parquet, read_parquet
from components.data.schemas import TABLES, DataValidationError, TableSpec

PART_FILE = "part-0.parquet"
Granularity = Literal["day", "month"]
GRANULARITIES: tuple[str, ...] = ("day", "month")
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MONTH_RE = re.compile(r"^\d{4}-\d{2}$")


# ---------------------------------------------------------------------------------------------
# Partition keys
# ---------------------------------------------------------------------------------------------


def day_of(ts: np.ndarray | int) -> np.ndarray:
    """Unix seconds -> day strings ``YYYY-MM-DD`` (UTC)."""
    return np.datetime_as_string(np.asarray(ts, dtype="int64").astype("datetime64[s]"), unit="D")


def month_of(ts: np.ndarray | int) -> np.ndarray:
    """Unix seconds -> month strings ``YYYY-MM`` (UTC)."""
    return np.datetime_as_string(np.asarray(ts, dtype="int64").astype("datetime64[s]"), unit="M")


def day_bounds(day: str) -> tuple[int, int]:
    """``YYYY-MM-DD`` -> [start, end) in unix seconds (UTC)."""
    try:
        if not _DAY_RE.match(day):
            raise ValueError(day)
        d = dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    except (ValueError, TypeError) as e:
        raise ValueError(f"date '{day}' is not of the form YYYY-MM-DD") from e
    start = int(d.timestamp())
    return start, start + 86_400


def partition_granularity(key: str) -> Granularity:
    """'day' for ``YYYY-MM-DD``, 'month' for ``YYYY-MM``; ValueError naming ``key`` otherwise."""
    if _DAY_RE.match(key):
        day_bounds(key)  # a real calendar day (not 2024-13-45)
        return "day"
    if _MONTH_RE.match(key):
        partition_bounds(key)
        return "month"
    raise ValueError(f"partition 'dt={key}' is not of the form dt=YYYY-MM-DD or dt=YYYY-MM")


def partition_bounds(key: str) -> tuple[int, int]:
    """A partition key (``YYYY-MM-DD`` or ``YYYY-MM``) -> [start, end) in unix seconds (UTC)."""
    if _MONTH_RE.match(key):
        try:
            start = dt.datetime.strptime(key, "%Y-%m").replace(tzinfo=dt.UTC)
        except ValueError as e:
            raise ValueError(f"partition 'dt={key}' is not a real month (expected YYYY-MM)") from e
        end = start.replace(year=start.year + (start.month == 12), month=start.month % 12 + 1)
        return int(start.timestamp()), int(end.timestamp())
    if _DAY_RE.match(key):
        try:
            return day_bounds(key)
        except ValueError as e:
            raise ValueError(f"partition 'dt={key}' is not a real day (expected YYYY-MM-DD)") from e
    raise ValueError(f"partition 'dt={key}' is not of the form dt=YYYY-MM-DD or dt=YYYY-MM")


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def write_table(data_dir: str | Path, name: str, table: pa.Table) -> Path:
    """Write a non-partitioned table ``name`` (see ``schemas.TABLES``)."""
    spec = TABLES[name]
    if spec.partitioned:
        raise ValueError(f"table '{name}' is partitioned by day; use write_partitioned")
    return atomic_write_parquet(table, Path(data_dir) / spec.filename)


def write_partitioned(data_dir: str | Path, name: str, table: pa.Table, ts_column: str = "timestamp",
                      granularity: Granularity = "day") -> list[Path]:
    """Split ``table`` by the UTC day (``granularity="day"``: ``dt=YYYY-MM-DD``) or month (``"month"``:
    ``dt=YYYY-MM``, for long sparse logs) of ``ts_column`` and write one partition each, as
    ``dt=<key>/part-0.parquet``.

    Each partition file is written atomically; rewriting a partition replaces that partition only.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity '{granularity}': expected one of {', '.join(GRANULARITIES)}")
    root = Path(data_dir) / TABLES[name].filename
    ts = table.column(ts_column).to_numpy()
    if granularity == "day":
        index = ts // 86_400  # UTC days since the epoch
    else:
        index = ts.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64)  # UTC months since 1970-01
    if len(index) and (index[1:] >= index[:-1]).all():
        order = None  # already in partition order (the usual case): no copy
    else:
        order = np.argsort(index, kind="stable")
        index = index[order]
        table = table.take(pa.array(order))
    paths = []
    uniq, starts = np.unique(index, return_index=True)
    ends = list(starts[1:]) + [len(index)]
    if granularity == "day":
        keys = day_of(uniq * 86_400)
    else:
        keys = np.datetime_as_string(uniq.astype("datetime64[M]"), unit="M")
    for key, s, e in zip(keys, starts, ends):
        paths.append(atomic_write_parquet(table.slice(int(s), int(e - s)), root / f"dt={key}" / PART_FILE))
    return paths


def partition_dirs(data_dir: str | Path, name: str) -> list[Path]:
    """Every ``dt=*`` folder of table ``name`` (valid key or not), sorted by name."""
    root = Path(data_dir) / TABLES[name].filename
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("dt=") and p.is_dir())


def files_in(folder: str | Path) -> list[Path]:
    """The Parquet files of one partition folder: every ``*.parquet`` not starting with ``.``, sorted."""
    return sorted(p for p in Path(folder).glob("*.parquet") if not p.name.startswith(".") and p.is_file())


def check_partition_names(data_dir: str | Path, name: str) -> list[str]:
    """Problems with the partition folders of ``name``: keys that are not ``YYYY-MM-DD`` / ``YYYY-MM``,
    and day and month partitions mixed in one table. Each message names the folder."""
    errors, kinds = [], {}
    base = Path(data_dir)
    root = base / TABLES[name].filename
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if not p.name.startswith(("dt=", ".", "_")):  # ".": a writer's temp file, "_": e.g. _SUCCESS
                errors.append(f"{p.relative_to(base)}: not a partition folder (expected {TABLES[name].filename}/"
                              "dt=YYYY-MM-DD/ or dt=YYYY-MM/ folders only); its rows would be ignored")
            elif p.name.startswith("dt=") and not p.is_dir():
                errors.append(f"{p.relative_to(base)}: a file, expected a partition folder")
    for folder in partition_dirs(data_dir, name):
        try:
            kinds.setdefault(partition_granularity(folder.name[3:]), folder)
        except ValueError as e:
            errors.append(f"{folder.relative_to(base)}: {e}")
    if len(kinds) > 1:
        errors.append(f"{TABLES[name].filename}: mixes day and month partitions ({kinds['day'].name} and "
                      f"{kinds['month'].name}); expected one granularity per table")
    return errors


def partitions(data_dir: str | Path, name: str) -> list[str]:
    """Sorted partition keys (``YYYY-MM-DD`` or ``YYYY-MM``) that table ``name`` has files for.

    Raises :class:`DataValidationError` naming the folder for a ``dt=`` folder whose key is not a
    day or a month (``dt=garbage``), rather than skipping it silently.
    """
    errors = check_partition_names(data_dir, name)
    if errors:
        raise DataValidationError(errors)
    return [p.name[3:] for p in partition_dirs(data_dir, name) if files_in(p)]


def partition_path(data_dir: str | Path, name: str, key: str) -> Path:
    """The file the writer uses for partition ``key`` (``dt=<key>/part-0.parquet``)."""
    return Path(data_dir) / TABLES[name].filename / f"dt={key}" / PART_FILE


def partition_files(data_dir: str | Path, name: str, key: str) -> list[Path]:
    """Every Parquet file of partition ``key`` (see :func:`files_in`)."""
    return files_in(Path(data_dir) / TABLES[name].filename / f"dt={key}")


def locate(data_dir: str | Path, name: str, key: str,
           stored: list[str] | None = None) -> tuple[str, tuple[int, int] | None] | None:
    """The partition holding ``key``'s rows and the [start, end) to filter them by (None = all rows).

    ``key`` is a stored key, or a day ``YYYY-MM-DD`` inside a stored month ``YYYY-MM``. None when
    the table has no such partition. ``stored``: the table's :func:`partitions` when the caller has listed
    them already; a loop over keys passes them, or it lists (and checks) every partition folder once per key
    (quadratic: 640 listings of 213 folders for one read of ML-100k's events).
    """
    stored = partitions(data_dir, name) if stored is None else stored
    if key in stored:
        return key, None
    if _DAY_RE.match(key) and key[:7] in stored:
        return key[:7], day_bounds(key)
    return None


def read_partition(data_dir: str | Path, name: str, key: str, columns: list[str] | None = None,
                   stored: list[str] | None = None) -> pa.Table:
    """The rows of partition or day ``key`` (every file of the folder; a day of a month partition is
    filtered on ``timestamp``). FileNotFoundError naming the path when there is none. ``stored``: see
    :func:`locate`."""
    found = locate(data_dir, name, key, stored)
    if found is None:
        raise FileNotFoundError(f"{partition_path(data_dir, name, key).parent}: no {name} partition for {key}")
    stored, bounds = found
    read_cols = None if columns is None else list(dict.fromkeys(columns + (["timestamp"] if bounds else [])))
    tables = [read_parquet(p, columns=read_cols) for p in partition_files(data_dir, name, stored)]
    table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    if bounds is not None:
        ts = table.column("timestamp")
        table = table.filter(pc.and_(pc.greater_equal(ts, bounds[0]), pc.less(ts, bounds[1])))
        if columns is not None:
            table = table.select(columns)
    return table


def read_partitions(data_dir: str | Path, name: str, days: Iterable[str] | None = None) -> pa.Table:
    """Concatenate the partitions of ``name`` (all, or the listed days/months, in order)."""
    stored = partitions(data_dir, name)  # listed once for every key
    wanted = stored if days is None else sorted(days)
    tables = [read_partition(data_dir, name, d, stored=stored) for d in wanted
              if locate(data_dir, name, d, stored) is not None]
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
    return read_parquet(path)


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (is {data_dir} a homefeed data directory?)")
    return json.loads(path.read_text())


def write_meta(data_dir: str | Path, meta: dict[str, Any]) -> Path:
    return atomic_write_json(meta, Path(data_dir) / "meta.json")
