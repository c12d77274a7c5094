"""components.progress: bars on a terminal, silence elsewhere, the same items and counts either way."""

import fcntl
import io
import os
import pty
import struct
import sys
import termios

import pytest

from components import progress as P


@pytest.fixture
def tty_stderr(monkeypatch):
    """Yield `attach()`: it points sys.stderr at the slave end of a real pseudo-terminal (inside the test
    body, since pytest's capture resets sys.stderr between phases) and returns a reader of what it shows."""
    master, slave = pty.openpty()
    # a fresh pty is 0x0; give it a real terminal's size (tqdm sizes the bar from sys.stderr's terminal)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    term = os.fdopen(slave, "w", buffering=1)
    monkeypatch.delenv(P.QUIET_ENV, raising=False)
    monkeypatch.delenv(P.FORCE_ENV, raising=False)

    def read() -> str:
        term.flush()
        os.set_blocking(master, False)
        chunks = []
        try:
            while True:
                chunk = os.read(master, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except BlockingIOError:
            pass
        return b"".join(chunks).decode(errors="replace")

    def attach():
        monkeypatch.setattr(sys, "stderr", term)
        return read

    yield attach
    term.close()
    os.close(master)


def test_bar_drawn_on_a_terminal(tty_stderr):
    read = tty_stderr()
    assert P.enabled()
    assert list(P.progress(range(5), desc="embed pins")) == [0, 1, 2, 3, 4]
    shown = read()
    assert "embed pins" in shown and "0/5" in shown  # leave=False: the finished bar is erased


def test_quiet_env_disables_bar_on_a_terminal(tty_stderr, monkeypatch):
    read = tty_stderr()
    monkeypatch.setenv(P.QUIET_ENV, "1")
    assert not P.enabled()
    assert list(P.progress(iter("abc"), total=3, desc="quiet")) == ["a", "b", "c"]
    with P.Progress(total=10, desc="quiet too") as p:
        p.update(4)
        p.update(6)
    assert p.n == 10
    assert read() == ""


def test_not_a_terminal_is_silent(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    monkeypatch.delenv(P.QUIET_ENV, raising=False)
    monkeypatch.delenv(P.FORCE_ENV, raising=False)
    assert not P.enabled()
    assert sum(P.progress(range(100), desc="log")) == sum(range(100))
    with P.Progress(total=3, desc="insert") as p:
        for _ in range(3):
            p.update()
    assert p.n == 3
    assert buf.getvalue() == ""


def test_force_env_draws_bar_without_a_terminal(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    monkeypatch.delenv(P.QUIET_ENV, raising=False)
    monkeypatch.setenv(P.FORCE_ENV, "1")
    with P.Progress(total=8, desc="materialize", unit="rows") as p:
        p.update(8)
    assert "materialize" in buf.getvalue() and "0/8" in buf.getvalue()


def test_progress_stops_cleanly_on_break(tty_stderr):
    read = tty_stderr()
    seen = []
    for i in P.progress(range(1000), desc="train"):
        seen.append(i)
        if i == 2:
            break
    assert seen == [0, 1, 2]
    assert "train" in read()


def test_progress_on_a_given_stream_and_write_above_the_bar(tty_stderr, monkeypatch):
    read = tty_stderr()
    term = sys.stderr
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # the default stream is not a terminal...
    with P.Progress(desc="pipeline", file=term) as p:  # ...but the given one is
        p.set_total(2)
        p.set_description("train-pinsage")
        p.update()
        p.write("[00:01] prepare-data done")
    shown = read()
    assert "train-pinsage" in shown and "1/2" in shown and "[00:01] prepare-data done" in shown
    buf = io.StringIO()
    with P.Progress(total=1, file=buf) as p:
        p.write("a plain line")
    assert buf.getvalue() == "a plain line\n"
