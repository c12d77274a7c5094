"""The Parquet sources of a Feast repo instance, written as of a date in batches of rows.

Why batches: the daily Feast stage held 5.5 GB at 1M pins (docs/scale.md). At 100k pins (64-d embeddings) the
whole-table version of this module held 193 MB above the process's start (every impression in one table, each
embedding table as numpy plus a Python list per row) and Feast's ``materialize`` 433 MB more (its file offline
store reads a source whole, then every row becomes protobuf before one online write). Here every input is read
``batch_rows`` rows at a time (Parquet record batches) and every source is written as it is built, one row group
per batch: the process holds a batch of input rows plus a few scalars per entity (the latest feature values of
each user and pin, each pin's impression and label counts, each embedding row's id, digest and timestamp), never
the impressions or the embedding vectors of the whole table; ``feast_store.materialize`` sends the online store
one batch at a time.

``event_timestamp`` says when a row last changed, which is what makes the daily materialization incremental
(``feast_store.materialize`` loads the rows stamped since the last run):

- ``user_features``: the row's latest impression (its values change only with a new impression);
- ``user_embedding``, ``pin_embedding``, ``pin_features``: the start of ``date`` for a row that is new or whose
  values differ from the previous source's row for the same id (a 64-bit digest of the row's values), else the
  previous source's timestamp. Users inactive on ``date`` keep the row (and timestamp) of their last active day,
  so a day's run re-materializes only the users embedded that day. The source file stays a full snapshot
  (one row per entity), so Feast's point-in-time joins still find every entity. A backfill (a ``date`` before
  the previous source's newest timestamp) or a previous source of another schema stamps every row with ``date``.

Every pin of ``pins.parquet`` gets a ``pin_features`` row: a pin with no impressions yet has the engagement the
ranker's training gives it (``point_in_time.pin_engagement``: the global rate of each task and ``log1p(0) = 0``
impressions) and nulls for the impression-borne columns, which serving fills as training saw an unknown.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.data import io
from components.data.durable import FILE_MODE, atomic_write_json, atomic_write_parquet, fsync_dir
from components.data.point_in_time import ENGAGEMENT_PRIOR, PIN_SHOWN, engagement_names
from components.data.tables import TABLE_FILE, VersionedStore
from components.data.validate import load_events
from components.data.vocab import vocab_of_frame
from components.serving.feast_stamps import TS, FeatureStoreError, Stamps, row_digests

BATCH_ROWS = 10_000  # rows per read, written row group and online-store write (Feast holds ~6 KB per 64-d row)
POPULAR_FILE = "popular_pins.parquet"  # beside the sources: the cold-start list (not a feature view)
ENGAGEMENT_PREFIXES = ("d_pin_rate_", PIN_SHOWN)


def table_path(source: str | Path) -> Path:
    """An embedding table's file from a file, a directory holding one, or a VersionedStore root (CURRENT)."""
    source = Path(source)
    if (source / "CURRENT").exists():
        return VersionedStore(source).path()
    return source


@contextlib.contextmanager
def parquet_writer(path: Path, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A ParquetWriter on a temporary file that replaces ``path`` atomically (fsync, rename, folder fsync) when the
    block ends without an error; a failed write leaves ``path`` as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with pq.ParquetWriter(tmp, schema, write_page_checksum=True) as w:
            yield w
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- the sources ----------------------------------------------------------------------------------------------

def embedding_source(path: str | Path, id_column: str, as_of: dt.datetime, out: Path,
                     batch_rows: int = BATCH_ROWS) -> tuple[int, int]:
    """Write an embedding table (``tables.py``'s layout) as a Feast source ``out``: ``<id>``, ``embedding``
    (list<float32>), ``model_version``, ``event_timestamp`` (see the module docstring). (rows, rows changed)."""
    src = table_path(path)
    src = src / TABLE_FILE if src.is_dir() else src
    if not src.exists():
        raise FileNotFoundError(f"{src}: embedding table not found")
    pf = pq.ParquetFile(src)
    missing = [c for c in (id_column, "embedding", "model_version") if c not in pf.schema_arrow.names]
    if missing:
        raise FeatureStoreError(f"{src}: missing column(s) {missing} (expected an embedding table)")
    values = ["embedding", "model_version"]
    stamps = Stamps(out, id_column, values, as_of, batch_rows)
    schema = pa.schema([(id_column, pa.int64()), ("embedding", pa.list_(pa.float32())), ("model_version", pa.string()),
                        ("event_timestamp", TS)])
    rows = changed = 0
    with parquet_writer(out, schema) as w:
        for b in pf.iter_batches(batch_size=batch_rows, columns=[id_column, *values]):
            ids = b.column(id_column).to_numpy().astype(np.int64)
            t = pa.table([pa.array(ids), b.column("embedding").cast(pa.list_(pa.float32())),
                          b.column("model_version").cast(pa.string())], names=[id_column, *values])
            ts, n = stamps.of(ids, row_digests(t, values, str(src)))
            w.write_table(t.append_column("event_timestamp", ts).cast(schema))
            rows, changed = rows + len(ids), changed + n
    return rows, changed


class Latest:
    """One row per id: its values at its latest timestamp (ties: the later row, as a stable sort of all the rows
    would give), merged batch by batch. Holds O(ids) rows: a merge runs when the buffered batches are at least as
    large as the merged state, so the work stays O(rows log rows)."""

    def __init__(self, id_column: str):
        self.id_column, self.state, self.parts, self.buffered = id_column, None, [], 0

    def _last(self, t: pa.Table) -> pa.Table:
        t = t.sort_by([(self.id_column, "ascending"), ("timestamp", "ascending")])
        ids = t.column(self.id_column).to_numpy()
        return t.filter(pa.array(np.r_[ids[1:] != ids[:-1], True] if len(ids) else np.zeros(0, bool)))

    def add(self, t: pa.Table) -> None:
        self.parts.append(self._last(t))
        self.buffered += self.parts[-1].num_rows
        if self.state is None or self.buffered >= self.state.num_rows:
            self._merge()

    def _merge(self) -> None:
        tables = ([self.state] if self.state is not None else []) + self.parts
        if tables:
            self.state = self._last(pa.concat_tables(tables, promote_options="default"))
        self.parts, self.buffered = [], 0

    def table(self) -> pa.Table | None:
        self._merge()
        return self.state


class Engagement:
    """Per pin: impressions and positives per task; overall: the same totals (the global rate)."""

    def __init__(self, pins: np.ndarray, tasks: list[str]):
        self.pins, self.tasks = np.unique(np.asarray(pins, np.int64)), tasks
        self.shown = np.zeros(len(self.pins))
        self.pos = np.zeros((len(self.pins), len(tasks)))
        self.g_shown, self.g_pos = 0.0, np.zeros(len(tasks))

    def add(self, pin_ids: np.ndarray, labels: np.ndarray) -> None:
        """``labels`` (n, K) float64 in ``tasks`` order."""
        at = np.searchsorted(self.pins, pin_ids).clip(0, max(len(self.pins) - 1, 0))
        known = (self.pins[at] == pin_ids) if len(self.pins) else np.zeros(len(pin_ids), bool)
        if not known.all():  # a pin of the impressions that pins.parquet does not list: give it a row too
            pins = np.union1d(self.pins, pin_ids[~known])
            at = np.searchsorted(pins, self.pins)
            shown, pos = np.zeros(len(pins)), np.zeros((len(pins), len(self.tasks)))
            shown[at], pos[at] = self.shown, self.pos
            self.pins, self.shown, self.pos = pins, shown, pos
        idx = np.searchsorted(self.pins, pin_ids)
        self.shown += np.bincount(idx, minlength=len(self.pins))
        for j in range(len(self.tasks)):
            self.pos[:, j] += np.bincount(idx, weights=labels[:, j], minlength=len(self.pins))
        self.g_shown += len(pin_ids)
        self.g_pos += labels.sum(axis=0)

    def columns(self) -> dict[str, np.ndarray]:
        """``point_in_time.pin_engagement``'s values for a request after every impression added: per task
        ``(pos + PRIOR * g) / (shown + PRIOR)`` with g the global rate, and ``log1p(shown)``."""
        g = self.g_pos / max(self.g_shown, 1.0) if self.g_shown > 0 else np.zeros(len(self.tasks))  # (K,)
        rate = (self.pos + ENGAGEMENT_PRIOR * g) / (self.shown[:, None] + ENGAGEMENT_PRIOR)  # (P, K)
        out = {f"d_pin_rate_{t}": rate[:, j].astype(np.float32) for j, t in enumerate(self.tasks)}
        out[PIN_SHOWN] = np.log1p(self.shown).astype(np.float32)
        return out


def scan_impressions(data_dir: str | Path, end: int, user_cols: list[str], pin_cols: list[str],
                     batch_rows: int = BATCH_ROWS) -> tuple[Latest, Latest, Engagement, dict[str, str]]:
    """Every impression before ``end`` (day by day, ``batch_rows`` at a time): the latest user and pin feature
    values, the pin engagement counts, and each feature column's type ("float" | "int")."""
    keys = io.partitions(data_dir, "impressions")
    if not keys:
        raise FileNotFoundError(f"{Path(data_dir) / io.TABLES['impressions'].filename}: no day partitions")
    first = pq.ParquetFile(io.partition_files(data_dir, "impressions", keys[0])[0]).schema_arrow
    files = [f for k in keys if io.partition_bounds(k)[0] < end for f in io.partition_files(data_dir, "impressions", k)]
    for key, cols in (("user_features", user_cols), ("pin_features", pin_cols)):
        missing = [c for c in cols if c not in first.names]
        if missing:
            raise FeatureStoreError(f"{data_dir}/impressions: meta.json {key} names columns {missing} "
                                    f"that the impressions do not have")
    types = {c: ("float" if pa.types.is_floating(first.field(c).type) else "int") for c in user_cols + pin_cols}
    tasks = [c.removeprefix("label_") for c in first.names if c.startswith("label_")]
    pins = pq.read_table(Path(data_dir) / io.TABLES["pins"].filename, columns=["pin_id"]).column("pin_id")
    users, pins_latest, eng = Latest("user_id"), Latest("pin_id"), Engagement(pins.to_numpy(), tasks)
    read = list(dict.fromkeys(["user_id", "pin_id", "timestamp", *user_cols, *pin_cols, *[f"label_{t}" for t in tasks]]))
    for f in files:
        for b in pq.ParquetFile(f, page_checksum_verification=True).iter_batches(batch_size=batch_rows, columns=read):
            t = pa.Table.from_batches([b])
            t = t.filter(pc.less(t.column("timestamp"), end))
            if not t.num_rows:
                continue
            users.add(t.select(["user_id", "timestamp", *user_cols]))
            pins_latest.add(t.select(["pin_id", "timestamp", *pin_cols]))
            labels = np.stack([t.column(f"label_{k}").to_numpy().astype(np.float64) for k in tasks], axis=1) \
                if tasks else np.zeros((t.num_rows, 0))
            eng.add(t.column("pin_id").to_numpy().astype(np.int64), labels)
    return users, pins_latest, eng, types


def _event_ts(t: pa.Table) -> pa.Table:
    ts = pc.cast(pc.multiply(t.column("timestamp"), 1_000_000), TS)
    return t.drop_columns(["timestamp"]).append_column("event_timestamp", ts)


def _arrow_type(kind: str) -> pa.DataType:
    return pa.float32() if kind == "float" else pa.int64()


def pin_feature_table(latest: pa.Table | None, eng: Engagement, pin_cols: list[str], types: dict[str, str]) -> pa.Table:
    """Every pin (sorted by id): its latest impression values (null without one) and its engagement."""
    cols: dict[str, pa.Array] = {"pin_id": pa.array(eng.pins, pa.int64())}
    if latest is not None and latest.num_rows:
        take = np.full(len(eng.pins), -1, np.int64)
        take[np.searchsorted(eng.pins, latest.column("pin_id").to_numpy())] = np.arange(latest.num_rows)
        idx = pa.array(take, mask=take < 0)
        cols.update({c: latest.column(c).take(idx) for c in pin_cols})
    else:
        cols.update({c: pa.nulls(len(eng.pins), _arrow_type(types[c])) for c in pin_cols})
    cols.update({c: pa.array(v, pa.float32()) for c, v in eng.columns().items()})
    return pa.table(cols)


def write_table_in_batches(table: pa.Table, out: Path, batch_rows: int, stamps: Stamps | None = None,
                           id_column: str = "", values: list[str] | None = None) -> int:
    """Write ``table`` to ``out`` one row group per ``batch_rows`` rows; with ``stamps``, add ``event_timestamp``
    (unchanged rows keep theirs). Returns the rows changed (all rows without ``stamps``)."""
    schema = table.schema if stamps is None else table.schema.append(pa.field("event_timestamp", TS))
    changed = table.num_rows if stamps is None else 0
    with parquet_writer(out, schema) as w:
        for off in range(0, table.num_rows, batch_rows):
            part = table.slice(off, batch_rows)
            if stamps is not None:
                ts, n = stamps.of(part.column(id_column).to_numpy(), row_digests(part, values, str(out)))
                part, changed = part.append_column("event_timestamp", ts), changed + n
            w.write_table(part)
    return changed


def write_feature_sources(repo_dir: Path, data_dir: str | Path, as_of: dt.datetime,
                          batch_rows: int = BATCH_ROWS) -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    """``user_features`` and ``pin_features`` as of the end of the day starting at ``as_of``: (counts, schema)."""
    meta = io.read_meta(data_dir)
    end = int(as_of.timestamp()) + 86_400
    user_cols, pin_cols = list(meta.get("user_features", [])), list(meta.get("pin_features", []))
    users, pins, eng, types = scan_impressions(data_dir, end, user_cols, pin_cols, batch_rows)
    sources, counts = repo_dir / "sources", {}
    u = users.table()
    if u is None:  # no impression before the end of the day
        u = pa.table({"user_id": pa.array([], pa.int64()), **{c: pa.array([], _arrow_type(types[c])) for c in user_cols},
                      "event_timestamp": pa.array([], TS)})
    else:
        u = _event_ts(u)
    counts["user_features"] = u.num_rows  # changed: the rows whose latest impression is on the day
    counts["user_features_changed"] = int(pc.sum(pc.greater_equal(u.column("event_timestamp"),
                                                                  pa.scalar(as_of, TS))).as_py() or 0)
    write_table_in_batches(u, sources / "user_features.parquet", batch_rows)
    latest = pins.table()
    p = pin_feature_table(None if latest is None else latest.drop_columns(["timestamp"]), eng, pin_cols, types)
    values = [c for c in p.column_names if c != "pin_id"]
    stamps = Stamps(sources / "pin_features.parquet", "pin_id", values, as_of, batch_rows)
    counts["pin_features"] = p.num_rows
    counts["pin_features_changed"] = write_table_in_batches(p, sources / "pin_features.parquet", batch_rows, stamps,
                                                            "pin_id", values)
    schema = {"user_features": {c: types[c] for c in user_cols},
              "pin_features": {**{c: types[c] for c in pin_cols}, **{c: "float" for c in engagement_names(eng.tasks)}}}
    return counts, schema


def popular_pins(data_dir: str | Path, end: int, days: int = 14, top: int = 1000) -> pa.Table:
    """The cold-start list: pins by positive engagements in the ``days`` before ``end`` (all engagements break
    ties; all history before ``end`` if the window has no event). Reads only the window's day partitions."""
    window = [(dt.datetime.fromtimestamp(end, dt.UTC).date() - dt.timedelta(days=i)).isoformat()
              for i in range(days, 0, -1)]
    stored = io.partitions(data_dir, "events")
    present = [d for d in window if io.locate(data_dir, "events", d, stored) is not None]
    ev = load_events(data_dir, present) if present else None
    if ev is not None:
        ev = ev[(ev["timestamp"] < end) & (ev["timestamp"] >= end - days * 86_400)]
    if ev is None or not len(ev):
        ev = load_events(data_dir)
        ev = ev[ev["timestamp"] < end]
    pos = vocab_of_frame(ev).is_positive(ev["action_type"].to_numpy(), ev["duration_s"].to_numpy())
    score = ev.assign(w=np.where(pos, 1.0, 0.01)).groupby("pin_id")["w"].sum().sort_values(ascending=False, kind="stable")
    score = score.head(top)
    return pa.table({"pin_id": pa.array(score.index.to_numpy(np.int64)), "score": pa.array(score.to_numpy(np.float64))})


def write_sources(repo_dir: str | Path, data_dir: str | Path, date: str, user_embeddings: str | Path | None = None,
                  pin_embeddings: str | Path | None = None, batch_rows: int = BATCH_ROWS) -> dict[str, int]:
    """Write the sources of a repo instance as of the end of ``date`` (YYYY-MM-DD, UTC), ``batch_rows`` rows at a
    time (see the module docstring). Ranker features: each user's and pin's feature columns (meta.json
    ``user_features`` / ``pin_features``) at their latest impression before the end of ``date``; pins also get
    their engagement over all impressions before then. Embeddings: the given tables (None: the source is left as
    it is). Each file is replaced atomically. Returns rows per source and rows changed (``<source>_changed``)."""
    if batch_rows < 1:
        raise FeatureStoreError(f"batch_rows must be >= 1, got {batch_rows}")
    repo_dir = Path(repo_dir)
    sources = repo_dir / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    start, end = io.day_bounds(date)
    as_of = dt.datetime.fromtimestamp(start, dt.UTC)
    counts, schema = write_feature_sources(repo_dir, data_dir, as_of, batch_rows)
    for name, path, id_column in (("user_embedding", user_embeddings, "user_id"),
                                  ("pin_embedding", pin_embeddings, "pin_id")):
        if path is not None:
            counts[name], counts[f"{name}_changed"] = embedding_source(path, id_column, as_of,
                                                                      sources / f"{name}.parquet", batch_rows)
        elif not (sources / f"{name}.parquet").exists():
            raise FeatureStoreError(f"{sources / (name + '.parquet')}: no {name} source yet; pass an embedding table")
    pop = popular_pins(data_dir, end)
    atomic_write_parquet(pop, sources / POPULAR_FILE)
    counts["popular_pins"] = pop.num_rows
    atomic_write_json(schema, sources / "schema.json")
    return counts
