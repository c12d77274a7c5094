"""Content-only embeddings: a baseline and a stand-in wherever a trained model is not needed.

- pins: the content feature vector, L2-normalised;
- users: the mean of the content vectors of the pins they engaged positively with before ``until``
  (the dataset's positive rule, ``components.data.vocab``; homefeed's default: repin, closeup/click over
  10 s), L2-normalised; users with none get the mean of all their pins.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from components.data import io
from components.data.schemas import POSITIVE_MIN_DURATION_S
from components.data.tables import EmbeddingTable
from components.data.validate import load_events, pin_features
from components.data.vocab import vocab_of_frame


def is_positive(action_type: np.ndarray, duration_s: np.ndarray) -> np.ndarray:
    """PinnerFormer's positive engagement: repin, or closeup/click longer than 10 s."""
    action_type = np.asarray(action_type)
    return (action_type == "repin") | (
        np.isin(action_type, ["closeup", "click"]) & (np.asarray(duration_s) > POSITIVE_MIN_DURATION_S))


def _l2(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)).astype(np.float32)


def content_embeddings(data_dir: str | Path, until: int | None = None) -> tuple[EmbeddingTable, EmbeddingTable]:
    """(pin table, user table) of content-only embeddings; ``until`` defaults to the split time."""
    meta = io.read_meta(data_dir)
    until = meta["split_timestamp"] if until is None else until
    pin_ids, feats = pin_features(data_dir)
    pins = _l2(feats)
    ev = load_events(data_dir)
    ev = ev[ev["timestamp"] < until]
    pos = vocab_of_frame(ev).is_positive(ev["action_type"].to_numpy(), ev["duration_s"].to_numpy())
    users_all = np.sort(io.read_table(data_dir, "users").column("user_id").to_numpy())
    row = np.searchsorted(pin_ids, ev["pin_id"].to_numpy())
    uidx = np.searchsorted(users_all, ev["user_id"].to_numpy())
    acc = np.zeros((len(users_all), pins.shape[1]), np.float64)
    cnt = np.zeros(len(users_all))
    w = np.where(pos, 1.0, 0.05)  # positives dominate; other engagement breaks ties for users with none
    np.add.at(acc, uidx, pins[row] * w[:, None])
    np.add.at(cnt, uidx, w)
    users = _l2(acc / np.maximum(cnt, 1e-8)[:, None])
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return (EmbeddingTable(pin_ids, pins, "content-v1", now, "pin_id"),
            EmbeddingTable(users_all, users, "content-v1", now, "user_id"))
