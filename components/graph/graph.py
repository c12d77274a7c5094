"""The bipartite pin-board graph in CSR form, with stable integer ids and maps back.

Pins are numbered ``0..P-1`` in ascending ``pin_id`` order and collections ``0..C-1`` in ascending
``board_id`` order; with engagement edges, each user is one more collection ("the pins this user engaged
with before the split"), numbered after the boards. Both directions are stored as CSR:

    pin_ptr  (P+1,)   pin_nbrs  (E,)   collections of pin p = pin_nbrs[pin_ptr[p]:pin_ptr[p+1]]
    coll_ptr (C+1,)   coll_nbrs (E,)   pins of collection c = coll_nbrs[coll_ptr[c]:coll_ptr[c+1]]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.data import io
from components.data.validate import load_events, load_table, pin_features


def _csr(rows: np.ndarray, cols: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(ptr (n_rows+1,), cols sorted by (row, col)) of the edge list ``rows -> cols``."""
    order = np.lexsort((cols, rows))
    ptr = np.zeros(n_rows + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=ptr[1:])
    return ptr, cols[order].astype(np.int64)


@dataclass
class PinBoardGraph:
    """A bipartite graph of P pins and C collections (boards, optionally users as engagement collections)."""

    pin_ids: np.ndarray  # (P,) int64, ascending: pin index -> pin_id
    coll_ids: np.ndarray  # (C,) int64: collection index -> board_id (boards) or user_id (users)
    num_boards: int  # collections [0, num_boards) are boards, the rest users
    pin_ptr: np.ndarray  # (P+1,)
    pin_nbrs: np.ndarray  # (E,) collection indices
    coll_ptr: np.ndarray  # (C+1,)
    coll_nbrs: np.ndarray  # (E,) pin indices

    @property
    def num_pins(self) -> int:
        return len(self.pin_ids)

    @property
    def num_collections(self) -> int:
        return len(self.coll_ids)

    @property
    def num_edges(self) -> int:
        return len(self.pin_nbrs)

    def pin_degree(self) -> np.ndarray:
        return np.diff(self.pin_ptr)

    def coll_degree(self) -> np.ndarray:
        return np.diff(self.coll_ptr)

    def pin_index(self, pin_ids: np.ndarray) -> np.ndarray:
        """pin_id -> pin index; raises KeyError naming the first unknown id."""
        pin_ids = np.asarray(pin_ids, dtype=np.int64)
        idx = np.searchsorted(self.pin_ids, pin_ids).clip(0, max(self.num_pins - 1, 0))
        bad = self.pin_ids[idx] != pin_ids
        if bad.any():
            raise KeyError(f"pin_id {int(pin_ids[bad][0])} is not a pin of the graph ({int(bad.sum())} unknown)")
        return idx

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """(pin index (E,), collection index (E,)) of every edge."""
        return np.repeat(np.arange(self.num_pins), self.pin_degree()), self.pin_nbrs

    @classmethod
    def from_edges(cls, pin_ids: np.ndarray, coll_ids: np.ndarray, edge_pin: np.ndarray, edge_coll: np.ndarray,
                   num_boards: int | None = None) -> PinBoardGraph:
        """Build from edges given as indices into ``pin_ids`` (ascending) and ``coll_ids``; duplicates dropped."""
        pin_ids = np.asarray(pin_ids, np.int64)
        if len(pin_ids) > 1 and not (np.diff(pin_ids) > 0).all():
            raise ValueError("pin_ids must be strictly ascending (stable pin indices)")
        P, C = len(pin_ids), len(coll_ids)
        edge_pin, edge_coll = np.asarray(edge_pin, np.int64), np.asarray(edge_coll, np.int64)
        if len(edge_pin) and (edge_pin.min() < 0 or edge_pin.max() >= P or edge_coll.min() < 0 or edge_coll.max() >= C):
            raise ValueError(f"edge indices out of range (pins {P}, collections {C})")
        key = np.unique(edge_pin * C + edge_coll)
        edge_pin, edge_coll = key // C, key % C
        pin_ptr, pin_nbrs = _csr(edge_pin, edge_coll, P)
        coll_ptr, coll_nbrs = _csr(edge_coll, edge_pin, C)
        return cls(pin_ids, np.asarray(coll_ids, np.int64), C if num_boards is None else num_boards,
                   pin_ptr, pin_nbrs, coll_ptr, coll_nbrs)


def build_graph(data_dir: str | Path, use_engagement_edges: bool = False, until: int | None = None) -> PinBoardGraph:
    """The pin-board graph of a data directory.

    Args:
        data_dir: a homefeed data directory (pins.parquet, pin_boards.parquet, events/).
        use_engagement_edges: add one collection per user holding the pins they engaged with (any action
            but ``hide``) before ``until``.
        until: unix seconds; defaults to ``meta.json: split_timestamp`` so evaluation events never leak in.
    """
    pin_ids, _ = pin_features(data_dir)
    order = np.argsort(pin_ids)
    pin_ids = pin_ids[order]
    pb = load_table(data_dir, "pin_boards")
    board_ids = np.unique(pb["board_id"].to_numpy())
    edge_pin = np.searchsorted(pin_ids, pb["pin_id"].to_numpy())
    bad = (edge_pin >= len(pin_ids)) | (pin_ids[edge_pin.clip(0, len(pin_ids) - 1)] != pb["pin_id"].to_numpy())
    if bad.any():
        raise ValueError(f"{Path(data_dir) / 'pin_boards.parquet'}: column pin_id has {int(bad.sum())} ids "
                         f"not in pins.parquet (first {int(pb['pin_id'].to_numpy()[bad][0])})")
    edge_coll = np.searchsorted(board_ids, pb["board_id"].to_numpy())
    coll_ids = board_ids
    if use_engagement_edges:
        until = io.read_meta(data_dir)["split_timestamp"] if until is None else until
        ev = load_events(data_dir)
        ev = ev[(ev["timestamp"] < until) & (ev["action_type"] != "hide")]
        users = np.unique(ev["user_id"].to_numpy())
        edge_pin = np.r_[edge_pin, np.searchsorted(pin_ids, ev["pin_id"].to_numpy())]
        edge_coll = np.r_[edge_coll, len(board_ids) + np.searchsorted(users, ev["user_id"].to_numpy())]
        coll_ids = np.r_[board_ids, users]
    return PinBoardGraph.from_edges(pin_ids, coll_ids, edge_pin, edge_coll, num_boards=len(board_ids))
