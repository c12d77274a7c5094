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

Step 1 is in :mod:`components.data.import_columns`, steps 3-4 in :mod:`components.data.import_items`, step 5
in :mod:`components.data.import_impressions`; this module runs them in order (:func:`build_tables`) and
writes, validates and publishes the result (:func:`import_data`).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml

from components.config import ConfigError
from components.data import durable, io
from components.data.import_columns import (
    IdSpace,
    map_actions,
    map_surfaces,
    no_nulls,
    numbers_of,
    read_source,
    require_columns,
    to_unix_seconds,
)
from components.data.import_config import ImportConfig, to_dict
from components.data.import_impressions import logged_impressions, request_features, sampled_impressions
from components.data.import_items import build_collections, item_features
from components.data.prepare import to_arrow
from components.data.schemas import MAX_DURATION_S, MAX_TIMESTAMP, TABLES, TASKS
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


# ----------------------------------------------------------------------------------------------
# Item features
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Collections
# ----------------------------------------------------------------------------------------------


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


def build_tables(cfg: ImportConfig, report: ImportReport) -> dict[str, Any]:
    """Every table of the data directory and ``meta.json``, in memory."""
    it = cfg.interactions
    raw, name = read_source(cfg, it, "interactions")
    require_columns(raw, {f"interactions.{k}": getattr(it, k) for k in
                          ("user", "item", "timestamp", "event", "signal", "duration", "surface", "collection")}, name)
    if cfg.collections.source == "column":
        require_columns(raw, {"collections.column": cfg.collections.column}, name)
    for key in ("user", "item"):
        no_nulls(raw[getattr(it, key)], f"interactions.{key}", name)
    items_df, items_name = (read_source(cfg, cfg.items, "items") if cfg.items is not None else (None, ""))
    if items_df is not None:
        s = cfg.items
        require_columns(items_df, {"items.id": s.id, "items.title": s.title,
                                   **{f"items.numeric[{c}]": c for c in s.numeric},
                                   **{f"items.categorical[{c}]": c for c in s.categorical},
                                   **{f"items.multi[{c}]": c for c in s.multi},
                                   **({"collections.column": cfg.collections.column}
                                      if cfg.collections.source == "item_column" else {})}, items_name)
        no_nulls(items_df[s.id], "items.id", items_name)
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
        duration = numbers_of(raw[it.duration], "interactions.duration", name)
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
        imp = sampled_impressions(cfg, ev, label_of, pin_ids, pop)
    else:
        imp = logged_impressions(cfg, users, items, imp_df, imp_name)
    cards = request_features(imp, ev, pin_ids, pop, dense_pin, sparse_pin)
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
            durable.atomic_write_parquet(pa.Table.from_pandas(tables[f"id_map_{kind}"], preserve_index=False),
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
        durable.atomic_write_bytes(tmp / "import.yaml", _yaml(to_dict(cfg)))
        report.validation = validate_dir(tmp)
        report.validation.data_dir = str(out)
        durable.replace_dir(tmp, out)
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
