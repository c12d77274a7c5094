"""When did a source row last change? A digest of each row's values, compared with the previous source's.

``feast_sources`` stamps a row of a new snapshot with the start of its date when the row is new or its values
differ from the previous snapshot's row for the same id, else keeps the previous ``event_timestamp``; the daily
materialization then loads only the rows stamped since its last run. The digest is 64 bits (splitmix64's
finaliser over the row's words): two different rows share one with probability ~2^-64. What is kept per entity
of the previous snapshot is its id, digest and timestamp (24 bytes), never its values.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

TS = pa.timestamp("us", tz="UTC")


class FeatureStoreError(RuntimeError):
    """A feature-store problem with a message naming the repo, view or file."""


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(h: np.ndarray, v: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over ``h ^ v`` (uint64, wrapping): a well-mixed running hash of a row's words."""
    x = h ^ v
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _words(col: pa.ChunkedArray | pa.Array, where: str) -> np.ndarray:
    """(n, m) uint64 words of a column's values per row (floats by their float64 bits, nulls as a flagged word)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n, t = len(col), col.type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy()
        if n and (lengths != lengths[0]).any():
            raise FeatureStoreError(f"{where}: rows of different lengths ({lengths.min()}..{lengths.max()})")
        d = int(lengths[0]) if n else 0
        flat = pc.list_flatten(col).cast(pa.float32()).to_numpy(zero_copy_only=False)
        return flat.reshape(n, d).view(np.uint32).astype(np.uint64)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        enc = pc.dictionary_encode(col)
        hashes = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")
                           for s in enc.dictionary.to_pylist()] + [0], np.uint64)
        codes = pc.fill_null(enc.indices, len(enc.dictionary)).to_numpy()
        return hashes[codes][:, None]
    null = col.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_floating(t):
        v = pc.fill_null(col.cast(pa.float64()), 0.0).to_numpy().view(np.uint64)
    else:
        v = pc.fill_null(col.cast(pa.int64()), 0).to_numpy().view(np.uint64)
    return np.stack([v, null.astype(np.uint64)], axis=1)


def row_digests(batch: pa.RecordBatch | pa.Table, columns: list[str], where: str) -> np.ndarray:
    """(n,) uint64: a digest of each row's values in ``columns`` (two rows with equal values, equal digests)."""
    h = np.full(batch.num_rows, 0x9E3779B97F4A7C15, np.uint64)
    for i, c in enumerate(columns):
        w = _words(batch.column(c), f"{where}: column '{c}'")
        for j in range(w.shape[1]):
            h = _mix(h, w[:, j] + np.uint64(i * 1_000_003 + j))
    return h


class Stamps:
    """The previous source's (id -> digest, event_timestamp): which rows of a new snapshot changed, and when the
    others last did. Empty (everything stamped ``as_of``) without a comparable previous source."""

    def __init__(self, previous: Path, id_column: str, columns: list[str], as_of: dt.datetime, batch_rows: int):
        self.ids = np.zeros(0, np.int64)
        self.digests = np.zeros(0, np.uint64)
        self.ts = np.zeros(0, np.int64)
        self.as_of = int(as_of.timestamp() * 1_000_000)
        if not previous.exists():
            return
        pf = pq.ParquetFile(previous)
        if set(pf.schema_arrow.names) != {id_column, *columns, "event_timestamp"}:
            return  # another schema (new feature columns): every row is new
        ids, digests, ts = [], [], []
        for b in pf.iter_batches(batch_size=batch_rows):
            ids.append(b.column(id_column).to_numpy().astype(np.int64))
            digests.append(row_digests(b, columns, str(previous)))
            ts.append(b.column("event_timestamp").cast(TS).cast(pa.int64()).to_numpy())
        if ts and max(int(t.max()) for t in ts if len(t)) > self.as_of:
            return  # a backfill: an older date than the source holds is one snapshot as of that date
        if ids:
            all_ids = np.concatenate(ids)
            order = np.argsort(all_ids, kind="stable")
            self.ids, self.digests, self.ts = all_ids[order], np.concatenate(digests)[order], np.concatenate(ts)[order]

    def of(self, ids: np.ndarray, digests: np.ndarray) -> tuple[pa.Array, int]:
        """(event_timestamp per row, rows changed): the previous timestamp where the row is unchanged, else as_of."""
        pos = np.searchsorted(self.ids, ids).clip(0, max(len(self.ids) - 1, 0))
        same = (self.ids[pos] == ids) & (self.digests[pos] == digests) if len(self.ids) else np.zeros(len(ids), bool)
        ts = np.where(same, self.ts[pos] if len(self.ts) else 0, self.as_of)
        return pa.array(ts, pa.int64()).cast(TS), int((~same).sum())
