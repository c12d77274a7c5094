"""The summary of a validated data directory (``homefeed data validate`` / ``prepare`` print it): table sizes, the
events' date range, split and action/surface mix. :func:`components.data.validate.validate_dir` gathers the events'
counts a partition at a time (:class:`EventStats`), so the summary never needs the whole log in memory.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from components.data import io


class EventStats:
    """What the summary needs of the events (rows, first and last timestamp, action and surface counts, events
    from the split on), gathered a partition at a time."""

    def __init__(self) -> None:
        self.rows, self.eval = 0, 0
        self.first: int | None = None
        self.last: int | None = None
        self.counts: dict[str, dict[str, int]] = {"action_type": {}, "surface": {}}

    def add(self, ev: pa.Table, split: int | None = None) -> None:
        ts = ev.column("timestamp").to_numpy()
        if not len(ts):
            return
        self.rows += len(ts)
        self.first = int(ts.min()) if self.first is None else min(self.first, int(ts.min()))
        self.last = int(ts.max()) if self.last is None else max(self.last, int(ts.max()))
        for col, counts in self.counts.items():
            for row in pc.value_counts(ev.column(col)).to_pylist():
                counts[row["values"]] = counts.get(row["values"], 0) + row["counts"]
        if split is not None:
            self.eval += int((ts >= split).sum())

    def mix(self, col: str) -> dict[str, float]:
        """Share of each value of ``col``, most frequent first."""
        ranked = sorted(self.counts[col].items(), key=lambda kv: -kv[1])
        return {k: round(float(v) / self.rows, 4) for k, v in ranked}


def summarize(tables: dict[str, pa.Table], meta: dict | None = None,
              events: EventStats | None = None) -> dict[str, object]:
    """Counts, date range, split and the action/surface mix of a validated directory. ``events``: the events'
    counts when ``tables`` does not hold the events (:func:`validate_dir` gathers them a partition at a time)."""
    if events is None:
        events = EventStats()
        events.add(tables["events"], meta["split_timestamp"] if meta else None)
    return {
        "users": int(tables["users"].num_rows),
        "pins": int(tables["pins"].num_rows),
        "boards": int(tables["boards"].num_rows),
        "events": events.rows,
        "impressions": int(tables["impressions"].num_rows),
        "first_day": str(io.day_of(events.first)),
        "last_day": str(io.day_of(events.last)),
        "action_mix": events.mix("action_type"),
        "surface_mix": events.mix("surface"),
        **({"dataset": meta["dataset"], "split_day": str(io.day_of(meta["split_timestamp"])),
            "eval_events": events.eval} if meta else {}),
    }
