"""The evaluation protocol shared by the three harnesses: seeds, the fixed evaluation split, and the
validation / test periods.

Seeds. ``--seeds`` is always a comma-separated list of training seeds: ``--seeds 0,1,2`` trains every
variant three times, with seeds 0, 1 and 2; ``--seeds 3`` trains once, with seed 3. The same seed means the
same initialisation and sampling in every variant, so variants are compared seed by seed (paired).

The evaluation split is fixed independently of the training seed: held-out pairs, held-out users and
candidate pools are drawn with :data:`SPLIT_SEED`, never with the training seed, so every seed of every
variant is measured on the same queries against the same candidates.

Periods (time, never random): events before ``meta.json: split_timestamp`` train; the evaluation events at or
after it are cut in two at :func:`period_bounds`' midpoint: the first part is the *validation* period
(hyperparameters, early stopping and tuning look only there) and the later part the *test* period (reported
once, after every choice was made). ``period="all"`` keeps the whole evaluation range (the former protocol).

Per-user splits (``homefeed data import`` with ``split.leave_last``: ``users.parquet: split_timestamp``, each
user's own cut): a user's events before their own split time train, the rest are evaluation
(:func:`user_splits`, :func:`train_mask`, :func:`eval_mask`). Their evaluation events do not share one time
range, so the validation and test periods are two disjoint halves of the users (``SPLIT_SEED``) instead of two
halves of the days. Without the column every reader uses the global ``meta.json: split_timestamp``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from components.config import ConfigError
from components.data import io
from components.data.validate import load_events

SPLIT_SEED = 0  # held-out pairs/users and candidate pools: the same for every training seed
Period = Literal["val", "test", "all"]
PERIODS: tuple[str, ...] = ("val", "test", "all")


def parse_seeds(text: str | int | list[int] | None, default: int = 0, flag: str = "--seeds") -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; ``"3"`` or 3 -> [3]; None -> [default]. Rejects negatives and duplicates, in an
    error naming ``flag`` (the option that gave ``text``)."""
    if text is None or text == "":
        return [int(default)]
    if isinstance(text, int):
        items = [text]
    elif isinstance(text, list | tuple):
        items = list(text)
    else:
        try:
            items = [int(x) for x in str(text).split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"{flag}: expected a comma-separated list of integers such as 0,1,2, got '{text}'") from None
    if not items or any(int(s) < 0 for s in items):
        raise ConfigError(f"{flag}: expected non-negative integers such as 0,1,2, got '{text}'")
    if len(set(items)) != len(items):
        raise ConfigError(f"{flag}: a seed is repeated in '{text}'")
    return [int(s) for s in items]


def period_bounds(data_dir: str | Path, period: Period) -> tuple[int, int | None]:
    """[start, end) unix seconds of an evaluation period; end None = open. Validation is the first half of
    the evaluation range (by time), test the second half; both after ``split_timestamp``."""
    if period not in PERIODS:
        raise ConfigError(f"period '{period}' is not one of {PERIODS}")
    meta = io.read_meta(data_dir)
    split = int(meta["split_timestamp"])
    if period == "all":
        return split, None
    end = split + int(meta.get("eval_days", 0)) * 86_400 if meta.get("eval_days") else None
    if end is None:
        ts = load_events(data_dir)["timestamp"].to_numpy()
        end = int(ts.max()) + 1 if len(ts) else split + 1
    mid = split + (end - split) // 2
    return (split, mid) if period == "val" else (mid, None)


def user_splits(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(user ids ascending, each one's split time) from ``users.parquet: split_timestamp``; None without it."""
    users = io.read_table(data_dir, "users")
    if "split_timestamp" not in users.column_names:
        return None
    ids = users.column("user_id").to_numpy().astype(np.int64)
    ts = users.column("split_timestamp").to_numpy(zero_copy_only=False)
    if np.any(np.isnan(ts.astype(np.float64))):
        raise ValueError(f"{Path(data_dir) / 'users.parquet'}: column 'split_timestamp' has nulls; expected each "
                         "user's evaluation cut (unix seconds)")
    order = np.argsort(ids)
    return ids[order], ts.astype(np.int64)[order]


def split_times(data_dir: str | Path, user_ids: np.ndarray) -> np.ndarray:
    """Each given user's split time: their own (per-user split) or the global ``split_timestamp``. (n,) int64."""
    user_ids = np.asarray(user_ids, np.int64)
    out = np.full(len(user_ids), int(io.read_meta(data_dir)["split_timestamp"]), np.int64)
    per_user = user_splits(data_dir)
    if per_user is not None:
        ids, ts = per_user
        pos = np.searchsorted(ids, user_ids).clip(0, max(len(ids) - 1, 0))
        known = (ids[pos] == user_ids) if len(ids) else np.zeros(len(user_ids), bool)
        out[known] = ts[pos[known]]
    return out


def train_mask(data_dir: str | Path, user_ids: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Events (one per row of ``user_ids`` / ``timestamps``) in training: before their user's split time."""
    return np.asarray(timestamps) < split_times(data_dir, user_ids)


def user_half(user_ids: np.ndarray, period: Period) -> np.ndarray:
    """Mask of the users of a period's half (``val`` / ``test``: disjoint halves by a SPLIT_SEED hash; ``all``)."""
    user_ids = np.asarray(user_ids, np.int64)
    if period == "all":
        return np.ones(len(user_ids), bool)
    bucket = (np.random.default_rng([SPLIT_SEED, 29]).permutation(1024)[user_ids % 1024]) < 512
    return bucket if period == "val" else ~bucket


def eval_mask(data_dir: str | Path, user_ids: np.ndarray, timestamps: np.ndarray, period: Period) -> np.ndarray:
    """Events in an evaluation period: after the global split (the period's days), or, with per-user splits,
    at or after their user's own split time and in the period's half of the users."""
    if period not in PERIODS:
        raise ConfigError(f"period '{period}' is not one of {PERIODS}")
    if user_splits(data_dir) is None:
        return in_period(timestamps, period_bounds(data_dir, period))
    return ~train_mask(data_dir, user_ids, timestamps) & user_half(user_ids, period)


def in_period(timestamps: np.ndarray, bounds: tuple[int, int | None]) -> np.ndarray:
    """Mask of timestamps in [start, end)."""
    start, end = bounds
    ts = np.asarray(timestamps)
    return (ts >= start) & (ts < end) if end is not None else ts >= start
