"""Embedding tables and their versioned, atomically published store.

An embedding table is Parquet with columns ``<id_column>`` (int64), ``embedding``
(fixed_size_list<float32>[D]), ``model_version`` (string) and ``created_at`` (timestamp[s, UTC]).

A :class:`VersionedStore` keeps versions under ``root/v=<version>/embeddings.parquet`` and a ``CURRENT``
file naming the published one. Publishing writes the new version completely, then replaces
``CURRENT`` with a rename: a reader sees the old version or the new one, never a partial table, and a
run killed midway leaves the previous version current. A backfill of an older version does not move
``CURRENT`` backwards unless asked, and version names cannot escape the store root.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.data.durable import atomic_write_bytes, atomic_write_parquet

TABLE_FILE = "embeddings.parquet"


@dataclass
class EmbeddingTable:
    ids: np.ndarray  # (N,) int64
    embeddings: np.ndarray  # (N, D) float32
    model_version: str
    created_at: dt.datetime
    id_column: str = "pin_id"

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings (len(ids), D), found mask); rows of unknown ids are zero."""
        idx, found = self.positions(ids)
        return self.gather(idx, found), found

    def positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row of each id (len(ids),) int64, found mask): :meth:`lookup` in two halves, so that a caller can keep
        the rows of many ids and :meth:`gather` a few of them at a time (the ranker's batches)."""
        order = np.argsort(self.ids)
        pos = np.searchsorted(self.ids, ids, sorter=order).clip(0, max(len(self.ids) - 1, 0))
        idx = order[pos] if len(self.ids) else pos
        found = (self.ids[idx] == ids) if len(self.ids) else np.zeros(len(ids), bool)
        return idx, found

    def gather(self, idx: np.ndarray, found: np.ndarray) -> np.ndarray:
        """(len(idx), D) float32: the rows :meth:`positions` found, zero where ``found`` is False."""
        out = np.zeros((len(idx), self.dim), np.float32)
        out[found] = self.embeddings[idx[found]]
        return out


def to_arrow(table: EmbeddingTable) -> pa.Table:
    emb = np.ascontiguousarray(table.embeddings, dtype=np.float32)
    n, d = emb.shape
    return pa.table({
        table.id_column: pa.array(np.asarray(table.ids, dtype=np.int64)),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), d),
        "model_version": pa.array([table.model_version] * n, pa.string()),
        "created_at": pa.array([table.created_at] * n, pa.timestamp("s", tz="UTC")),
    })


def write_table(table: EmbeddingTable, path: str | Path) -> Path:
    """Write an embedding table atomically."""
    if table.embeddings.ndim != 2 or len(table.ids) != len(table.embeddings):
        raise ValueError(f"{path}: ids {table.ids.shape} and embeddings {table.embeddings.shape} do not match")
    if not np.isfinite(table.embeddings).all():
        raise ValueError(f"{path}: refusing to publish embeddings with NaN or infinite values")
    return atomic_write_parquet(to_arrow(table), path)


def read_table(path: str | Path, id_column: str | None = None) -> EmbeddingTable:
    path = Path(path)
    if path.is_dir():
        path = path / TABLE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: embedding table not found")
    t = pq.read_table(path)
    id_col = id_column or next((c for c in t.column_names if c.endswith("_id")), None)
    for col in (id_col, "embedding", "model_version", "created_at"):
        if col is None or col not in t.column_names:
            raise ValueError(f"{path}: missing column '{col or '<*_id>'}' (expected an embedding table)")
    emb_col = t.column("embedding").combine_chunks()
    flat = emb_col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    d = emb_col.type.list_size if pa.types.is_fixed_size_list(emb_col.type) else (len(flat) // max(len(t), 1))
    created = t.column("created_at")[0].as_py() if len(t) else dt.datetime.now(dt.UTC)
    version = t.column("model_version")[0].as_py() if len(t) else ""
    return EmbeddingTable(t.column(id_col).to_numpy(), flat.reshape(len(t), d), version, created, id_col)


class VersionError(ValueError):
    """A version name that is not ``YYYY-MM-DD`` / ``[A-Za-z0-9._-]+`` (e.g. one that would leave the store root)."""


VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
CURRENT_FILE = "CURRENT"


def check_version(version: str) -> str:
    """``version`` if it is a safe version name: ``YYYY-MM-DD`` or ``[A-Za-z0-9._-]+`` starting with a letter or
    digit (so never ``..``, a path separator or a hidden name), at most 128 characters."""
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise VersionError(f"embedding version {version!r} is not a valid name: expected YYYY-MM-DD or "
                           f"[A-Za-z0-9._-]+ starting with a letter or digit (no '/', no '..')")
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", version):
        try:
            dt.date.fromisoformat(version)
        except ValueError as e:
            raise VersionError(f"embedding version {version!r} looks like a date but is not one: {e}") from e
    return version


def version_key(version: str) -> tuple[str, str]:
    """Order of versions: by their letters and digits (``2026-12-01`` before ``20261201T093000``), then by name."""
    return re.sub(r"[^0-9A-Za-z]", "", version), version


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class VersionedStore:
    """Versions of an embedding table under ``root``; ``CURRENT`` names the published one.

    - version names are checked (:func:`check_version`): a name can never point outside ``root``;
    - publishing a version older than CURRENT (a backfill) writes it but leaves CURRENT where it is,
      unless ``set_current=True``; :meth:`set_current` moves it explicitly (a rollback);
    - re-publishing a version replaces its table (idempotent, and a corrected re-run wins);
    - the newest ``keep`` versions are kept (and CURRENT, whatever its age);
    - CURRENT is switched atomically: a temporary file, fsync, rename, fsync of the folder. Publishers
      of one store serialise on an advisory lock (``.lock``), so the check-then-switch is atomic too.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def versions(self) -> list[str]:
        """Published versions, oldest first (:func:`version_key`)."""
        if not self.root.is_dir():
            return []
        found = [p.name[2:] for p in self.root.iterdir() if p.name.startswith("v=") and (p / TABLE_FILE).exists()]
        return sorted((v for v in found if VERSION_RE.fullmatch(v)), key=version_key)

    def current(self) -> str | None:
        f = self.root / CURRENT_FILE
        if not f.exists():
            return None
        version = f.read_text().strip()
        try:
            return check_version(version)
        except VersionError as e:
            raise VersionError(f"{f}: {e}") from None

    def path(self, version: str | None = None) -> Path:
        version = self.current() if version is None else version
        if version is None:
            raise FileNotFoundError(f"{self.root}: no published version (CURRENT missing)")
        return self.root / f"v={check_version(version)}" / TABLE_FILE

    def read(self, version: str | None = None) -> EmbeddingTable:
        return read_table(self.path(version))

    @contextlib.contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _write_current(self, version: str) -> None:
        atomic_write_bytes(self.root / CURRENT_FILE, (version + "\n").encode())
        _fsync_dir(self.root)

    def set_current(self, version: str) -> None:
        """Point CURRENT at an existing ``version`` (a rollback, or moving forward after a backfill)."""
        check_version(version)
        with self._locked():
            if not self.path(version).exists():
                raise FileNotFoundError(f"{self.root}: no version '{version}' (have {self.versions()})")
            self._write_current(version)

    def publish(self, table: EmbeddingTable, version: str, keep: int = 3, set_current: bool | None = None) -> Path:
        """Write ``version`` completely, then switch CURRENT to it; keep the newest ``keep`` versions.

        ``set_current``: None (default) switches CURRENT unless ``version`` is older than the current one
        (a backfill); True always switches; False never does.
        """
        check_version(version)
        with self._locked():
            path = write_table(table, self.root / f"v={version}" / TABLE_FILE)
            _fsync_dir(path.parent)
            _fsync_dir(self.root)
            current = self.current()
            move = set_current if set_current is not None else (
                current is None or version_key(version) >= version_key(current))
            if move:
                self._write_current(version)
                current = version
            if keep > 0:
                for old in self.versions()[:-keep]:
                    if old not in (version, current):
                        shutil.rmtree(self.root / f"v={old}", ignore_errors=True)
        return path
