"""Progress bars for long loops: one helper for every layer.

Training steps, embedding batches, Milvus inserts and materialisation all report progress the same way,
through `progress(iterable, ...)` or the `Progress(total, desc)` context manager. tqdm draws the bar on
stderr. The bar is off when stderr is not a terminal (CI, log files, the pipeline runner's captured
output) or when `HOMEFEED_QUIET=1`, so logs never fill with carriage-return frames. `HOMEFEED_PROGRESS=1`
forces bars on (e.g. a demo that owns the terminal but whose steps run in a subprocess).

Bottom layer: imports nothing from components.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")

QUIET_ENV = "HOMEFEED_QUIET"
FORCE_ENV = "HOMEFEED_PROGRESS"
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colour codes


def enabled(file: TextIO | None = None) -> bool:
    """True when a bar should be drawn: not quiet, and `file` (default stderr) is a terminal (or bars are
    forced)."""
    if os.environ.get(QUIET_ENV, "") not in ("", "0"):
        return False
    if os.environ.get(FORCE_ENV, "") not in ("", "0"):
        return True
    try:
        return (file or sys.stderr).isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
             file: TextIO | None = None) -> Iterator[T]:
    """Yield the items of `iterable` while drawing a bar on `file` (default stderr) when enabled; `total`
    defaults to len()."""
    if not enabled(file):
        yield from iterable
        return
    bar = tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, file=file or sys.stderr)
    try:
        yield from bar
    finally:
        bar.close()


class Progress:
    """A bar advanced by hand: `with Progress(total=n, desc="insert") as p: ... p.update(k)`.

    Use it where work comes in chunks of varying size (rows inserted, rows materialised). When bars are
    disabled `update` only counts, so `n` is always the amount of work done.
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", file: TextIO | None = None):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.file = file
        self.n = 0
        self._bar: tqdm | None = None

    def __enter__(self) -> Progress:
        if enabled(self.file):
            self._bar = tqdm(total=self.total, desc=self.desc, unit=self.unit, leave=False,
                             file=self.file or sys.stderr)
        return self

    def set_total(self, total: int) -> None:
        """Set the total once it is known (e.g. from the first callback of a library call)."""
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def set_description(self, desc: str) -> None:
        """Change the text in front of the bar (e.g. the task now running)."""
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description_str(desc)

    def write(self, line: str) -> None:
        """Print a line above the bar without breaking it (plain print when there is no bar)."""
        out = self.file or sys.stderr
        if self._bar is not None:
            self._bar.write(line, file=out)
        else:
            print(line, file=out, flush=True)

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


@contextlib.contextmanager
def prints_to_log(logger: logging.Logger, what: str) -> Iterator[None]:
    """Send what a library ``print``s inside the block (progress chatter it has no switch for, e.g. Feast's
    materialize) to ``logger`` at DEBUG as one record, colour codes stripped, so the terminal shows only our bars.
    It swaps the process-wide ``sys.stdout``: for steps and commands, not for a serving thread."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        text = " ".join(ANSI.sub("", buf.getvalue()).split())
        if text:
            logger.debug("%s: %s", what, text)
