"""Count-min sketch (Cormode & Muthukrishnan, 2005): streaming item counts in fixed memory.

PinnerFormer estimates each pin's sampling probability Q for the logQ correction of its sampled
softmax with such a sketch, updated with every batch's positives.

A sketch of ``depth`` rows of ``width`` counters, one pairwise-independent hash per row
(h_j(x) = ((a_j x + b_j) mod p) mod width, p a Mersenne prime). ``add`` increments one counter
per row; ``estimate`` is the minimum over rows. For a stream of total count N:

    count(x) <= estimate(x) <= count(x) + eps * N   with probability >= 1 - delta,
    eps = e / width,  delta = exp(-depth).
"""

from __future__ import annotations

import math

import numpy as np
import torch

_PRIME = (1 << 31) - 1  # Mersenne prime 2^31 - 1; products of two values < 2^31 fit in uint64


class CountMinSketch:
    """Approximate counts of int64 keys.

    Args:
        width: counters per row (eps = e / width).
        depth: rows (delta = exp(-depth)).
        seed: seeds the hash functions.
    """

    def __init__(self, width: int, depth: int, seed: int = 0):
        if width < 1 or depth < 1:
            raise ValueError(f"CountMinSketch: width and depth must be >= 1, got width={width}, depth={depth}")
        rng = np.random.default_rng(seed)
        self.width = int(width)
        self.depth = int(depth)
        self.a = rng.integers(1, _PRIME, size=depth, dtype=np.uint64)
        self.b = rng.integers(0, _PRIME, size=depth, dtype=np.uint64)
        self.table = np.zeros((depth, width), np.int64)
        self.total = 0

    @classmethod
    def from_error(cls, eps: float, delta: float, seed: int = 0) -> CountMinSketch:
        """The smallest sketch with error <= eps * N with probability >= 1 - delta."""
        return cls(math.ceil(math.e / eps), math.ceil(math.log(1.0 / delta)), seed)

    @property
    def eps(self) -> float:
        return math.e / self.width

    @property
    def delta(self) -> float:
        return math.exp(-self.depth)

    def _buckets(self, keys: np.ndarray) -> np.ndarray:
        x = (np.asarray(keys, dtype=np.int64).astype(np.uint64) % np.uint64(_PRIME))  # (K,)
        h = (self.a[:, None] * x[None, :] + self.b[:, None]) % np.uint64(_PRIME)  # (depth, K)
        return (h % np.uint64(self.width)).astype(np.int64)

    def add(self, keys: np.ndarray, counts: np.ndarray | int = 1) -> None:
        keys = np.asarray(keys).reshape(-1)
        counts = np.broadcast_to(np.asarray(counts, dtype=np.int64), keys.shape)
        if (counts < 0).any():
            raise ValueError("CountMinSketch.add: counts must be >= 0")
        buckets = self._buckets(keys)
        for row in range(self.depth):
            np.add.at(self.table[row], buckets[row], counts)
        self.total += int(counts.sum())

    def estimate(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys).reshape(-1)
        buckets = self._buckets(keys)
        return self.table[np.arange(self.depth)[:, None], buckets].min(axis=0)  # (K,)

    def probability(self, keys: np.ndarray) -> np.ndarray:
        """Estimated share of the stream, estimate / N (0 before anything was added)."""
        return self.estimate(keys) / max(self.total, 1)

    def state_dict(self) -> dict:
        """Plain ints and int64 tensors (hash parameters are < 2^31), so checkpoints load with weights_only."""
        return {"width": self.width, "depth": self.depth, "a": torch.from_numpy(self.a.astype(np.int64)),
                "b": torch.from_numpy(self.b.astype(np.int64)), "table": torch.from_numpy(self.table.copy()),
                "total": int(self.total)}

    def load_state_dict(self, state: dict) -> None:
        self.width, self.depth = int(state["width"]), int(state["depth"])
        a, b, table = (torch.as_tensor(state[k]).numpy() for k in ("a", "b", "table"))
        self.a, self.b = a.astype(np.uint64), b.astype(np.uint64)
        self.table, self.total = table.astype(np.int64, copy=True), int(state["total"])
