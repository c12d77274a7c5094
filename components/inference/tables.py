"""Embedding tables and their versioned, atomically published store.

An embedding table is Parquet with columns ``<id_column>`` (int64), ``embedding``
(fixed_size_list<float32>[D]), ``model_version`` (string) and ``created_at`` (timestamp[s, UTC]).

A :class:`VersionedStore` keeps versions under ``root/v=<version>/embeddings.parquet`` and a ``CURRENT``
file naming the published one. Publishing writes the new version completely, then replaces
``CURRENT`` with a rename: a reader sees the old version or the new one, never a partial table, and a
run killed midway leaves the previous version current.
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.data.io import atomic_write_bytes, atomic_write_parquet

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
        order = np.argsort(self.ids)
        pos = np.searchsorted(self.ids, ids, sorter=order).clip(0, max(len(self.ids) - 1, 0))
        idx = order[pos] if len(self.ids) else pos
        found = (self.ids[idx] == ids) if len(self.ids) else np.zeros(len(ids), bool)
        out = np.zeros((len(ids), self.dim), np.float32)
        out[found] = self.embeddings[idx[found]]
        return out, found


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


class VersionedStore:
    """Versions of an embedding table under ``root``; ``CURRENT`` names the published one."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name[2:] for p in self.root.iterdir() if p.name.startswith("v=") and (p / TABLE_FILE).exists())

    def current(self) -> str | None:
        f = self.root / "CURRENT"
        return f.read_text().strip() if f.exists() else None

    def path(self, version: str | None = None) -> Path:
        version = version or self.current()
        if version is None:
            raise FileNotFoundError(f"{self.root}: no published version (CURRENT missing)")
        return self.root / f"v={version}" / TABLE_FILE

    def read(self, version: str | None = None) -> EmbeddingTable:
        return read_table(self.path(version))

    def publish(self, table: EmbeddingTable, version: str, keep: int = 3) -> Path:
        """Write ``version`` completely, then switch CURRENT to it; keep the newest ``keep`` versions."""
        path = write_table(table, self.root / f"v={version}" / TABLE_FILE)
        atomic_write_bytes(self.root / "CURRENT", (version + "\n").encode())
        for old in self.versions()[:-keep] if keep > 0 else []:
            if old != version:
                shutil.rmtree(self.root / f"v={old}", ignore_errors=True)
        return path
