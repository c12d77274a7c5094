"""PinnerFormer batch inference: the daily incremental user job and the pin tower (arXiv 2205.04507, 3.6).

``embed_users(model_dir, data_dir, pin_embeddings, out_root, date)``:
1. the users active on day D are those with events on D (``events/dt=D``, or D's rows of a month partition
   ``events/dt=YYYY-MM`` as an imported log writes them; every ``*.parquet`` of a partition is read);
2. each is embedded from their latest M actions up to the end of D (only their events are read);
3. the result is merged into the previous day's table (the newest published version older than D):
   new rows replace old ones, the other users carry over. If that table was made by another model (a
   retrain), its users are re-embedded by the new one in the same run (``retrained_users``) and nothing
   of the old model is carried over: a merged table never mixes two models' spaces;
4. the merged table is published as version D of ``VersionedStore(out_root / "users")``: written
   completely, then CURRENT switches with a rename. A run killed before that leaves the previous
   version current and readable; re-running D merges with the same base and gives the same table
   (``created_at`` is the end of D and ``model_version`` a digest of the model, not the wall clock).

``embed_pin_tower(model_dir, pin_embeddings, out_root, version=None)`` recomputes every pin's
pin-tower embedding (the retrieval space indexed in Milvus) into ``VersionedStore(out_root / "pins")``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from components.data import io
from components.data.checks import check_table
from components.data.schemas import DataValidationError
from components.data.tables import EmbeddingTable, VersionedStore
from components.data.validate import drop_out_of_vocab
from components.data.vocab import dataset_spec, vocab_of
from components.inference.shards import in_shard
from components.models.pinnerformer import load_model
from components.training.pinnerformer import load_pin_table
from components.training.pinnerformer_data import build_sequences, embed_windows

USERS_STORE = "users"
PINS_STORE = "pins"


def model_digest(model_dir: str | Path) -> str:
    """A short content digest of ``model.pt``: the model_version of every table it produces."""
    h = hashlib.sha256()
    with open(Path(model_dir) / "model.pt", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "pinnerformer-" + h.hexdigest()[:12]


def _load_pin_table(path: str | Path) -> EmbeddingTable:
    return load_pin_table(path)


def _events_of(data_dir: str | Path, users: np.ndarray, days: list[str]):
    """Events of ``users`` on ``days`` (validated, out-of-vocabulary rows dropped, sorted by user/time)."""
    spec = dataset_spec(data_dir, "events")  # the action types/surfaces meta.json declares (data.vocab)
    frames = []
    value_set = pa.array(users, pa.int64())
    for day in days:  # stored partition keys (days or months): every Parquet file of each
        for path in io.partition_files(data_dir, "events", day):
            t = pq.read_table(path, filters=[("user_id", "in", value_set)], page_checksum_verification=True)
            if t.num_rows:
                errs, _ = check_table(spec, t, str(path))
                if errs:
                    raise DataValidationError(errs)
                frames.append(t)
    if not frames:
        return None
    df = drop_out_of_vocab(pa.concat_tables(frames).to_pandas(), spec)
    df.attrs["vocab"] = vocab_of(data_dir)  # build_sequences reads the dataset's codes and positive rule
    return df.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)


@torch.no_grad()
def embed_users(model_dir: str | Path, data_dir: str | Path, pin_embeddings: str | Path, out_root: str | Path,
                date: str, batch_size: int = 512,
                before_publish: Callable[[EmbeddingTable], None] | None = None, since: str | None = None) -> Path:
    """Embed the users active on ``date`` and publish the merged table as version ``date``; returns its path.

    ``since`` (a first run, or a backfill): embed every user active on any day from ``since`` to ``date``
    instead, each from their latest M actions up to the end of ``date``, in one pass.
    ``before_publish`` (tests, hooks) is called with the merged table right before publishing.
    """
    also = retrained_users(out_root, date, model_dir)
    rows = embed_active_users(model_dir, data_dir, pin_embeddings, date, batch_size, since, also=also)
    return publish_users(rows, out_root, date, before_publish)


def retrained_users(out_root: str | Path, date: str, model_dir: str | Path) -> np.ndarray:
    """The users of the newest published table older than ``date`` if another model made it (the model was
    retrained since), else none: a new model's first daily run re-embeds them so that none keeps a vector of
    the old model's space, which the new pin tower's index does not share."""
    store = VersionedStore(Path(out_root) / USERS_STORE)
    previous = [v for v in store.versions() if v < date]
    if not previous:
        return np.zeros(0, np.int64)
    old = store.read(previous[-1])
    return np.zeros(0, np.int64) if old.model_version == model_digest(model_dir) else old.ids.astype(np.int64)


@torch.no_grad()
def embed_active_users(model_dir: str | Path, data_dir: str | Path, pin_embeddings: str | Path, date: str,
                       batch_size: int = 512, since: str | None = None,
                       shard: tuple[int, int] | None = None, also: np.ndarray | None = None) -> EmbeddingTable:
    """The rows :func:`embed_users` computes (users active on ``date``, or from ``since`` to ``date``, and the
    users ``also``, e.g. :func:`retrained_users`), not yet merged with the previous table; ``shard`` = (k, n):
    only the users of shard k of n (:mod:`components.inference.shards`), the daily pipeline's parallel tasks."""
    day_start, day_end = io.day_bounds(date)
    days = io.partitions(data_dir, "events")  # stored keys: days, or months for an imported long log
    if io.locate(data_dir, "events", date, days) is None:
        raise FileNotFoundError(f"{io.partition_path(data_dir, 'events', date).parent}: no events partition for {date} "
                                f"(nor for its month {date[:7]})")
    model, cfg, _ = load_model(model_dir)
    version_tag = model_digest(model_dir)
    table = _load_pin_table(pin_embeddings)
    if table.dim != cfg.pin_dim:
        raise ValueError(f"{pin_embeddings}: pin embeddings have {table.dim} dims, the model expects {cfg.pin_dim}")
    if since is not None:
        io.day_bounds(since)  # a clear error for a malformed date
        if since > date:
            raise ValueError(f"--since {since} is after --date {date}")
    first = io.day_bounds(since)[0] if since is not None else day_start
    # the stored partitions overlapping [since or D, D] (a month key YYYY-MM sorts before its days)
    active_keys = [d for d in days if since[:len(d)] <= d <= date] if since is not None else [date]
    seen = []
    for key in active_keys:
        t = io.read_partition(data_dir, "events", key, columns=["user_id", "timestamp"], stored=days)
        ts = t.column("timestamp").to_numpy()
        seen.append(t.column("user_id").to_numpy()[(ts >= first) & (ts < day_end)])
    if also is not None:
        seen.append(np.asarray(also, np.int64))
    active = np.unique(np.concatenate(seen)).astype(np.int64)
    if shard is not None:
        active = active[in_shard(active, *shard)]
    # latest M actions up to the end of D: read only the active users' rows, up to and including D
    events = _events_of(data_dir, active, [d for d in days if d <= date])
    ids = np.zeros(0, np.int64)
    emb = np.zeros((0, cfg.embed_dim), np.float32)
    if events is not None:
        events = events[events["timestamp"] < day_end]
        seqs = build_sequences(events, table.ids)
        windows = []
        for u in range(len(seqs)):
            a, b = seqs.span(u)
            windows.append((max(a, b - cfg.max_seq_len), b - 1))
        pins = torch.from_numpy(np.ascontiguousarray(table.embeddings, dtype=np.float32))
        emb = embed_windows(model, pins, seqs, windows, batch_size)
        ids = seqs.user_ids
    order = np.argsort(ids, kind="stable")
    return EmbeddingTable(ids[order], emb[order].astype(np.float32), version_tag,
                          dt.datetime.fromtimestamp(day_end, dt.UTC), "user_id")


def publish_users(rows: EmbeddingTable, out_root: str | Path, date: str,
                  before_publish: Callable[[EmbeddingTable], None] | None = None) -> Path:
    """Merge ``rows`` into the newest version of ``out_root/users`` older than ``date`` (new rows replace old
    ones, the other users carry over) and publish the result as version ``date``; returns its path. Rows of
    another model (the previous table before a retrain) are not carried over: the caller re-embeds those
    users (:func:`retrained_users`); one without events up to ``date`` has no embedding until it acts."""
    ids, emb = rows.ids, rows.embeddings
    store = VersionedStore(Path(out_root) / USERS_STORE)
    previous = [v for v in store.versions() if v < date]
    if previous:
        old = store.read(previous[-1])
        if old.dim != emb.shape[1]:
            raise ValueError(f"{store.path(previous[-1])}: previous table has {old.dim} dims, this model "
                             f"produces {emb.shape[1]}")
        keep = ~np.isin(old.ids, ids) & (old.model_version == rows.model_version)
        ids = np.concatenate([old.ids[keep], ids])
        emb = np.concatenate([old.embeddings[keep], emb])
    order = np.argsort(ids, kind="stable")
    merged = EmbeddingTable(ids[order], emb[order].astype(np.float32), rows.model_version, rows.created_at, "user_id")
    if before_publish is not None:
        before_publish(merged)
    return store.publish(merged, date)


@torch.no_grad()
def embed_pin_tower(model_dir: str | Path, pin_embeddings: str | Path, out_root: str | Path,
                    version: str | None = None, chunk: int = 8192, shard: tuple[int, int] | None = None) -> Path:
    """Recompute every pin's (or shard ``(k, n)``'s pins') pin-tower embedding and publish
    ``VersionedStore(out_root / "pins")``."""
    model, cfg, _ = load_model(model_dir)
    table = _load_pin_table(pin_embeddings)
    if shard is not None:
        keep = in_shard(table.ids, *shard)
        table = EmbeddingTable(table.ids[keep], table.embeddings[keep], table.model_version, table.created_at,
                               table.id_column)
    if table.dim != cfg.pin_dim:
        raise ValueError(f"{pin_embeddings}: pin embeddings have {table.dim} dims, the model expects {cfg.pin_dim}")
    pins = torch.from_numpy(np.ascontiguousarray(table.embeddings, dtype=np.float32))
    out = np.concatenate([model.embed_pins(pins[i:i + chunk]).numpy() for i in range(0, len(pins), chunk)])
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    version = version or now.strftime("%Y-%m-%d")
    result = EmbeddingTable(table.ids.astype(np.int64), out.astype(np.float32), model_digest(model_dir), now, "pin_id")
    return VersionedStore(Path(out_root) / PINS_STORE).publish(result, version)
