"""What the recommend path returns, and the process-wide memory it falls back on.

:class:`Recommendation` (the response: items, fallback, versions, per-stage timings), :class:`LastGood` (the last
good user embedding per user, for the feature-store fallback), the retrieval-order fallback response, and the
command line's table.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LastGood", "Recommendation", "first_line", "format_table", "retrieval_order", "stage_ms"]


class LastGood:
    """The last good user embedding per user (bounded, shared by a process's Recommenders, thread-safe)."""

    def __init__(self, size: int = 100_000):
        self.size, self._d, self._lock = size, OrderedDict(), threading.Lock()

    def put(self, user_id: int, value: tuple[np.ndarray, str | None]) -> None:
        with self._lock:
            self._d[user_id] = value
            self._d.move_to_end(user_id)
            while len(self._d) > self.size:
                self._d.popitem(last=False)

    def get(self, user_id: int) -> tuple[np.ndarray, str | None] | None:
        with self._lock:
            return self._d.get(user_id)


@dataclass
class Recommendation:
    user_id: int
    cold_start: bool
    message: str
    items: list[dict[str, Any]]
    timings_ms: dict[str, float] = field(default_factory=dict)
    filled: dict[str, int] = field(default_factory=dict)
    fallback: str | None = None  # None: ranked by the ensemble on fresh values; else the reason
    versions: dict[str, Any] = field(default_factory=dict)
    surface: str = "homefeed"

    def to_dict(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "surface": self.surface, "fallback": self.fallback,
                "cold_start": self.cold_start, "message": self.message, "items": self.items,
                "versions": self.versions, "timings_ms": self.timings_ms, "filled_missing_values": self.filled}


def retrieval_order(user_id: int, k: int, pin_ids: np.ndarray, sims: np.ndarray, t: dict[str, float],
                    versions: dict[str, Any], surface: str, fallback: str, reason: str) -> Recommendation:
    """The top ``k`` candidates by retrieval similarity (no ranker scores), the fallback and its reason said."""
    t["feast_features"] = time.perf_counter()
    order = np.argsort(-sims, kind="stable")[:k]
    items = [{"pin_id": int(pin_ids[i]), "rank": r + 1, "score": None, "probabilities": None,
              "similarity": float(sims[i]), "retrieval_rank": int(i) + 1} for r, i in enumerate(order)]
    t["end"] = time.perf_counter()
    msg = f"{reason}: {len(items)} candidates in retrieval order"
    return Recommendation(int(user_id), False, msg, items, stage_ms(t), {}, fallback, versions, surface)


def first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


def stage_ms(t: dict[str, float]) -> dict[str, float]:
    """Milliseconds per stage from perf_counter stamps in order (``start`` .. ``end``), and ``total``."""
    keys = list(t)
    out = {b: round((t[b] - t[a]) * 1000, 3) for a, b in zip(keys, keys[1:]) if b != "end"}
    out["total"] = round((t["end"] - t["start"]) * 1000, 3)
    return out


def format_table(rec: Recommendation) -> str:
    lines = [rec.message]
    if rec.fallback:
        lines.append(f"fallback: {rec.fallback}")
    if rec.filled:
        lines.append(f"filled missing feature values: {rec.filled}")
    tasks = list(rec.items[0]["probabilities"]) if rec.items and rec.items[0]["probabilities"] else []
    lines.append("rank  pin_id      score  similarity  " + "  ".join(f"p({t})" for t in tasks))
    for it in rec.items:
        if it["probabilities"] is None:
            label = "(popular)" if it["similarity"] is None else f"(retrieval similarity {it['similarity']:.4f})"
            lines.append(f"{it['rank']:>4}  {it['pin_id']:>6}  {label}")
            continue
        probs = "  ".join(f"{it['probabilities'][t]:>{len(t) + 3}.3f}" for t in tasks)
        lines.append(f"{it['rank']:>4}  {it['pin_id']:>6}  {it['score']:>9.4f}  {it['similarity']:>10.4f}  {probs}")
    lines.append("timings (ms): " + ", ".join(f"{k}={v}" for k, v in rec.timings_ms.items()))
    return "\n".join(lines)
