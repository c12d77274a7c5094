"""Training the homefeed ranker: weighted binary cross-entropy over K tasks on the data layer's impressions.

Training rows are impressions before ``meta["split_timestamp"]``, evaluation rows the ones after. Dense
features are normalised with statistics of the training rows (saved with the model and exported for
serving); user and pin embeddings are joined from embedding tables. Without a user table, each row's user
vector is the content baseline *as of that row's time* (``components.data.point_in_time``: only the user's
actions strictly before the impression), so no training row sees its own outcome. A user embedding *store* (the
daily ``embed_users`` output, one table per date) is joined per row as of the day before the row's day
(``point_in_time.DailyUserTables``, what serving reads that day); one table file is joined to every row. Without a
pin table, the pins' content vectors.
Runs alone or under ``torchrun --nproc_per_node=2`` (gloo DDP; each rank takes its shard of every epoch's
permutation); the loop itself (checkpoints, exact resume, logs) is :func:`components.training.loop.fit`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as fn
from numpy.lib.mixins import NDArrayOperatorsMixin
from torch import nn

from components.config import RankerConfig
from components.data import io
from components.data.baseline import content_embeddings
from components.data.point_in_time import (
    PIN_SHOWN,
    DailyUserTables,
    UserHistory,
    engagement_names,
    pin_engagement,
    user_history,
)
from components.data.schemas import SURFACES
from components.data.tables import EmbeddingTable
from components.data.validate import DataValidationError, load_table
from components.data.vocab import vocab_of_frame
from components.evaluation.metrics import auc, hit_at_k
from components.models.ranker import FeatureSpec, Ranker
from components.models.ranker_inputs import clamp_sparse, clamp_surface, normalize_dense
from components.training.common import DistInfo, shard
from components.training.loop import TrainTask, Validation, fit
from components.training.pinnerformer import open_table

EmbeddingSource = str | Path | EmbeddingTable | None
# a table joined by id, the point-in-time content history, or daily tables joined as of the day before each row
UserFeatures = EmbeddingTable | UserHistory | DailyUserTables


class EmbeddingRows(NDArrayOperatorsMixin):
    """(n, D) float32 embedding features kept as each row's position in its source (an ``EmbeddingTable``,
    ``UserHistory`` or ``DailyUserTables``: ``positions`` per row, ``gather`` per batch) and gathered when indexed,
    so a run of a few steps never holds every row's vectors (n x D floats). ``rows[i]`` equals row i of
    ``source.at``/``lookup`` over all rows, byte for byte; ``np.asarray`` and arithmetic gather every row."""

    def __init__(self, source: Any, parts: tuple[np.ndarray, ...]):
        self.source, self.parts = source, parts  # parts: positions' arrays, each (n,); the last is `found`
        self.shape = (len(parts[-1]), source.dim)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def found(self) -> np.ndarray:
        return self.parts[-1]

    def take(self, rows: np.ndarray | slice) -> EmbeddingRows:
        return EmbeddingRows(self.source, tuple(p[rows] for p in self.parts))

    def __getitem__(self, rows: np.ndarray | slice | int) -> np.ndarray:
        if isinstance(rows, int | np.integer):  # one row: (D,)
            return self[np.array([rows])][0]
        return self.source.gather(*(p[rows] for p in self.parts))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self[slice(None)]
        return out if dtype is None else out.astype(dtype)

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        arrays = [np.asarray(x) if isinstance(x, EmbeddingRows) else x for x in inputs]
        return getattr(ufunc, method)(*arrays, **kwargs)


def embedding_rows(source: UserFeatures | EmbeddingTable, ids: np.ndarray, timestamps: np.ndarray) -> EmbeddingRows:
    """The rows of ``ids`` in ``source``: as of each row's time for the point-in-time sources, by id for a table."""
    if isinstance(source, EmbeddingTable):
        return EmbeddingRows(source, source.positions(ids))
    return EmbeddingRows(source, source.positions(ids, timestamps))


@dataclass
class RankerData:
    """Model-ready arrays for a set of impressions (inputs in ranker_inputs.MODEL_INPUTS order); the embedding
    features may be :class:`EmbeddingRows`, gathered per batch."""

    dense: np.ndarray  # (n, N) float32, normalised
    sparse: np.ndarray  # (n, S) int64
    surface: np.ndarray  # (n, 1) int64
    user: np.ndarray | EmbeddingRows  # (n, D_user) float32
    pin: np.ndarray | EmbeddingRows  # (n, D_pin) float32
    labels: np.ndarray  # (n, K) float32
    request_id: np.ndarray  # (n,) int64
    timestamp: np.ndarray | None = None  # (n,) int64 impression time (a validation period is cut by it)

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, rows: np.ndarray | slice | None = None) -> tuple[torch.Tensor, ...]:
        rows = slice(None) if rows is None else rows
        return tuple(torch.from_numpy(np.ascontiguousarray(a[rows]))
                     for a in (self.dense, self.sparse, self.surface, self.user, self.pin))

    def subset(self, rows: np.ndarray) -> RankerData:
        return RankerData(*(a.take(rows) if isinstance(a, EmbeddingRows) else a[rows]
                            for a in (self.dense, self.sparse, self.surface, self.user, self.pin, self.labels,
                                      self.request_id)),
                          timestamp=None if self.timestamp is None else self.timestamp[rows])


def read_embeddings(source: EmbeddingSource, what: str) -> EmbeddingTable | None:
    """None, a table, or the table at a path (training.pinnerformer.open_table: file, folder or store root)."""
    if source is None or isinstance(source, EmbeddingTable):
        return source
    return open_table(source, what)


def read_user_features(source: EmbeddingSource | DailyUserTables) -> EmbeddingTable | DailyUserTables | None:
    """A folder with ``CURRENT`` (a VersionedStore root, e.g. ``embed_users``' ``users/``) is joined per row
    (:class:`DailyUserTables`); a table file or a ``v=<version>`` folder is one table for every row."""
    if isinstance(source, DailyUserTables):
        return source
    if isinstance(source, str | Path) and Path(source).is_dir() and (Path(source) / "CURRENT").exists():
        return DailyUserTables.open(source)
    return read_embeddings(source, "user embedding table")


def embedding_tables(data_dir: str | Path, user_embeddings: EmbeddingSource | DailyUserTables = None,
                     pin_embeddings: EmbeddingSource = None) -> tuple[UserFeatures, EmbeddingTable]:
    """(user features, pin table). A missing user table is the content baseline's point-in-time history
    (each row's vector from the actions before its own time), a user store the daily tables joined per row,
    a missing pin table the content vectors."""
    users = read_user_features(user_embeddings)
    pins = read_embeddings(pin_embeddings, "pin embedding table")
    if pins is None:
        pins, _ = content_embeddings(data_dir)
    return (users if users is not None else user_history(data_dir)), pins


def feature_spec(meta: dict[str, Any], users: UserFeatures, pins: EmbeddingTable,
                 cfg: RankerConfig | None = None) -> FeatureSpec:
    """The data's features (meta.json), plus the point-in-time pin engagement columns when
    ``cfg.pin_engagement`` (dense and pin-side: serving reads them from Feast's pin features)."""
    sparse = dict(meta["sparse_features"])
    extra = engagement_names(list(cfg.tasks)) if cfg is not None and cfg.pin_engagement else []
    return FeatureSpec(dense=list(meta["dense_features"]) + extra, sparse=list(sparse),
                       cardinalities=[int(c) for c in sparse.values()],
                       user_dim=users.dim, pin_dim=pins.dim, user_features=list(meta.get("user_features", [])),
                       pin_features=list(meta.get("pin_features", [])) + extra)


def add_pin_engagement(df: pd.DataFrame, dense: list[str]) -> pd.DataFrame:
    """``df`` (all impressions) with the engagement columns among the ``dense`` names (``d_pin_rate_<task>``,
    ``d_pin_log_impressions``) computed from ``df``'s own labels, each row from the days strictly before its
    own (point in time). Raw requests for serving tests are built from this too."""
    tasks = [n.removeprefix("d_pin_rate_") for n in dense if n.startswith("d_pin_rate_")]
    if not tasks and PIN_SHOWN not in dense:
        return df
    missing = [f"label_{t}" for t in tasks if f"label_{t}" not in df.columns]
    if missing:
        raise DataValidationError([f"impressions: the pin engagement features need column(s) {missing}"])
    pins, ts = df["pin_id"].to_numpy(), df["timestamp"].to_numpy()
    labels = df[[f"label_{t}" for t in tasks]].to_numpy(np.float64)
    return df.assign(**pin_engagement(pins, ts, labels, pins, ts, tasks))


def load_impressions(data_dir: str | Path, spec: FeatureSpec, tasks: list[str]) -> pd.DataFrame:
    """All impressions, checked to hold every feature and label column the ranker needs (the point-in-time
    pin engagement columns computed here when ``spec`` has them)."""
    df = add_pin_engagement(load_table(data_dir, "impressions"), spec.dense)
    where = Path(data_dir) / "impressions"
    needed = spec.dense + spec.sparse + [f"label_{t}" for t in tasks]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataValidationError([f"{where}: missing column(s) {missing}; meta.json and the ranker tasks "
                                   f"{tasks} expect them (have {sorted(df.columns)})"])
    return df.sort_values(["timestamp", "request_id"], kind="stable").reset_index(drop=True)


def dense_stats(df: pd.DataFrame, spec: FeatureSpec) -> tuple[list[float], list[float]]:
    x = df[spec.dense].to_numpy(np.float64)
    return x.mean(0).tolist(), x.std(0).tolist()


def to_arrays(df: pd.DataFrame, spec: FeatureSpec, tasks: list[str], mean: list[float], std: list[float],
              users: UserFeatures, pins: EmbeddingTable) -> tuple[RankerData, dict[str, int]]:
    """Impressions -> model inputs exactly as serving builds them (ranker_inputs' normalisation and clamps);
    point-in-time user features are taken as of each row's timestamp. The embedding features are
    :class:`EmbeddingRows` (each row's position, gathered per batch)."""
    surface = vocab_of_frame(df).surface_codes(df["surface"])  # the dataset's surfaces (meta.json)
    ts = df["timestamp"].to_numpy()
    user, pin = embedding_rows(users, df["user_id"].to_numpy(), ts), embedding_rows(pins, df["pin_id"].to_numpy(), ts)
    user_found, pin_found = user.found, pin.found
    data = RankerData(
        dense=normalize_dense(df[spec.dense].to_numpy(np.float32), mean, std),
        sparse=clamp_sparse(df[spec.sparse].to_numpy(np.int64), spec.cardinalities),
        surface=clamp_surface(surface, len(SURFACES)),
        user=user, pin=pin,
        labels=df[[f"label_{t}" for t in tasks]].to_numpy(np.float32),
        request_id=df["request_id"].to_numpy(np.int64), timestamp=df["timestamp"].to_numpy(np.int64))
    counts = {"missing_user_embeddings": int((~user_found).sum()), "missing_pin_embeddings": int((~pin_found).sum())}
    if isinstance(users, DailyUserTables):  # of the missing users: rows older than every daily table
        counts["rows_before_first_user_table"] = int((users.table_index(data.timestamp) < 0).sum())
    return data, counts


def prepare_data(cfg: RankerConfig, data_dir: str | Path, user_embeddings: EmbeddingSource = None,
                 pin_embeddings: EmbeddingSource = None) -> tuple[RankerData, RankerData, dict[str, Any]]:
    """(train, eval, extra): the time split, normalisation fitted on train, and what inference needs."""
    meta = io.read_meta(data_dir)
    users, pins = embedding_tables(data_dir, user_embeddings, pin_embeddings)
    spec = feature_spec(meta, users, pins, cfg)
    df = load_impressions(data_dir, spec, cfg.tasks)
    split = int(meta["split_timestamp"])
    is_train = df["timestamp"].to_numpy() < split
    if not is_train.any() or is_train.all():
        raise DataValidationError([f"{Path(data_dir) / 'impressions'}: need impressions both before and after "
                                   f"split_timestamp {split} (have {int(is_train.sum())} before, "
                                   f"{int((~is_train).sum())} after)"])
    train_df = df[is_train]
    if cfg.max_train_rows and len(train_df) > cfg.max_train_rows:
        train_df = train_df.iloc[-cfg.max_train_rows:]  # the most recent rows before the split
    mean, std = dense_stats(train_df, spec)
    train, miss_train = to_arrays(train_df, spec, cfg.tasks, mean, std, users, pins)
    evaluation, miss_eval = to_arrays(df[~is_train], spec, cfg.tasks, mean, std, users, pins)
    extra = {"spec": spec.__dict__.copy(), "dense_mean": mean, "dense_std": std, "tasks": list(cfg.tasks),
             "score_weights": list(cfg.score_weights), "dataset": meta.get("dataset"), "split_timestamp": split,
             "surfaces": list(vocab_of_frame(df).surfaces),
             "user_embeddings": users.model_version, "pin_embeddings": pins.model_version,
             "data_dir": str(Path(data_dir).resolve()),
             "user_embeddings_path": _path_or_none(user_embeddings), "pin_embeddings_path": _path_or_none(pin_embeddings),
             "rows": {"train": len(train), "eval": len(evaluation)}, "missing": {"train": miss_train, "eval": miss_eval}}
    if isinstance(users, DailyUserTables):
        extra["user_tables"] = {"join": "per row, the newest table dated before the row's day",
                                "versions": list(users.versions)}
    return train, evaluation, extra


def _path_or_none(source: EmbeddingSource | DailyUserTables) -> str | None:
    if isinstance(source, DailyUserTables):
        return str(source.root.resolve())
    return str(Path(source).resolve()) if isinstance(source, str | Path) else None


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted binary cross-entropy: sum_k w_k * mean_b BCE(logit_bk, y_bk)."""
    per_task = fn.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(0)  # (K,)
    return (per_task * weights).sum()


@torch.no_grad()
def predict(model: Ranker, data: RankerData, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (n, K), score (n,)) in eval mode."""
    was_training = model.training
    model.eval()
    probs, scores = [], []
    for start in range(0, len(data), batch_size):
        p, s = model.predict(*data.inputs(slice(start, start + batch_size)))
        probs.append(p.numpy())
        scores.append(s[:, 0].numpy())
    model.train(was_training)
    k = len(model.score_weights)
    return (np.concatenate(probs) if probs else np.zeros((0, k), np.float32),
            np.concatenate(scores) if scores else np.zeros(0, np.float32))


def evaluate(model: Ranker, data: RankerData, tasks: list[str], weights: list[float],
             batch_size: int = 4096) -> dict[str, float]:
    """AUC per task, weighted log-loss, HIT@3/save ranked by the serving score and by p(save)."""
    probs, score = predict(model, data, batch_size)
    out: dict[str, float] = {}
    for k, t in enumerate(tasks):
        out[f"auc_{t}"] = auc(data.labels[:, k], probs[:, k])
    logits = torch.logit(torch.from_numpy(probs).clamp(1e-7, 1 - 1e-7))
    out["loss"] = float(loss_fn(logits, torch.from_numpy(data.labels), torch.tensor(weights)))
    if "save" in tasks:
        save = data.labels[:, tasks.index("save")]
        by_score = hit_at_k(data.request_id, score, save, k=3)
        out["hit3_save"] = by_score["hit"]
        out["hit3_save_norm"] = by_score["hit_norm"]
        out["hit3_save_p_save"] = hit_at_k(data.request_id, probs[:, tasks.index("save")], save, k=3)["hit"]
        out["requests_with_save"] = by_score["requests"]
    return out


class RankerTask(TrainTask):
    """The ranker's part of the loop: one seeded permutation per epoch (the same on every rank, then sharded),
    weighted multi-task BCE, and evaluation on the impressions after the split."""

    name = "ranker"

    def __init__(self, cfg: RankerConfig, data_dir: str | Path, user_embeddings: EmbeddingSource = None,
                 pin_embeddings: EmbeddingSource = None):
        super().__init__(cfg)
        self.sources = (data_dir, user_embeddings, pin_embeddings)
        self.weights = torch.tensor(cfg.task_weights, dtype=torch.float32)

    def setup(self, info: DistInfo) -> None:
        super().setup(info)
        self.train_data, self.eval_data, self.extra = prepare_data(self.cfg, *self.sources)
        self.local_batch = max(1, self.cfg.batch_size // info.world_size)

    def build_model(self) -> nn.Module:
        return Ranker(self.cfg, FeatureSpec.from_dict(self.extra["spec"]))

    def batches(self, epoch: int, start: int):
        n = len(self.train_data)
        perm = np.random.default_rng(self.cfg.seed * 100_003 + epoch).permutation(n)[shard(n, self.info)]
        for i in range(start * self.local_batch, len(perm), self.local_batch):
            rows = perm[i:i + self.local_batch]
            yield self.train_data.inputs(rows), torch.from_numpy(self.train_data.labels[rows])

    def loss(self, module: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        inputs, labels = batch
        return loss_fn(module(*inputs), labels, self.weights), {}

    def count(self, batch: Any) -> int:
        return len(batch[1])

    def start_record(self) -> dict[str, Any]:
        return {"rows_train": len(self.train_data), "rows_eval": len(self.eval_data), "arch": self.cfg.arch,
                "pepnet": self.cfg.pepnet}

    def model_extra(self) -> dict[str, Any]:
        return self.extra

    def finish(self, model: nn.Module) -> dict[str, Any]:
        cfg = self.cfg
        return {**evaluate(model, self.eval_data, cfg.tasks, cfg.task_weights, cfg.eval_batch_size),
                "rows_train": len(self.train_data), "rows_eval": len(self.eval_data)}


def validation_on(task: RankerTask, start: int, end: int | None,
                  report: Callable[[int, float | None], bool] | None = None) -> Validation:
    """Early stopping for ``task`` (``cfg.patience`` > 0): ``cfg.validation_metric()`` (``val_metric``:
    HIT@3/save by default, AUC of the first task without a save task; or ``auc_<task>``) on its evaluation
    impressions in [start, end), the validation period, logged as ``val_<metric>``; best weights kept.
    ``report``: :class:`Validation`'s optional hook (a tuning study's pruner)."""
    cfg = task.cfg
    key = cfg.validation_metric()

    def score(model: nn.Module) -> float | None:
        data = task.eval_data
        ts = data.timestamp
        rows = np.flatnonzero((ts >= start) & (ts < end) if end is not None else ts >= start)
        return evaluate(model, data.subset(rows), cfg.tasks, cfg.task_weights, cfg.eval_batch_size).get(key)

    return Validation(score, metric=f"val_{key}", direction="higher", every=cfg.val_every, patience=cfg.patience,
                      report=report)


def train(cfg: RankerConfig, data_dir: str | Path, out_dir: str | Path, user_embeddings: EmbeddingSource = None,
          pin_embeddings: EmbeddingSource = None, resume: bool = False,
          val_period: tuple[int, int | None] | None = None,
          report: Callable[[int, float | None], bool] | None = None) -> dict[str, Any]:
    """Train the ranker into ``out_dir`` (model.pt, config.yaml, checkpoints/, train_log.jsonl, metrics.json);
    a missing embedding table falls back to the content baseline. With ``val_period`` ([start, end) unix
    seconds inside the evaluation range) and ``cfg.patience`` > 0, validates there, keeps the best weights and
    stops early (the evaluation harness passes the protocol's ``val`` period); ``report`` is called with each
    validation (``homefeed tune``'s pruner may stop the run there). Returns the metrics."""
    task = RankerTask(cfg, data_dir, user_embeddings, pin_embeddings)
    validation = validation_on(task, *val_period, report) if val_period is not None and cfg.patience > 0 else None
    return fit(task, out_dir, resume=resume, validation=validation)
