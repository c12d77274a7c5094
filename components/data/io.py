"""Reading and writing a data directory: durable atomic writes, day or month partitions, metadata.

Every write goes to a temporary file in the destination folder, is fsynced, renamed into place, and
the folder is fsynced, so a crash (even a power cut) never leaves a half-written file: a reader sees
the old file or the new one. :func:`replace_dir` swaps a whole folder the same way (the target never
stops existing).

Partitioned tables (events, impressions) live in ``<table>/dt=<key>/*.parquet`` where ``<key>`` is a
UTC day ``YYYY-MM-DD`` or, for long sparse logs, a UTC month ``YYYY-MM`` (one granularity per table).
Every ``*.parquet`` file of a partition folder belongs to it (the writer names its file
``part-0.parquet``); names starting with ``.`` are temporary files and ignored.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as dt
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.data.schemas import TABLES, DataValidationError, TableSpec

PART_FILE = "part-0.parquet"
Granularity = Literal["day", "month"]
GRANULARITIES: tuple[str, ...] = ("day", "month")
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MONTH_RE = re.compile(r"^\d{4}-\d{2}$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; published files get the usual permissions so
# that other users (a serving container, a pipeline step running as another uid) can read them.
FILE_MODE = 0o666 & ~_umask()


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
# Durable atomic writes
# ---------------------------------------------------------------------------------------------


def fsync_dir(path: str | Path) -> None:
    """Make a folder's entries (created, renamed files) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and folder under ``root`` (before it is published with a rename)."""
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                _fsync_file(p)
        fsync_dir(dirpath)


def _publish(tmp: str, path: Path) -> None:
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_parquet(table: pa.Table, path: str | Path, **kwargs: Any) -> Path:
    """Write ``table`` to ``path`` through a temporary file, fsync, a rename and a folder fsync.

    Pages carry CRC checksums (``write_page_checksum``), which :func:`read_parquet` verifies: a file
    corrupted on disk is an error, not silently different data."""
    kwargs.setdefault("write_page_checksum", True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, **kwargs)
        _fsync_file(tmp)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file, verifying page checksums where the writer stored them."""
    return pq.read_table(path, columns=columns, page_checksum_verification=True)


def atomic_write_json(obj: Any, path: str | Path) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


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


def locate(data_dir: str | Path, name: str, key: str) -> tuple[str, tuple[int, int] | None] | None:
    """The partition holding ``key``'s rows and the [start, end) to filter them by (None = all rows).

    ``key`` is a stored key, or a day ``YYYY-MM-DD`` inside a stored month ``YYYY-MM``. None when
    the table has no such partition.
    """
    stored = partitions(data_dir, name)
    if key in stored:
        return key, None
    if _DAY_RE.match(key) and key[:7] in stored:
        return key[:7], day_bounds(key)
    return None


def read_partition(data_dir: str | Path, name: str, key: str, columns: list[str] | None = None) -> pa.Table:
    """The rows of partition or day ``key`` (every file of the folder; a day of a month partition is
    filtered on ``timestamp``). FileNotFoundError naming the path when there is none."""
    found = locate(data_dir, name, key)
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
    wanted = partitions(data_dir, name) if days is None else sorted(days)
    tables = [read_partition(data_dir, name, d) for d in wanted if locate(data_dir, name, d) is not None]
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


# ---------------------------------------------------------------------------------------------
# Whole-folder swaps
# ---------------------------------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2_exchange() -> Any:
    """libc's renameat2 (Linux, glibc >= 2.28), or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2_exchange()


def exchange_paths(a: str | Path, b: str | Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``). False when the
    platform or file system cannot; OSError for any other failure."""
    if _RENAMEAT2 is None:
        return False
    rc = _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not supported here
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")


def replace_dir(src: str | Path, dst: str | Path) -> None:
    """Put the complete folder ``src`` at ``dst``, durably, with ``dst`` never missing.

    ``src`` (a sibling of ``dst`` on the same file system) is fsynced file by file, then swapped with
    the old ``dst`` in one atomic ``renameat2(RENAME_EXCHANGE)``: at every instant a reader of ``dst``
    sees the whole old folder or the whole new one, even if this process is killed. The old folder
    (now at ``src``) is then removed. On a platform without the exchange, ``dst`` is moved aside and
    ``src`` renamed in (two renames; ``dst`` is absent between them).
    """
    src, dst = Path(src), Path(dst)
    fsync_tree(src)
    if dst.exists() and not dst.is_symlink() and dst.is_dir() and exchange_paths(src, dst):
        fsync_dir(dst.parent)
        shutil.rmtree(src, ignore_errors=True)
        return
    if dst.exists() or dst.is_symlink():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        dst.rename(old)
        src.rename(dst)
        fsync_dir(dst.parent)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(old, ignore_errors=True)
    else:
        src.rename(dst)
        fsync_dir(dst.parent)
