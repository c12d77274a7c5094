"""Progress bars for long loops: one helper for every layer.

Training steps, embedding batches, Milvus inserts and materialisation all report progress the same way,
through `progress(iterable, ...)` or the `Progress(total, desc)` context manager. tqdm draws the bar on
stderr. The bar is off when stderr is not a terminal (CI, log files, the pipeline runner's captured
output) or when `HOMEFEED_QUIET=1`, so logs never fill with carriage-return frames. `HOMEFEED_PROGRESS=1`
forces bars on (e.g. a demo that owns the terminal but whose steps run in a subprocess).

Bottom layer: imports nothing from components.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

QUIET_ENV = "HOMEFEED_QUIET"
FORCE_ENV = "HOMEFEED_PROGRESS"


def enabled() -> bool:
    """True when a bar should be drawn: not quiet, and stderr is a terminal (or bars are forced)."""
    if os.environ.get(QUIET_ENV, "") not in ("", "0"):
        return False
    if os.environ.get(FORCE_ENV, "") not in ("", "0"):
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return False


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """Yield the items of `iterable` while drawing a bar (when enabled); `total` defaults to len()."""
    if not enabled():
        yield from iterable
        return
    bar = tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, file=sys.stderr)
    try:
        yield from bar
    finally:
        bar.close()


class Progress:
    """A bar advanced by hand: `with Progress(total=n, desc="insert") as p: ... p.update(k)`.

    Use it where work comes in chunks of varying size (rows inserted, rows materialised). When bars are
    disabled `update` only counts, so `n` is always the amount of work done.
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it"):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = 0
        self._bar: tqdm | None = None

    def __enter__(self) -> Progress:
        if enabled():
            self._bar = tqdm(total=self.total, desc=self.desc, unit=self.unit, leave=False, file=sys.stderr)
        return self

    def update(self, n: int = 1) -> None:
        """Record `n` more units of work done."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __exit__(self, *exc: object) -> None:
        self.close()
