"""PinnerFormer training data: one row per user with the whole sequence, examples sampled on the fly.

:class:`UserSequences` holds every user's actions in CSR form (one "row" per user: ``offsets[u]`` to
``offsets[u + 1]`` in time order). Each epoch, :func:`sample_examples` draws training sequences with
the paper's four knobs (section 3.5): max sequence length M, the fraction of possible sequences
sampled, the max sequences per user and the max positives per sequence, and picks their targets by
objective:

- ``next_action``: SASRec-style; position i predicts action i+1 when it is a positive;
- ``all_action``: the last position predicts up to ``max_positives_all_action`` sampled positives
  of the next K days;
- ``dense_all_action``: random positions each predict one random positive of their own next K days.

Positives follow the dataset's rule (``components.data.vocab``; homefeed's default: repin, closeup > 10 s
and click > 10 s), read from ``meta.json`` by ``load_events``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from components.config import PinnerFormerConfig
from components.data.vocab import vocab_of_frame
from components.models.pinnerformer import PinnerFormer

OBJECTIVES = ("next_action", "all_action", "dense_all_action")
NEGATIVES = ("in_batch", "random", "mixed")


@dataclass
class UserSequences:
    """Every user's actions in time order, CSR by user (``offsets`` has len(user_ids) + 1 entries)."""

    user_ids: np.ndarray  # (U,) int64, sorted
    offsets: np.ndarray  # (U+1,) int64
    pin_row: np.ndarray  # (A,) row of the pin in the pin embedding table
    action: np.ndarray  # (A,) index into the dataset's action types (vocab.Vocab)
    surface: np.ndarray  # (A,) index into the dataset's surfaces
    duration: np.ndarray  # (A,) float32 seconds
    timestamp: np.ndarray  # (A,) int64 unix seconds
    positive: np.ndarray  # (A,) bool
    dropped_unknown_pins: int = 0

    def __len__(self) -> int:
        return len(self.user_ids)

    def span(self, u: int) -> tuple[int, int]:
        return int(self.offsets[u]), int(self.offsets[u + 1])

    def index_of(self, user_ids: np.ndarray) -> np.ndarray:
        """Positions of ``user_ids`` in this table (-1 when absent)."""
        pos = np.searchsorted(self.user_ids, user_ids).clip(0, max(len(self.user_ids) - 1, 0))
        ok = (self.user_ids[pos] == user_ids) if len(self.user_ids) else np.zeros(len(user_ids), bool)
        return np.where(ok, pos, -1)


def build_sequences(events: pd.DataFrame, table_pin_ids: np.ndarray) -> UserSequences:
    """CSR sequences from events (as ``load_events`` returns them: vocabulary-filtered, sorted by user
    and time). Events whose pin is missing from the embedding table are dropped and counted."""
    order = np.argsort(table_pin_ids)
    pins = events["pin_id"].to_numpy()
    pos = np.searchsorted(table_pin_ids, pins, sorter=order).clip(0, max(len(table_pin_ids) - 1, 0))
    row = order[pos]
    known = table_pin_ids[row] == pins
    ev = events[known]
    by_user_time = np.lexsort((ev["timestamp"].to_numpy(), ev["user_id"].to_numpy()))  # stable
    ev_sorted = ev.iloc[by_user_time]
    row = row[known][by_user_time]
    users = ev_sorted["user_id"].to_numpy()
    uniq, starts = np.unique(users, return_index=True)
    offsets = np.append(starts, len(users)).astype(np.int64)
    vocab = vocab_of_frame(events)  # the dataset's meta.json vocabularies and positive rule (load_events)
    action = vocab.action_codes(ev_sorted["action_type"])
    surface = vocab.surface_codes(ev_sorted["surface"])
    if (action < 0).any() or (surface < 0).any():
        raise ValueError("build_sequences: events hold action types or surfaces outside the vocabulary "
                         f"(expected {vocab.action_types} and {vocab.surfaces}); load them with load_events")
    return UserSequences(
        user_ids=uniq.astype(np.int64), offsets=offsets, pin_row=row.astype(np.int64), action=action,
        surface=surface, duration=ev_sorted["duration_s"].to_numpy(np.float32),
        timestamp=ev_sorted["timestamp"].to_numpy(np.int64),
        positive=vocab.is_positive(ev_sorted["action_type"].to_numpy(), ev_sorted["duration_s"].to_numpy()),
        dropped_unknown_pins=int((~known).sum()),
    )


@dataclass
class Example:
    """One training sequence: user ``u``'s actions [start, end] and its (position, target action) pairs."""

    user: int
    start: int
    end: int  # inclusive
    positions: np.ndarray  # (T,) positions within the window
    targets: np.ndarray  # (T,) absolute action indices of the targets


def _future_positives(ts: np.ndarray, pos_idx: np.ndarray, window_s: int) -> tuple[np.ndarray, np.ndarray]:
    """For each action i of one user: [lo, hi) into ``pos_idx`` of the positives in (t_i, t_i + window]."""
    pts = ts[pos_idx]
    return np.searchsorted(pts, ts, side="right"), np.searchsorted(pts, ts + window_s, side="right")


def sample_examples(seqs: UserSequences, users: np.ndarray, cfg: PinnerFormerConfig,
                    rng: np.random.Generator) -> list[Example]:
    """Draw this epoch's training sequences for the user positions ``users`` (see the module doc)."""
    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"pinnerformer config: objective '{cfg.objective}' is not one of {OBJECTIVES}")
    window = cfg.future_window_days * 86_400
    m = cfg.max_seq_len
    out: list[Example] = []
    for u in users:
        a, b = seqs.span(int(u))
        n = b - a
        if n < 2:
            continue
        ts = seqs.timestamp[a:b]
        pos_local = np.flatnonzero(seqs.positive[a:b])
        if len(pos_local) == 0:
            continue
        lo, hi = _future_positives(ts, pos_local, window)
        if cfg.objective == "next_action":
            has_target = np.append(seqs.positive[a + 1:b], False)  # action i+1 is a positive
        else:
            has_target = hi > lo
        # a window ending at e is useful when some position in it has a target; for all_action, e itself
        if cfg.objective == "all_action":
            ends = np.flatnonzero(has_target)
        else:
            csum = np.concatenate([[0], np.cumsum(has_target)])
            e = np.arange(n)
            ends = np.flatnonzero(csum[e + 1] - csum[np.maximum(e + 1 - m, 0)] > 0)
        if len(ends) == 0:
            continue
        k = min(cfg.max_seqs_per_user, max(1, int(np.ceil(cfg.seq_sample_fraction * len(ends)))))
        for e in np.sort(rng.choice(ends, size=k, replace=False)):
            s = max(0, e - m + 1)
            if cfg.objective == "all_action":
                cand = pos_local[lo[e]:hi[e]]
                take = rng.choice(cand, size=min(cfg.max_positives_all_action, len(cand)), replace=False)
                positions = np.full(len(take), e - s)
                targets = take
            else:
                cand_pos = np.flatnonzero(has_target[s:e + 1])  # positions in the window with a target
                chosen = np.sort(rng.choice(cand_pos, size=min(cfg.max_positives_per_seq, len(cand_pos)),
                                            replace=False))
                if cfg.objective == "next_action":
                    targets = chosen + s + 1
                else:
                    targets = np.array([pos_local[rng.integers(lo[s + j], hi[s + j])] for j in chosen])
                positions = chosen
            out.append(Example(int(u), a + s, a + e, positions.astype(np.int64), (a + targets).astype(np.int64)))
    return out


def window(seqs: UserSequences, start: int, end: int) -> dict[str, np.ndarray]:
    """The raw arrays of actions [start, end] (inclusive)."""
    sl = slice(start, end + 1)
    return {"pin_row": seqs.pin_row[sl], "action": seqs.action[sl], "surface": seqs.surface[sl],
            "duration": seqs.duration[sl], "timestamp": seqs.timestamp[sl]}


def collate(seqs: UserSequences, windows: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Right-padded batch tensors for action windows [(start, end inclusive), ...]."""
    b = len(windows)
    m = max(e - s + 1 for s, e in windows)
    pin_row = np.zeros((b, m), np.int64)
    action = np.zeros((b, m), np.int64)
    surface = np.zeros((b, m), np.int64)
    duration = np.zeros((b, m), np.float32)
    timestamp = np.zeros((b, m), np.int64)
    valid = np.zeros((b, m), bool)
    for i, (s, e) in enumerate(windows):
        n = e - s + 1
        sl = slice(s, e + 1)
        pin_row[i, :n] = seqs.pin_row[sl]
        action[i, :n] = seqs.action[sl]
        surface[i, :n] = seqs.surface[sl]
        duration[i, :n] = seqs.duration[sl]
        timestamp[i, :n] = seqs.timestamp[sl]
        timestamp[i, n:] = seqs.timestamp[e]  # padding repeats the last time (no effect: masked, causal)
        valid[i, :n] = True
    return {"pin_row": torch.from_numpy(pin_row), "action": torch.from_numpy(action),
            "surface": torch.from_numpy(surface), "duration": torch.from_numpy(duration),
            "timestamp": torch.from_numpy(timestamp), "valid": torch.from_numpy(valid)}


def collate_examples(seqs: UserSequences, examples: list[Example]) -> dict[str, torch.Tensor]:
    """A training batch: the padded windows plus the flat (row, position, target, user) pairs."""
    batch = collate(seqs, [(ex.start, ex.end) for ex in examples])
    rows = np.concatenate([np.full(len(ex.positions), i) for i, ex in enumerate(examples)])
    batch["pair_row"] = torch.from_numpy(rows.astype(np.int64))
    batch["pair_pos"] = torch.from_numpy(np.concatenate([ex.positions for ex in examples]))
    targets = np.concatenate([ex.targets for ex in examples])
    batch["target_row"] = torch.from_numpy(seqs.pin_row[targets])
    batch["pair_user"] = torch.from_numpy(seqs.user_ids[[ex.user for ex in examples]][rows])
    return batch


@torch.no_grad()
def embed_windows(model: PinnerFormer, pins: torch.Tensor, seqs: UserSequences, windows: list[tuple[int, int]],
                  batch_size: int = 256) -> np.ndarray:
    """User embeddings (n, D) at the last action of each window [(start, end inclusive), ...]."""
    model.eval()
    out = []
    for i in range(0, len(windows), batch_size):
        b = collate(seqs, windows[i:i + batch_size])
        emb = model(pins[b["pin_row"]], b["action"], b["surface"], b["duration"], b["timestamp"], b["valid"])
        out.append(model.last_valid(emb, b["valid"]).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.user_head.out_dim), np.float32)
