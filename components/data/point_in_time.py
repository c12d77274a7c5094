"""Point-in-time features. User features: each row's user vector is built only from that user's actions strictly
before the row's own timestamp.

Why: the content-baseline user table (``components.data.baseline.content_embeddings``) is the mean of a
user's engaged pins' content vectors over every action before the split. Joined to a *training*
impression, that mean already contains the impression's own outcome (on ML-100k every rated impression is
also an event, so a saved pin sits inside its own user vector): training rows see their labels, evaluation
rows (whose actions come after the split) do not. Logistic regression on those features scored AUC 0.81 on
training rows and 0.55 on evaluation rows. Here each (user, time) query gets the same weighted mean, but
over the actions with ``timestamp < time`` only, so no row sees its own action or anything after it.

The rule is the content baseline's (positive engagement by the dataset's rule weighs 1, any other action
0.05, then L2 normalisation), so ``history.at(users, t)`` for every user at one time ``t`` equals
``content_embeddings(data_dir, until=t)``'s user table. Serving already follows it: the daily user table
is built from the actions before the run, and a request comes after it.

Cost O(E log E + Q log E) for E events and Q queries: events sorted by (user, time), one cumulative sum of
the weighted pin vectors, one binary search per query.

Learned user tables (:class:`DailyUserTables`): the daily ``embed_users`` store holds one table per date (version D
embeds each user from their actions up to the end of D). Each row reads the newest version dated strictly before
its own UTC day, what serving reads that day (the latest published table, materialised after the day it covers):
never a table of the row's own day or later.

Pin features (:func:`counts_before`, :func:`pin_engagement`): a pin's rating count and its per-task
engagement rates, each from what happened strictly before the row (the engagement from the days before
the row's day, as serving's daily pin feature sees it), so no row counts its own rating or label.

Shapes: E events, Q queries, D content-vector width, U users with events.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from components.data.schemas import DataValidationError
from components.data.tables import EmbeddingTable, VersionedStore, read_table
from components.data.validate import load_events, pin_features
from components.data.vocab import vocab_of_frame

POSITIVE_WEIGHT, OTHER_WEIGHT = 1.0, 0.05  # as content_embeddings: positives dominate, other actions break ties
DAY = 86_400  # seconds; days are UTC (as the dt=YYYY-MM-DD partitions and the daily tables)


@dataclass
class UserHistory:
    """Every user's actions as cumulative sums, queried as of any time."""

    users: np.ndarray  # (U,) sorted user ids that have at least one action
    keys: np.ndarray  # (E,) int64 user index * span + (timestamp - t0), sorted
    t0: int  # the earliest action time
    span: int  # (latest - earliest action time) + 2: a query time past the last action still fits
    sums: np.ndarray  # (E+1, D) float64 cumulative weighted pin vectors, row 0 = 0
    weights: np.ndarray  # (E+1,) float64 cumulative weights
    # the content baseline's version: at any one time these are its vectors, so serving the content-v1 user
    # table to a ranker trained on this history passes serving's version check
    model_version: str = "content-v1"

    @property
    def dim(self) -> int:
        return self.sums.shape[1]

    def at(self, user_ids: np.ndarray, timestamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """((Q, D) float32 L2-normalised user vectors, (Q,) found) as of each query's time, from the actions
        strictly before it; a user with no earlier action gets a zero vector and found False."""
        lo, hi, found = self.positions(user_ids, timestamps)
        return self.gather(lo, hi, found), found

    def positions(self, user_ids: np.ndarray, timestamps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lo, hi, found), each (Q,): the span of each query's earlier actions in the cumulative sums; :meth:`at`
        is :meth:`gather` of these (kept per row, gathered per batch by the ranker)."""
        user_ids = np.asarray(user_ids, np.int64)
        t = np.asarray(timestamps, np.int64)
        u = np.searchsorted(self.users, user_ids).clip(0, max(len(self.users) - 1, 0))
        known = (self.users[u] == user_ids) if len(self.users) else np.zeros(len(user_ids), bool)
        base = u.astype(np.int64) * self.span
        lo = np.searchsorted(self.keys, base, side="left")  # (Q,) the user's first action
        hi = np.searchsorted(self.keys, base + np.clip(t - self.t0, 0, self.span - 1), side="left")  # ts < t
        found = known & (hi > lo) & (self.weights[hi] - self.weights[lo] > 0)
        return lo, hi, found

    def gather(self, lo: np.ndarray, hi: np.ndarray, found: np.ndarray) -> np.ndarray:
        """(Q, D) float32: the weighted mean of each span's pin vectors, L2-normalised; zero where not found."""
        acc = self.sums[hi] - self.sums[lo]  # (Q, D)
        w = self.weights[hi] - self.weights[lo]  # (Q,)
        out = np.zeros((len(lo), self.dim), np.float64)
        out[found] = acc[found] / w[found, None]
        norm = np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-8)
        return (out / norm).astype(np.float32)


def user_history(data_dir: str | Path) -> UserHistory:
    """Every action of ``data_dir``'s events (before and after the split: a query's time bounds what it sees)
    as a :class:`UserHistory` over the pins' content vectors (L2-normalised, as the content baseline's)."""
    pin_ids, feats = pin_features(data_dir)
    order = np.argsort(pin_ids)
    pin_ids, feats = pin_ids[order], feats[order].astype(np.float64)
    pins = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-8)  # (N, D)
    ev = load_events(data_dir)  # sorted by (user_id, timestamp)
    row = np.searchsorted(pin_ids, ev["pin_id"].to_numpy()).clip(0, max(len(pin_ids) - 1, 0))
    keep = (pin_ids[row] == ev["pin_id"].to_numpy()) if len(pin_ids) else np.zeros(len(ev), bool)
    ev, row = ev[keep], row[keep]
    pos = vocab_of_frame(ev).is_positive(ev["action_type"].to_numpy(), ev["duration_s"].to_numpy())
    w = np.where(pos, POSITIVE_WEIGHT, OTHER_WEIGHT)  # (E,)
    ts = ev["timestamp"].to_numpy(np.int64)
    users, uidx = np.unique(ev["user_id"].to_numpy(np.int64), return_inverse=True)
    t0 = int(ts.min()) if len(ts) else 0
    span = (int(ts.max()) - t0 + 2) if len(ts) else 2
    if len(users) and (len(users) + 1) * span >= 2**62:
        raise ValueError(f"{data_dir}: {len(users)} users x {span} s of events do not fit one int64 sort key")
    keys = uidx.astype(np.int64) * span + (ts - t0)  # (E,) already sorted: events are by (user, time)
    o = np.argsort(keys, kind="stable")  # a no-op for load_events' order; kept so the invariant never rests on it
    keys, row, w = keys[o], row[o], w[o]
    sums = np.zeros((len(keys) + 1, pins.shape[1]), np.float64)
    np.cumsum(pins[row] * w[:, None], axis=0, out=sums[1:])
    weights = np.r_[0.0, np.cumsum(w)]
    return UserHistory(users, keys, t0, span, sums, weights)


# ---- learned user tables, one per day ------------------------------------------------------------------------

DATE_VERSION = "%Y-%m-%d"


def _epoch_day(version: str) -> int:
    return (dt.date.fromisoformat(version) - dt.date(1970, 1, 1)).days


@dataclass
class DailyUserTables:
    """A ``VersionedStore`` of daily user embedding tables (``embed_users``' output), joined per row as of the day
    before the row's day. Tables are read on first use and kept (one per version the rows need).

    Which versions: every published ``YYYY-MM-DD`` version up to ``CURRENT`` (a version after ``CURRENT`` was
    rolled back, and serving does not read it either). All must come from one model (``model_version``) and
    have one width, checked when the store is opened.
    """

    root: Path
    versions: list[str]  # (V,) dates, oldest first, the last one CURRENT
    days: np.ndarray  # (V,) int64 days since 1970-01-01 (UTC) of each version
    model_version: str
    dim: int
    _tables: dict[int, EmbeddingTable] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, root: str | Path) -> DailyUserTables:
        """The store at ``root`` (a folder with ``CURRENT``); a clear error for anything the per-row join cannot
        use: no version, a version that is not a date, tables of several models or widths."""
        store = VersionedStore(root)
        current = store.current()
        if current is None:
            raise DataValidationError([f"{root}: no CURRENT file: not a published embedding store"])
        versions = store.versions()
        not_dates = [v for v in versions if not _is_date(v)]
        if not_dates:
            raise DataValidationError([
                f"{root}: versions {not_dates} are not dates; a per-row join of daily user tables needs YYYY-MM-DD "
                f"versions (as embed_users publishes). To join one table to every row, pass its file "
                f"({store.path(current)})"])
        versions = versions[:versions.index(current) + 1]
        found: dict[tuple[str, int], list[str]] = {}
        for v in versions:
            path = store.path(v)
            schema = pq.read_schema(path)
            emb = schema.field("embedding").type if "embedding" in schema.names else None
            width = getattr(emb, "list_size", -1)
            model = pq.read_table(path, columns=["model_version"]).column(0) if "model_version" in schema.names else None
            if emb is None or model is None or width <= 0:
                raise DataValidationError([f"{path}: expected an embedding table (fixed-size 'embedding' list and "
                                           f"'model_version' columns), have {schema.names}"])
            found.setdefault((model[0].as_py() if len(model) else "", int(width)), []).append(v)
        if len(found) > 1:
            kinds = "; ".join(f"model {m!r}, {d} dims: {vs}" for (m, d), vs in found.items())
            raise DataValidationError([f"{root}: the daily user tables come from different models or widths "
                                       f"({kinds}); re-embed the older days with the current model (embed users "
                                       f"--since) or pass one table file"])
        (model_version, dim), = found
        days = np.array([_epoch_day(v) for v in versions], np.int64)
        return cls(Path(root), versions, days, model_version, dim)

    def table_index(self, timestamps: np.ndarray) -> np.ndarray:
        """(Q,) int64: the version each row reads, the newest dated strictly before the row's UTC day; -1: none."""
        day = np.asarray(timestamps, np.int64) // DAY
        return np.searchsorted(self.days, day, side="left").astype(np.int64) - 1

    def table(self, i: int) -> EmbeddingTable:
        if i not in self._tables:
            t = read_table(VersionedStore(self.root).path(self.versions[i]))
            if t.dim != self.dim or t.model_version != self.model_version:
                raise DataValidationError([f"{self.root}: version {self.versions[i]} changed while training read it "
                                           f"({t.model_version}, {t.dim} dims; opened as {self.model_version}, "
                                           f"{self.dim} dims)"])
            self._tables[i] = t
        return self._tables[i]

    def at(self, user_ids: np.ndarray, timestamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """((Q, D) float32, (Q,) found): each row's user embedding from the table of the day before its day
        (:meth:`table_index`); a user absent from that table, or a row older than every table, gets a zero
        vector and found False (the fallback an unknown id gets from any embedding table)."""
        table, row, found = self.positions(user_ids, timestamps)
        return self.gather(table, row, found), found

    def positions(self, user_ids: np.ndarray, timestamps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(table, row, found), each (Q,): the version each query reads (:meth:`table_index`), the user's row in
        it, whether it is there; :meth:`at` is :meth:`gather` of these (kept per row, gathered per batch)."""
        user_ids = np.asarray(user_ids, np.int64)
        table = self.table_index(timestamps)
        row = np.zeros(len(user_ids), np.int64)
        found = np.zeros(len(user_ids), bool)
        for i in np.unique(table[table >= 0]):
            rows = np.flatnonzero(table == i)
            row[rows], found[rows] = self.table(int(i)).positions(user_ids[rows])
        return table, row, found

    def gather(self, table: np.ndarray, row: np.ndarray, found: np.ndarray) -> np.ndarray:
        """(Q, D) float32: each found query's row of its table, zero elsewhere."""
        out = np.zeros((len(table), self.dim), np.float32)
        for i in np.unique(table[found]):
            rows = np.flatnonzero(found & (table == i))
            out[rows] = self.table(int(i)).embeddings[row[rows]]
        return out


def _is_date(version: str) -> bool:
    try:
        return dt.datetime.strptime(version, DATE_VERSION).strftime(DATE_VERSION) == version
    except ValueError:
        return False


# ---- point-in-time pin statistics ----------------------------------------------------------------------------

ENGAGEMENT_PRIOR = 10.0  # pseudo-impressions at the global rate: a pin shown twice is not "100% saved"
PIN_SHOWN = "d_pin_log_impressions"  # log1p(impressions of the pin before the row's day)


def engagement_names(tasks: list[str]) -> list[str]:
    """The dense columns :func:`pin_engagement` adds for ``tasks``: one smoothed rate per task, then the
    pin's log impression count."""
    return [f"d_pin_rate_{t}" for t in tasks] + [PIN_SHOWN]


def counts_before(keys: np.ndarray, times: np.ndarray, query_keys: np.ndarray, query_times: np.ndarray) -> np.ndarray:
    """(Q,) int64: for each query, how many (key, time) events have the query's key and a time strictly
    before the query's time. Keys and times are non-negative int64; cost O((E + Q) log E).

    ML-100k's ``d_pin_popularity`` is log1p of this over the pin's ratings: a row's own rating (at or after
    its request's time) is never counted."""
    keys, times = np.asarray(keys, np.int64), np.asarray(times, np.int64)
    qk, qt = np.asarray(query_keys, np.int64), np.asarray(query_times, np.int64)
    if not len(keys):
        return np.zeros(len(qk), np.int64)
    t0 = int(min(times.min(), qt.min() if len(qt) else times.min()))
    span = int(max(times.max(), qt.max() if len(qt) else times.max())) - t0 + 2
    if (int(max(keys.max(), qk.max() if len(qk) else 0)) + 1) * span >= 2**62:
        raise ValueError(f"{int(keys.max()) + 1} keys x {span} s do not fit one int64 sort key")
    ev = np.sort(keys * span + (times - t0))  # (E,)
    return (np.searchsorted(ev, qk * span + (qt - t0), side="left")
            - np.searchsorted(ev, qk * span, side="left")).astype(np.int64)


def pin_engagement(pins: np.ndarray, times: np.ndarray, labels: np.ndarray, query_pins: np.ndarray,
                   query_times: np.ndarray, tasks: list[str]) -> dict[str, np.ndarray]:
    """Each query pin's engagement from the impressions of the days strictly before its query's day
    (UTC): per task, the pin's positive rate smoothed towards the global rate of those days
    ``(pos + PRIOR * g) / (shown + PRIOR)``, and ``log1p(shown)``. Columns named by :func:`engagement_names`.

    Why days: serving reads the same numbers as a daily pin feature (``feast_store.write_sources`` as of
    the end of the day before the request), so a training row sees exactly what a request that day would,
    and never its own label (nor any other label of its own day).

    Shapes: ``pins``, ``times`` (E,), ``labels`` (E, K) in ``tasks`` order; ``query_*`` (Q,).
    """
    pins, labels = np.asarray(pins, np.int64), np.asarray(labels, np.float64).reshape(len(pins), len(tasks))
    day = np.asarray(times, np.int64) // DAY  # (E,)
    qpin, qday = np.asarray(query_pins, np.int64), np.asarray(query_times, np.int64) // DAY  # (Q,)
    # per (pin, day) sums, sorted by key; cumulative sums give "everything before day d" by one search
    udays = np.unique(np.r_[day, qday])
    d_e, d_q = np.searchsorted(udays, day), np.searchsorted(udays, qday)
    nd = len(udays) + 1
    upins = np.unique(pins)
    p_e = np.searchsorted(upins, pins)
    p_q = np.searchsorted(upins, qpin).clip(0, max(len(upins) - 1, 0))
    known = (upins[p_q] == qpin) if len(upins) else np.zeros(len(qpin), bool)
    key_e = p_e * nd + d_e
    order = np.argsort(key_e, kind="stable")
    key_s = key_e[order]
    shown = np.r_[0.0, np.cumsum(np.ones(len(key_s)))]  # (E+1,)
    pos = np.vstack([np.zeros((1, len(tasks))), np.cumsum(labels[order], axis=0)])  # (E+1, K)
    first = np.searchsorted(key_s, p_q * nd, side="left")  # (Q,) the pin's first impression
    upto = np.searchsorted(key_s, p_q * nd + d_q, side="left")  # (Q,) its first impression on or after the day
    upto = np.where(known, upto, first)
    n = shown[upto] - shown[first]  # (Q,)
    k = pos[upto] - pos[first]  # (Q, K)
    # the global rate of all impressions before the query's day
    dorder = np.argsort(d_e, kind="stable")
    g_shown = np.r_[0.0, np.cumsum(np.ones(len(dorder)))]
    g_pos = np.vstack([np.zeros((1, len(tasks))), np.cumsum(labels[dorder], axis=0)])
    g_at = np.searchsorted(d_e[dorder], d_q, side="left")  # (Q,)
    g = np.where(g_shown[g_at][:, None] > 0, g_pos[g_at] / np.maximum(g_shown[g_at], 1.0)[:, None], 0.0)  # (Q, K)
    rate = (k + ENGAGEMENT_PRIOR * g) / (n[:, None] + ENGAGEMENT_PRIOR)  # (Q, K)
    out = {f"d_pin_rate_{t}": rate[:, j].astype(np.float32) for j, t in enumerate(tasks)}
    out[PIN_SHOWN] = np.log1p(n).astype(np.float32)
    return out
