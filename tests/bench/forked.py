"""Run a function in a forked child of the benchmark process (modules already imported, nothing shared after the
fork) and get its JSON-able result back through a pipe: ``wait = start(fn, *args)``, later ``wait()``.

``bench_scale`` measures each stage this way (the stage's own peak RSS, no import time), ``bench_stack`` runs the
local publish beside the server one. The child never returns to pytest (``os._exit``); its traceback comes back
as the parent's ``RuntimeError``.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable
from typing import Any


def start(what: str, fn: Callable[..., dict[str, Any]], *args: Any) -> Callable[[], dict[str, Any]]:
    """Fork; the child runs ``fn(*args)``. The returned callable waits for the child and returns its dict, or
    raises ``RuntimeError`` naming ``what`` with the child's traceback (or exit status)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            report = fn(*args)
        except BaseException:  # noqa: BLE001 - reported to the parent, which raises
            report, code = {"error": traceback.format_exc()[-4000:]}, 1
        with os.fdopen(w, "w") as f:
            f.write(json.dumps(report))
        os._exit(code)
    os.close(w)

    def wait() -> dict[str, Any]:
        with os.fdopen(r) as f:
            text = f.read()
        _, status = os.waitpid(pid, 0)
        report = json.loads(text) if text else {"error": f"exited with status {status} and no report"}
        if "error" in report or status != 0:
            raise RuntimeError(f"{what} failed:\n{report.get('error', status)}")
        return report

    return wait
