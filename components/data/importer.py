"""``homefeed data import``: a data directory from the user's own tables and an import config.

Steps (each rule is in ``docs/data.md``):

1. read the interactions (CSV/TSV/Parquet), check every configured column exists, turn ids into int64
   (integer ids are kept; other ids get 1..N in first-seen order and an ``id_maps/`` table), timestamps
   into unix seconds, events into the declared action types (event values or signal ranges; unmatched
   rows are dropped and counted), surfaces into the declared surfaces;
2. split: a global date, a global fraction of events (cut on a UTC day boundary when possible), or each
   user's last N events (``users.parquet: split_timestamp``);
3. items: the union of every table's item ids; content features from the item table (standardised
   numeric columns, hashed categorical and multi-valued columns) plus a per-item random block, which is
   all an item without features gets;
4. collections (PinSage's boards): a table, a column of the interactions or items, or each user's
   training-period positives;
5. impressions: the logged ones, or one request per (user, day, surface) with the engaged items and
   negatives sampled by :mod:`components.data.negatives`; labels from the action -> task mapping;
6. write into a temporary sibling folder, validate it, then swap it in: a failed import leaves the
   previous output untouched.
"""

from __future__ import annotations

import shutil
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml

from components.config import ConfigError
from components.data import io
from components.data.import_config import ImportConfig, Source, to_dict
from components.data.negatives import sample_negatives
from components.data.prepare import to_arrow
from components.data.schemas import MAX_DURATION_S, MAX_TIMESTAMP, MIN_TIMESTAMP, TABLES, TASKS
from components.data.validate import ValidationReport, validate_dir
from components.data.vocab import Vocab

# auto partitioning: month folders once day folders would exceed this many with fewer events per day
MAX_DAY_PARTITIONS = 1000
SPARSE_EVENTS_PER_DAY = 1000


@dataclass
class ImportReport:
    """What the import did: rows per table, rows dropped and why, and notes for the user."""

    out: str
    rows: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    validation: ValidationReport | None = None


# ----------------------------------------------------------------------------------------------
# Reading and converting columns
# ----------------------------------------------------------------------------------------------


def read_source(cfg: ImportConfig, src: Source, key: str) -> tuple[pd.DataFrame, str]:
    """(the table, its file name for messages); missing file or unreadable content name ``key``."""
    path = cfg.resolve(src.path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found (import config key '{key}.path')")
    fmt = src.format
    if fmt == "auto":
        suffix = path.suffix.lower()
        fmt = "parquet" if suffix in (".parquet", ".pq") else "tsv" if suffix in (".tsv", ".tab", ".inter") else "csv"
    try:
        if fmt == "parquet":
            df = pd.read_parquet(path)
        else:
            sep = src.sep if src.sep is not None else ("\t" if fmt == "tsv" else ",")
            df = pd.read_csv(path, sep=sep, na_values=src.na_values or None)
    except Exception as e:  # noqa: BLE001 - any reader failure is the user's file: name it
        raise ConfigError(f"{path}: cannot be read as {fmt} (import config key '{key}.path'): {e}") from e
    if df.empty:
        raise ConfigError(f"{path}: no rows (import config key '{key}.path')")
    return df, path.name


def require_columns(df: pd.DataFrame, wanted: dict[str, str | None], source: str) -> None:
    """Every configured column (key -> column name) exists in ``df``."""
    for key, col in wanted.items():
        if col is not None and col not in df.columns:
            raise ConfigError(f"import config: key '{key}' names column '{col}', which {source} does not have "
                              f"(columns: {', '.join(map(str, df.columns))})")


def _no_nulls(values: pd.Series, key: str, source: str) -> None:
    bad = values.isna().to_numpy()
    if bad.any():
        raise ConfigError(f"{source}: column '{values.name}' (key '{key}'): {int(bad.sum())} of {len(bad)} rows are "
                          f"empty; first at row {int(np.argmax(bad))}")


class IdSpace:
    """One id space (users or items) over several tables: integer ids are kept, others numbered 1..N."""

    def __init__(self, columns: list[pd.Series]):
        self.numeric = all(_integer_like(c) for c in columns)
        if not self.numeric:
            raw = pd.unique(pd.concat([c.astype(str) for c in columns], ignore_index=True))
            self.codes = pd.Index(raw)
            self.table = pd.DataFrame({"id": np.arange(1, len(raw) + 1, dtype=np.int64), "original": raw})

    def map(self, values: pd.Series) -> np.ndarray:
        if self.numeric:
            return pd.to_numeric(values).to_numpy().astype(np.int64)
        return (self.codes.get_indexer(values.astype(str)) + 1).astype(np.int64)


def _integer_like(values: pd.Series) -> bool:
    if pd.api.types.is_integer_dtype(values):
        return True
    if pd.api.types.is_float_dtype(values):
        v = values.to_numpy()
        return bool(np.isfinite(v).all() and (v == np.round(v)).all() and (np.abs(v) < 2**53).all())
    if values.dtype == object:
        s = values.astype(str)
        return bool(s.str.fullmatch(r"-?[0-9]{1,18}").all() and not s.str.match(r"-?0[0-9]").any())
    return False


def to_unix_seconds(values: pd.Series, unit: str, fmt: str | None, key: str, source: str) -> np.ndarray:
    """(N,) int64 unix seconds; unparseable or out-of-range values name the column and the first row."""
    _no_nulls(values, key, source)
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if unit == "auto":
        unit = "s" if numeric else "datetime"
    col = f"{source}: column '{values.name}' (key '{key}', timestamp_unit {unit})"
    if unit == "datetime":
        if pd.api.types.is_datetime64_any_dtype(values):
            parsed = pd.to_datetime(values, utc=True)
        else:
            parsed = pd.to_datetime(values.astype(str), format=fmt or "mixed", utc=True, errors="coerce")
        bad = parsed.isna().to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise ConfigError(f"{col}: {int(bad.sum())} of {len(bad)} values are not dates; first at row {i}: "
                              f"{values.iloc[i]!r} (set timestamp_format, or timestamp_unit s/ms/us/ns for numbers)")
        ts = ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy().astype(np.int64)
    else:
        nums = pd.to_numeric(values, errors="coerce")
        bad = nums.isna().to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise ConfigError(f"{col}: {int(bad.sum())} of {len(bad)} values are not numbers; first at row {i}: "
                              f"{values.iloc[i]!r} (use timestamp_unit datetime for dates)")
        scale = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
        ts = np.floor(nums.to_numpy(np.float64) / scale).astype(np.int64)
    out = (ts < MIN_TIMESTAMP) | (ts >= MAX_TIMESTAMP)
    if out.any():
        i = int(np.argmax(out))
        raise ConfigError(f"{col}: {int(out.sum())} of {len(ts)} values fall outside 1990-01-01 .. 2100-01-01; "
                          f"first at row {i}: {values.iloc[i]!r} (a wrong timestamp_unit?)")
    return ts


def _numbers(values: pd.Series, key: str, source: str) -> np.ndarray:
    nums = pd.to_numeric(values, errors="coerce")
    bad = nums.isna().to_numpy() & values.notna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise ConfigError(f"{source}: column '{values.name}' (key '{key}'): {int(bad.sum())} of {len(bad)} values "
                          f"are not numbers; first at row {i}: {values.iloc[i]!r}")
    return nums.to_numpy(np.float64)


def map_actions(df: pd.DataFrame, cfg: ImportConfig, source: str) -> np.ndarray:
    """(N,) object array of action types (None = no rule matched)."""
    it = cfg.interactions
    action = np.full(len(df), None, dtype=object)
    if it.event is not None:
        raw = df[it.event].astype(str).to_numpy()
        for name, values in cfg.actions.items():
            hit = np.isin(raw, [str(v) for v in values]) & (action == None)  # noqa: E711 - elementwise
            action[hit] = name
        what = f"values of column '{it.event}'"
        seen = pd.Series(raw).value_counts().index[:8].tolist()
    else:
        sig = _numbers(df[it.signal], "interactions.signal", source)
        for name, rng in cfg.actions.items():
            hit = ((sig >= rng.get("min", -np.inf)) & (sig < rng.get("max", np.inf)) & (action == None))  # noqa: E711
            action[hit] = name
        what = f"values of column '{it.signal}'"
        seen = [f"min {np.nanmin(sig):g}", f"max {np.nanmax(sig):g}"]
    if (action == None).all():  # noqa: E711
        raise ConfigError(f"import config: key 'actions' matches none of the {len(df)} rows of {source} "
                          f"({what} seen: {', '.join(map(str, seen))})")
    return action


def map_surfaces(df: pd.DataFrame, cfg: ImportConfig) -> np.ndarray:
    """(N,) object array of surfaces (None = a raw value no surface lists)."""
    if isinstance(cfg.surfaces, list):
        return np.full(len(df), cfg.surfaces[0], dtype=object)
    raw = df[cfg.interactions.surface].astype(str).to_numpy()
    out = np.full(len(df), None, dtype=object)
    for name, values in cfg.surfaces.items():
        out[np.isin(raw, [str(v) for v in values]) & (out == None)] = name  # noqa: E711
    return out


# ----------------------------------------------------------------------------------------------
# Item features
# ----------------------------------------------------------------------------------------------


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
            vals = _numbers(items[col], f"items.numeric[{col}]", source)
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


# ----------------------------------------------------------------------------------------------
# Collections
# ----------------------------------------------------------------------------------------------


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
        _no_nulls(df[col.item], "collections.item", name)
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


# ----------------------------------------------------------------------------------------------
# The import
# ----------------------------------------------------------------------------------------------


def choose_granularity(cfg: ImportConfig, ts: np.ndarray, notes: list[str]) -> str:
    days = int(len(np.unique(ts // 86_400)))
    if cfg.partition != "auto":
        return cfg.partition
    if days > MAX_DAY_PARTITIONS and len(ts) / days < SPARSE_EVENTS_PER_DAY:
        notes.append(f"partition: month ({days} active days averaging {len(ts) / days:.0f} events would make "
                     f"{days} day folders; set partition: day to override)")
        return "month"
    return "day"


def _split(cfg: ImportConfig, ev: pd.DataFrame, notes: list[str]) -> tuple[int, np.ndarray | None, dict[str, Any]]:
    """(global split timestamp, per-user split timestamps aligned with sorted unique users or None, meta rule)."""
    ts = ev["timestamp"].to_numpy()
    s = cfg.split
    if s.date is not None:
        try:
            split = io.day_bounds(str(s.date))[0]
        except ValueError as e:
            raise ConfigError(f"import config: key 'split.date': {e}") from e
        rule: dict[str, Any] = {"rule": "date", "date": str(s.date)}
    elif s.fraction is not None:
        t = int(np.quantile(ts, s.fraction, method="lower"))
        split = t - t % 86_400  # a day boundary keeps day partitions wholly train or evaluation
        if not ((ts < split).any() and (ts >= split).any()):
            split = t if (ts < t).any() else t + 1
        rule = {"rule": "fraction", "fraction": s.fraction}
    else:
        n = int(s.leave_last)
        u = ev["user_id"].to_numpy()
        starts = np.r_[0, np.flatnonzero(u[1:] != u[:-1]) + 1]
        sizes = np.diff(np.r_[starts, len(u)])
        cut = np.where(sizes > n, starts + sizes - n, starts + sizes)  # users with <= n events: all train
        user_split = np.where(sizes > n, ts[np.minimum(cut, len(ts) - 1)], MAX_TIMESTAMP - 1).astype(np.int64)
        held = user_split[sizes > n]
        if not len(held):
            raise ConfigError(f"import config: key 'split.leave_last' is {n}, but no user has more than {n} events")
        split = int(np.median(held))
        split -= split % 86_400
        notes.append(f"split: each user's last {n} event(s) are evaluation (users.parquet: split_timestamp); "
                     f"meta.json split_timestamp {split} is the median day of those cuts, for readers of one "
                     "global split")
        return split, user_split, {"rule": "leave_last", "n": n}
    n_train, n_eval = int((ts < split).sum()), int((ts >= split).sum())
    if not n_train or not n_eval:
        raise ConfigError(f"import config: key 'split' ({rule}) leaves {n_train} training and {n_eval} evaluation "
                          f"events; the data spans {io.day_of(ts.min())} .. {io.day_of(ts.max())}")
    return split, None, rule


def _request_features(imp: pd.DataFrame, ev: pd.DataFrame, pin_ids: np.ndarray, pop: np.ndarray,
                      dense_pin: dict[str, np.ndarray], sparse_pin: dict[str, tuple[np.ndarray, int]]) -> dict[str, int]:
    """Add the ranker's d_*/s_* columns to ``imp`` in place; returns the sparse cardinalities."""
    prow = np.searchsorted(pin_ids, imp["pin_id"].to_numpy())
    imp["d_pin_popularity"] = np.log1p(pop[prow]).astype(np.float32)
    # the user's activity so far: events strictly before the request
    ev_key = ev["user_id"].to_numpy().astype(np.float64) * 1e10 + ev["timestamp"].to_numpy()
    req_key = imp["user_id"].to_numpy().astype(np.float64) * 1e10 + imp["timestamp"].to_numpy()
    user_start = np.searchsorted(ev_key, imp["user_id"].to_numpy().astype(np.float64) * 1e10)
    imp["d_user_activity"] = np.log1p(np.searchsorted(ev_key, req_key) - user_start).astype(np.float32)
    for name, values in dense_pin.items():
        imp[name] = values[prow]
    cards = {"s_hour": 24}
    imp["s_hour"] = ((imp["timestamp"].to_numpy() // 3600) % 24).astype(np.int64)
    for name, (ids, card) in sparse_pin.items():
        imp[name] = ids[prow]
        cards[name] = card
    return cards


def _sampled_impressions(cfg: ImportConfig, ev: pd.DataFrame, label_of: dict[str, np.ndarray], pin_ids: np.ndarray,
                         pop: np.ndarray) -> pd.DataFrame:
    """One request per (user, UTC day, surface): its engaged items + sampled negatives (all labels 0)."""
    day = ev["timestamp"].to_numpy() // 86_400
    keys = pd.DataFrame({"u": ev["user_id"].to_numpy(), "d": day, "s": ev["surface"].to_numpy()})
    req = keys.groupby(["u", "d", "s"], sort=True).ngroup().to_numpy()
    pos = pd.DataFrame({"req": req, "pin_id": ev["pin_id"].to_numpy(), "timestamp": ev["timestamp"].to_numpy(),
                        **{f"label_{t}": label_of[t].astype(np.int8) for t in TASKS}})
    # an item engaged twice in one request is one impression holding every label it earned
    eng = pos.groupby(["req", "pin_id"], sort=True).agg(
        {"timestamp": "min", **{f"label_{t}": "max" for t in TASKS}}).reset_index()
    first = pos.groupby("req", sort=True).agg(timestamp=("timestamp", "min")).reset_index()
    req_user = keys.groupby(req, sort=True)["u"].first().to_numpy()
    req_surface = keys.groupby(req, sort=True)["s"].first().to_numpy()
    n_eng = eng.groupby("req").size().reindex(np.arange(len(req_user)), fill_value=0).to_numpy()
    wanted = np.round(cfg.negatives.per_positive * n_eng).astype(np.int64)
    nreq, nitem = sample_negatives(req_user, wanted, pin_ids, pop, ev["user_id"].to_numpy(), ev["pin_id"].to_numpy(),
                                   cfg.negatives.seed)
    neg = pd.DataFrame({"req": nreq, "pin_id": nitem, **{f"label_{t}": np.zeros(len(nreq), np.int8) for t in TASKS}})
    imp = pd.concat([eng.drop(columns="timestamp"), neg], ignore_index=True).sort_values(["req", "pin_id"], kind="stable")
    r = imp["req"].to_numpy()
    out = pd.DataFrame({"request_id": (r + 1).astype(np.int64), "user_id": req_user[r].astype(np.int64),
                        "pin_id": imp["pin_id"].to_numpy(np.int64), "surface": req_surface[r],
                        "timestamp": first["timestamp"].to_numpy()[r].astype(np.int64)})
    for t in TASKS:
        out[f"label_{t}"] = imp[f"label_{t}"].to_numpy(np.int8)
    return out


def _logged_impressions(cfg: ImportConfig, users: IdSpace, items: IdSpace, df: pd.DataFrame, name: str) -> pd.DataFrame:
    spec = cfg.impressions
    ts = to_unix_seconds(df[spec.timestamp], "auto", None, "impressions.timestamp", name)
    if spec.request is not None:
        request = pd.factorize(df[spec.request])[0].astype(np.int64) + 1
    else:
        request = pd.factorize(pd.Series(users.map(df[spec.user])).astype(str) + ":" + pd.Series(ts // 86_400).astype(str))[0] + 1
    if spec.surface is None:
        surface = np.full(len(df), cfg.surface_names[0], dtype=object)
    else:
        surface = map_surfaces(df.rename(columns={spec.surface: cfg.interactions.surface or spec.surface}), cfg)
    out = pd.DataFrame({"request_id": request.astype(np.int64), "user_id": users.map(df[spec.user]),
                        "pin_id": items.map(df[spec.item]), "surface": surface, "timestamp": ts})
    for t in TASKS:
        if t in spec.labels:
            vals = _numbers(df[spec.labels[t]], f"impressions.labels.{t}", name)
            bad = ~np.isin(vals, [0, 1])
            if bad.any():
                raise ConfigError(f"{name}: column '{spec.labels[t]}' (key 'impressions.labels.{t}'): {int(bad.sum())} "
                                  f"values are not 0 or 1; first at row {int(np.argmax(bad))}")
            out[f"label_{t}"] = vals.astype(np.int8)
        else:
            out[f"label_{t}"] = np.zeros(len(df), np.int8)
    out = out[out["surface"].notna()]
    return out.drop_duplicates(["request_id", "pin_id"]).reset_index(drop=True)


def build_tables(cfg: ImportConfig, report: ImportReport) -> dict[str, Any]:
    """Every table of the data directory and ``meta.json``, in memory."""
    it = cfg.interactions
    raw, name = read_source(cfg, it, "interactions")
    require_columns(raw, {f"interactions.{k}": getattr(it, k) for k in
                          ("user", "item", "timestamp", "event", "signal", "duration", "surface", "collection")}, name)
    if cfg.collections.source == "column":
        require_columns(raw, {"collections.column": cfg.collections.column}, name)
    for key in ("user", "item"):
        _no_nulls(raw[getattr(it, key)], f"interactions.{key}", name)
    items_df, items_name = (read_source(cfg, cfg.items, "items") if cfg.items is not None else (None, ""))
    if items_df is not None:
        s = cfg.items
        require_columns(items_df, {"items.id": s.id, "items.title": s.title,
                                   **{f"items.numeric[{c}]": c for c in s.numeric},
                                   **{f"items.categorical[{c}]": c for c in s.categorical},
                                   **{f"items.multi[{c}]": c for c in s.multi},
                                   **({"collections.column": cfg.collections.column}
                                      if cfg.collections.source == "item_column" else {})}, items_name)
        _no_nulls(items_df[s.id], "items.id", items_name)
        items_df = items_df.drop_duplicates(s.id, keep="first").reset_index(drop=True)
    imp_df, imp_name = (read_source(cfg, cfg.impressions, "impressions") if cfg.impressions is not None else (None, ""))
    if imp_df is not None:
        sp = cfg.impressions
        require_columns(imp_df, {"impressions.request": sp.request, "impressions.user": sp.user,
                                 "impressions.item": sp.item, "impressions.timestamp": sp.timestamp,
                                 "impressions.surface": sp.surface,
                                 **{f"impressions.labels.{t}": c for t, c in sp.labels.items()}}, imp_name)
    coll_items: list[pd.Series] = []
    if cfg.collections.source == "table":
        cdf, cname = read_source(cfg, cfg.collections, "collections")
        require_columns(cdf, {"collections.item": cfg.collections.item,
                              "collections.collection": cfg.collections.collection}, cname)
        coll_items.append(cdf[cfg.collections.item])

    # ---- events ----------------------------------------------------------------------------------
    ts = to_unix_seconds(raw[it.timestamp], it.timestamp_unit, it.timestamp_format, "interactions.timestamp", name)
    action = map_actions(raw, cfg, name)
    surface = map_surfaces(raw, cfg)
    if it.duration is not None:
        duration = _numbers(raw[it.duration], "interactions.duration", name)
        bad = np.isnan(duration) | (duration < 0) | (duration > MAX_DURATION_S)
        if bad.any():
            raise ConfigError(f"{name}: column '{it.duration}' (key 'interactions.duration'): {int(bad.sum())} values "
                              f"are empty, negative or over {MAX_DURATION_S:.0f} (expected seconds in [0, "
                              f"{MAX_DURATION_S:.0f}]); first at row {int(np.argmax(bad))}")
    else:
        duration = np.zeros(len(raw))
    users = IdSpace([raw[it.user]] + ([imp_df[cfg.impressions.user]] if imp_df is not None else []))
    items = IdSpace([raw[it.item]] + ([items_df[cfg.items.id]] if items_df is not None else [])
                    + ([imp_df[cfg.impressions.item]] if imp_df is not None else []) + coll_items)
    keep = (action != None) & (surface != None)  # noqa: E711
    report.dropped["interactions: no action matched"] = int((action == None).sum())  # noqa: E711
    report.dropped["interactions: surface not listed"] = int(((surface == None) & (action != None)).sum())  # noqa: E711
    ev = pd.DataFrame({"user_id": users.map(raw[it.user]), "pin_id": items.map(raw[it.item]), "action_type": action,
                       "surface": surface, "timestamp": ts, "duration_s": duration.astype(np.float32)})
    raw_collection = raw[cfg.collections.column].astype(str).to_numpy() if cfg.collections.source == "column" else None
    ev["_row"] = np.arange(len(ev))
    ev = ev[keep]
    n = len(ev)
    ev = ev.drop_duplicates(["user_id", "pin_id", "action_type", "surface", "timestamp"])
    report.dropped["interactions: duplicate rows"] = n - len(ev)
    ev = ev.sort_values(["user_id", "timestamp", "pin_id"], kind="stable").reset_index(drop=True)
    if raw_collection is not None:
        raw_collection = raw_collection[ev["_row"].to_numpy()]
    ev = ev.drop(columns="_row")
    vocab = Vocab(tuple(cfg.actions), tuple(cfg.surface_names), tuple(cfg.positive),
                  {k: float(v) for k, v in cfg.positive_min_duration_s.items()})
    positive = vocab.is_positive(ev["action_type"].to_numpy(), ev["duration_s"].to_numpy())
    if not positive.any():
        mix = ev["action_type"].value_counts().to_dict()
        raise ConfigError(f"import config: key 'positive' ({cfg.positive}"
                          + (f", min durations {cfg.positive_min_duration_s}" if cfg.positive_min_duration_s else "")
                          + f") leaves no positive event among the {len(ev)} mapped rows (action mix: {mix})")

    # ---- split -------------------------------------------------------------------------------------
    split, user_split, split_rule = _split(cfg, ev, report.notes)
    uid = ev["user_id"].to_numpy()
    user_ids = np.unique(np.r_[uid, users.map(imp_df[cfg.impressions.user]) if imp_df is not None else []]).astype(np.int64)
    if user_split is not None:
        ev_users = np.unique(uid)
        per_user = np.full(len(user_ids), MAX_TIMESTAMP - 1, np.int64)
        per_user[np.searchsorted(user_ids, ev_users)] = user_split
        train = ev["timestamp"].to_numpy() < per_user[np.searchsorted(user_ids, uid)]
    else:
        per_user = None
        train = ev["timestamp"].to_numpy() < split

    # ---- items and features ------------------------------------------------------------------------
    all_items = [ev["pin_id"].to_numpy()]
    if items_df is not None:
        all_items.append(items.map(items_df[cfg.items.id]))
    if imp_df is not None:
        all_items.append(items.map(imp_df[cfg.impressions.item]))
    all_items += [items.map(c) for c in coll_items]
    pin_ids = np.unique(np.concatenate(all_items)).astype(np.int64)
    item_rows = None
    if items_df is not None:
        table_ids = items.map(items_df[cfg.items.id])
        order = np.argsort(table_ids)
        at = np.searchsorted(table_ids, pin_ids, sorter=order).clip(0, len(table_ids) - 1)
        item_rows = np.where(table_ids[order[at]] == pin_ids, order[at], -1)
        missing = int((item_rows < 0).sum())
        if missing:
            report.notes.append(f"items: {missing} of {len(pin_ids)} items have no row in {items_name}; they get "
                                "the default features (numeric 0 = the mean, no tokens, their random id block)")
    elif cfg.features.id_dim:
        report.notes.append("items: no item table; every item's content features are its random id block "
                            "(similarity comes from the graph and the engagement only)")
    feats, dense_pin, sparse_pin = item_features(pin_ids, items_df, item_rows, cfg, items_name)
    pins = pd.DataFrame({"pin_id": pin_ids, "features": list(feats)})
    if items_df is not None and cfg.items.title:
        titles = items_df[cfg.items.title].astype(str).to_numpy()
        pins["title"] = np.where(item_rows >= 0, titles[np.maximum(item_rows, 0)], "")
    for col, (ids, _) in sparse_pin.items():
        pins[col.replace("s_pin_", "s_")] = ids

    # ---- collections ---------------------------------------------------------------------------------
    boards, pin_boards = build_collections(cfg, ev, train, positive, items_df, items, raw_collection)
    if boards.empty:
        raise ConfigError(f"import config: collections (source {cfg.collections.source}) gave no collection with at "
                          f"least {cfg.collections.min_size} items; PinSage needs a graph (lower collections.min_size "
                          "or choose another source)")

    # ---- impressions ---------------------------------------------------------------------------------
    pop = np.bincount(np.searchsorted(pin_ids, ev["pin_id"].to_numpy()[train]), minlength=len(pin_ids))
    labels = cfg.label_actions()
    if imp_df is None:
        label_of = {t: np.isin(ev["action_type"].to_numpy(), labels[t]) for t in TASKS}
        imp = _sampled_impressions(cfg, ev, label_of, pin_ids, pop)
    else:
        imp = _logged_impressions(cfg, users, items, imp_df, imp_name)
    cards = _request_features(imp, ev, pin_ids, pop, dense_pin, sparse_pin)
    for t in TASKS:
        if not imp[f"label_{t}"].any():
            report.notes.append(f"labels: task '{t}' has no positive label (actions {labels[t]}); the ranker's "
                                f"AUC({t}) is undefined and its loss term teaches 'never'")

    # ---- users and meta ------------------------------------------------------------------------------
    user_df = pd.DataFrame({"user_id": user_ids})
    if per_user is not None:
        user_df["split_timestamp"] = per_user
    if len(cfg.surface_names) == 1:
        report.notes.append(f"surfaces: one surface ('{cfg.surface_names[0]}'): PEPNet's EPNet gates on the surface "
                            "and has nothing to tell apart; expect no gain from the _pepnet ranker variants")
    ts_all = ev["timestamp"].to_numpy()
    granularity = choose_granularity(cfg, ts_all, report.notes)
    meta = {
        "dataset": cfg.name,
        "source": "import",
        "split_timestamp": int(split),
        "split": split_rule,
        "eval_days": max(1, int(np.ceil((int(ts_all.max()) + 1 - split) / 86_400))),
        "feature_dim": int(feats.shape[1]),
        "dense_features": ["d_pin_popularity", "d_user_activity", *dense_pin],
        "sparse_features": cards,
        "user_features": ["d_user_activity"],
        "pin_features": ["d_pin_popularity", *dense_pin, *sparse_pin],
        "domain_feature": "surface",
        **vocab.to_meta(),
        "labels": labels,
        "partition": granularity,
        "id_maps": {"users": not users.numeric, "items": not items.numeric},
    }
    tables: dict[str, Any] = {"pins": pins, "boards": boards, "pin_boards": pin_boards, "users": user_df,
                              "events": ev, "impressions": imp, "meta": meta}
    if not users.numeric:
        tables["id_map_users"] = users.table.rename(columns={"id": "user_id"})
    if not items.numeric:
        tables["id_map_items"] = items.table.rename(columns={"id": "pin_id"})
    return tables


def write_tables(out: Path, tables: dict[str, Any], granularity: str) -> None:
    """Write every table (partitioned ones by ``granularity``), the id maps, then ``meta.json``."""
    for name, spec in TABLES.items():
        table = to_arrow(spec, tables[name])
        if spec.partitioned:
            io.write_partitioned(out, name, table, granularity=granularity)
        else:
            io.write_table(out, name, table)
    for kind in ("users", "items"):
        if f"id_map_{kind}" in tables:
            io.atomic_write_parquet(pa.Table.from_pandas(tables[f"id_map_{kind}"], preserve_index=False),
                                    out / "id_maps" / f"{kind}.parquet")
    io.write_meta(out, tables["meta"])


def import_data(cfg: ImportConfig, out: str | Path) -> ImportReport:
    """Build, validate and publish the data directory ``out`` from ``cfg`` (see the module docstring)."""
    out = Path(out)
    report = ImportReport(str(out))
    tables = build_tables(cfg, report)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=out.parent))
    try:
        write_tables(tmp, tables, tables["meta"]["partition"])
        io.atomic_write_bytes(tmp / "import.yaml", _yaml(to_dict(cfg)))
        report.validation = validate_dir(tmp)
        report.validation.data_dir = str(out)
        io.replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.rows = dict(report.validation.rows)
    report.dropped = {k: v for k, v in report.dropped.items() if v}
    return report


def _yaml(d: dict[str, Any]) -> bytes:
    return yaml.safe_dump(d, sort_keys=False).encode()


def format_report(report: ImportReport) -> str:
    lines = []
    if report.dropped:
        lines.append("dropped: " + ", ".join(f"{k}: {v:,} rows" for k, v in report.dropped.items()))
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)
