"""Sharding of the daily embedding jobs: which shard an id belongs to, and the merge of the shards' tables.

Shard ``k`` of ``n`` holds the ids whose 64-bit mix (SplitMix64's finaliser) is ``k`` modulo ``n``: a
deterministic partition that does not depend on the order or the range of the ids, and spreads contiguous
id blocks evenly. Each shard job writes an ordinary embedding table of its ids; :func:`merge_tables` checks
that the shards are disjoint and agree (dimension, id column, model version) and returns one table sorted
by id -- the order the unsharded jobs write -- which the merge step publishes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from components.data.tables import EmbeddingTable, read_table

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def check_shard(shard: int, shards: int) -> None:
    """A clear error unless ``0 <= shard < shards``."""
    if not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards={shards!r}: expected a whole number >= 1")
    if not isinstance(shard, int) or not 0 <= shard < shards:
        raise ValueError(f"shard={shard!r}: expected a whole number in [0, {shards - 1}] (shards={shards})")


def shard_of(ids: np.ndarray, shards: int) -> np.ndarray:
    """(N,) shard number in [0, shards) of each id (int64 ids -> SplitMix64 finaliser -> modulo)."""
    x = np.asarray(ids, np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(shards)).astype(np.int64)


def in_shard(ids: np.ndarray, shard: int, shards: int) -> np.ndarray:
    """(N,) bool: which ``ids`` belong to shard ``shard`` of ``shards``."""
    check_shard(shard, shards)
    return shard_of(ids, shards) == shard


def merge_tables(tables: Sequence[EmbeddingTable], names: Sequence[str] | None = None) -> EmbeddingTable:
    """The shards' tables as one table sorted by id; ``names`` (e.g. their paths) name a bad shard in errors.

    The shards must be disjoint and agree on the id column, the dimension and the model version; the merged
    ``created_at`` is the latest of theirs.
    """
    if not tables:
        raise ValueError("no shard tables to merge")
    names = list(names) if names is not None else [f"shard {i}" for i in range(len(tables))]
    first = tables[0]
    for name, t in zip(names, tables):
        if t.id_column != first.id_column or t.dim != first.dim or t.model_version != first.model_version:
            raise ValueError(f"{name}: shard table ({t.id_column}, {t.dim} dims, model {t.model_version}) does not "
                             f"match {names[0]} ({first.id_column}, {first.dim} dims, model {first.model_version})")
    ids = np.concatenate([np.asarray(t.ids, np.int64) for t in tables])
    emb = np.concatenate([np.asarray(t.embeddings, np.float32).reshape(len(t), first.dim) for t in tables])
    order = np.argsort(ids, kind="stable")
    ids, emb = ids[order], emb[order]
    dup = np.flatnonzero(ids[1:] == ids[:-1])
    if len(dup):
        raise ValueError(f"{first.id_column} {int(ids[dup[0]])} is in more than one shard table "
                         f"({len(dup)} duplicated ids): the shards do not partition the ids")
    return EmbeddingTable(ids, emb, first.model_version, max(t.created_at for t in tables), first.id_column)


def merge_files(paths: Sequence[str | Path]) -> EmbeddingTable:
    """:func:`merge_tables` over the shard tables at ``paths`` (embedding table files)."""
    return merge_tables([read_table(p) for p in paths], [str(p) for p in paths])
