"""Items and collections of an import: each item's content features (standardised numeric columns, hashed
categorical and multi-valued columns, and a per-item random block, which is all an item without features
gets) and PinSage's boards (a table, a column, or each user's training-period positives).
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from components.config import ConfigError
from components.data.import_columns import IdSpace, no_nulls, numbers_of, read_source, require_columns
from components.data.import_config import ImportConfig


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-spread uint64 hash of each uint64."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def id_block(ids: np.ndarray, dim: int) -> np.ndarray:
    """(N, dim) a fixed pseudo-random unit vector per id (the same id gives the same vector)."""
    if dim == 0:
        return np.zeros((len(ids), 0), np.float32)
    with np.errstate(over="ignore"):
        x = ids.astype(np.int64).view(np.uint64)[:, None] * np.uint64(0x9E3779B97F4A7C15) + np.arange(
            1, dim + 1, dtype=np.uint64)[None, :] * np.uint64(0xD1B54A32D192ED03)
    u = (_mix64(x) >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # (N, dim) in [0, 1)
    v = u * 2.0 - 1.0
    return (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-8)).astype(np.float32)


def _crc_buckets(tokens: np.ndarray, dim: int) -> np.ndarray:
    uniq, inverse = np.unique(tokens.astype(str), return_inverse=True)
    codes = np.fromiter((zlib.crc32(t.encode()) % dim for t in uniq), dtype=np.int64, count=len(uniq))
    return codes[inverse.reshape(-1)]


def item_features(pin_ids: np.ndarray, items: pd.DataFrame | None, item_rows: np.ndarray | None, cfg: ImportConfig,
                  source: str) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, tuple[np.ndarray, int]]]:
    """(features (N, F) float32, dense ranker features d_pin_<col> (N,), sparse s_pin_<col> (ids (N,), cardinality)).

    ``item_rows[i]`` is the row of pin i in ``items`` (-1: the item has no row, so it gets the defaults:
    numeric 0 = the column mean, no hashed tokens, its random id block).
    """
    f = cfg.features
    n = len(pin_ids)
    blocks: list[np.ndarray] = []
    dense: dict[str, np.ndarray] = {}
    sparse: dict[str, tuple[np.ndarray, int]] = {}
    spec = cfg.items
    if items is not None and spec is not None:
        has = item_rows >= 0
        for col in spec.numeric:
            vals = numbers_of(items[col], f"items.numeric[{col}]", source)
            mean, std = np.nanmean(vals), np.nanstd(vals)
            z = np.where(np.isnan(vals), 0.0, (vals - mean) / (std if std > 0 else 1.0))
            col_z = np.zeros(n)
            col_z[has] = z[item_rows[has]]
            blocks.append(col_z[:, None].astype(np.float32))
            dense[f"d_pin_{col}"] = col_z.astype(np.float32)
        if f.hash_dim and (spec.categorical or spec.multi):
            hashed = np.zeros((n, f.hash_dim), np.float32)
            pins_with = np.flatnonzero(has)
            for col in spec.categorical + spec.multi:
                cells = items[col].to_numpy(dtype=object)[item_rows[pins_with]]
                if col in spec.multi:
                    lists = [[t.strip() for t in str(c).split(spec.multi_sep) if t.strip()] if pd.notna(c) else []
                             for c in cells]
                else:
                    lists = [[str(c)] if pd.notna(c) else [] for c in cells]
                counts = np.array([len(x) for x in lists], np.int64)
                if counts.sum() == 0:
                    continue
                tokens = np.array([f"{col}={t}" for x in lists for t in x], dtype=object)
                rows = np.repeat(pins_with, counts)
                np.add.at(hashed, (rows, _crc_buckets(tokens, f.hash_dim)), 1.0)
            hashed /= np.maximum(np.linalg.norm(hashed, axis=1, keepdims=True), 1e-6)
            blocks.append(hashed)
        for col in spec.categorical:
            vals = items[col].astype(str).where(items[col].notna(), None)
            top = vals.value_counts().index[:f.max_categories]
            code = pd.Index(top).get_indexer(vals) + 1  # 0 = unknown / rare / missing
            ids = np.zeros(n, np.int64)
            ids[has] = code[item_rows[has]]
            sparse[f"s_pin_{col}"] = (ids, len(top) + 1)
    blocks.append(id_block(pin_ids, f.id_dim))
    feats = np.concatenate(blocks, axis=1).astype(np.float32) if blocks else np.zeros((n, 1), np.float32)
    return feats, dense, sparse


def _groups_to_boards(key: np.ndarray, pin: np.ndarray, kind: str, cfg: ImportConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(boards, pin_boards) from (collection key, pin) pairs; collections below min_size are dropped."""
    df = pd.DataFrame({"key": key.astype(str), "pin_id": pin.astype(np.int64)}).drop_duplicates()
    size = df.groupby("key")["pin_id"].transform("size")
    df = df[size >= cfg.collections.min_size].sort_values(["key", "pin_id"], kind="stable")
    keys = pd.unique(df["key"])
    board_of = pd.Series(np.arange(1, len(keys) + 1, dtype=np.int64), index=keys)
    boards = pd.DataFrame({"board_id": board_of.to_numpy(), "name": [f"{kind}:{k}" for k in keys], "kind": kind})
    edges = pd.DataFrame({"board_id": board_of.loc[df["key"]].to_numpy(), "pin_id": df["pin_id"].to_numpy()})
    return boards, edges


def build_collections(cfg: ImportConfig, ev: pd.DataFrame, train: np.ndarray, positive: np.ndarray,
                      items: pd.DataFrame | None, item_space: IdSpace,
                      raw_collection: np.ndarray | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    col = cfg.collections
    src = col.source
    if src == "none":
        raise ConfigError("import config: collections.source 'none' leaves PinSage without a graph; use table, "
                          "column, item_column or user_positives")
    if src == "table":
        df, name = read_source(cfg, col, "collections")
        require_columns(df, {"collections.collection": col.collection, "collections.item": col.item}, name)
        no_nulls(df[col.item], "collections.item", name)
        return _groups_to_boards(df[col.collection].to_numpy(), item_space.map(df[col.item]), "collection", cfg)
    if src == "column":  # training-period events only: evaluation baskets must not leak into the graph
        return _groups_to_boards(raw_collection[train], ev["pin_id"].to_numpy()[train], col.column, cfg)
    if src == "item_column":
        vals = items[col.column]
        sep = cfg.items.multi_sep
        lists = [[t.strip() for t in str(v).split(sep) if t.strip()] if pd.notna(v) else [] for v in vals]
        counts = np.array([len(x) for x in lists], np.int64)
        ids = np.repeat(item_space.map(items[cfg.items.id]), counts)
        return _groups_to_boards(np.array([t for x in lists for t in x], dtype=object), ids, col.column, cfg)
    # user_positives: each user's training-period positives, in time order, cut into boards of max_size
    sel = train & positive
    u = ev["user_id"].to_numpy()[sel]
    p = ev["pin_id"].to_numpy()[sel]
    first = pd.DataFrame({"u": u, "p": p}).drop_duplicates()
    rank = first.groupby("u").cumcount().to_numpy() // col.max_size
    key = first["u"].astype(str).to_numpy().astype(object) + ":" + rank.astype(str).astype(object)
    return _groups_to_boards(key, first["p"].to_numpy(), "user", cfg)
