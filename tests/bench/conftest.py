"""Benchmark infrastructure (``make bench`` = ``pytest tests/bench``).

- Files named ``bench_*.py`` here are collected (``pytest_collect_file`` below); their test functions are
  named ``test_*`` as usual. ``make test`` / ``pytest tests`` skip this folder (tests/conftest.py).
- Fixtures:
    ``bench_record(name, result: dict)``  record one benchmark's result (JSON-able; numpy values are fine);
    ``bench_time(fn, reps=5, warmup=1)``  time a callable: ``{"median", "min", "max", "reps", "times"}`` s;
    ``bench_ratio(slow, fast)``           ratio of two timings: ``{"median", "min", "max"}`` (min = the
                                          least favourable pairing, max = the most favourable).
- At the end of the session every recorded result goes to ``out/bench.json`` and ``out/bench.md`` (a table
  per benchmark: work size, medians, min/max, ratios, and the machine: CPU model, cores, Python/torch;
  rendered by ``components.report.bench_markdown``, which ``homefeed report`` shares). A key whose name
  contains ``speedup`` or ``ratio`` is a headline ratio; a list of >= 10 numbers under a ``latency`` key
  becomes a histogram in the report.
  Results of benchmarks that did not run this time are kept from the previous file (each entry says when
  and on which machine it was measured), so running one file updates only its entries.
  ``HOMEFEED_BENCH_OUT`` changes the output folder. Each record is also written the moment it is recorded to
  ``<out>/records/<name>.json`` (standard library only), so an hour-long run keeps its figures if the session's
  final write fails.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parents[1]
_RESULTS_KEY = pytest.StashKey[dict]()
_STATUS_KEY = pytest.StashKey[dict]()


def pytest_collect_file(file_path: Path, parent):
    # a file named on the command line is collected by pytest itself (python_files does not apply then)
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_") and BENCH_DIR in file_path.parents
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


# ---------------------------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------------------------


def summarize(times: list[float]) -> dict[str, Any]:
    """Median, min, max of repeated measurements (the machine is shared: the median is the figure)."""
    if not times:
        raise ValueError("no measurements")
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "reps": len(times),
            "times": list(times)}


def time_it(fn: Callable[[], Any], reps: int = 5, warmup: int = 1) -> dict[str, Any]:
    """Call ``fn`` ``warmup`` times untimed, then ``reps`` times timed (seconds, perf_counter)."""
    if reps < 1:
        raise ValueError("reps must be >= 1")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return summarize(times)


def ratio(slow: dict[str, Any], fast: dict[str, Any]) -> dict[str, float]:
    """How many times faster ``fast`` is than ``slow`` (two :func:`time_it` results)."""
    return {"median": slow["median"] / fast["median"], "min": slow["min"] / fast["max"],
            "max": slow["max"] / fast["min"]}


# ---------------------------------------------------------------------------------------------
# Machine description and JSON conversion
# ---------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
    }
    try:
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    for dist in ("torch", "numpy", "pyarrow", "onnxruntime"):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return info


def jsonable(value: Any, where: str = "result") -> Any:
    """Plain JSON types from numpy scalars/arrays, tuples, Paths; NaN/inf become None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):  # numpy scalar or array
        return jsonable(value.tolist(), where)
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"bench_record: {where} is a {type(value).__name__}, which JSON cannot hold")


def write_outputs(records: dict[str, dict[str, Any]], out_dir: Path, status: dict[str, str]) -> dict[str, Any]:
    """Merge ``records`` into ``out_dir/bench.json`` and rewrite ``bench.md`` (both atomically)."""
    from components.data.durable import atomic_write_bytes
    from components.report import bench_markdown

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "bench.json"
    benches: dict[str, Any] = {}
    if path.exists():
        try:
            benches = json.loads(path.read_text()).get("benchmarks", {})
        except (ValueError, AttributeError):
            benches = {}
    for name, entry in records.items():
        entry = dict(entry)
        entry["status"] = status.get(entry["test"], entry.get("status", "recorded"))
        benches[name] = entry
    doc = {"command": "make bench (pytest tests/bench)",
           "updated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
           "machine": machine(), "benchmarks": dict(sorted(benches.items()))}
    atomic_write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())
    atomic_write_bytes(out_dir / "bench.md", bench_markdown(doc).encode())
    return doc


# ---------------------------------------------------------------------------------------------
# Fixtures and session hooks
# ---------------------------------------------------------------------------------------------


def pytest_configure(config):
    config.stash[_RESULTS_KEY] = {}
    config.stash[_STATUS_KEY] = {}


@pytest.fixture
def bench_record(request) -> Callable[[str, dict], None]:
    """``bench_record(name, result)``: keep ``result`` for out/bench.json and out/bench.md."""
    store = request.config.stash[_RESULTS_KEY]

    def record(name: str, result: dict) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError("bench_record: name must be a non-empty string")
        if not isinstance(result, dict):
            raise TypeError(f"bench_record({name!r}): result must be a dict, got {type(result).__name__}")
        store[name] = {"result": jsonable(result, name), "test": request.node.nodeid,
                       "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine()}
        # the raw record at once, with nothing but the standard library: a long run's figures survive a failure
        # at session end (bench.json/bench.md are written then, through components.report)
        raw = Path(os.environ.get("HOMEFEED_BENCH_OUT", REPO / "out")) / "records" / f"{name}.json"
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text(json.dumps(store[name], indent=2) + "\n")

    return record


@pytest.fixture
def bench_time() -> Callable[..., dict[str, Any]]:
    """``bench_time(fn, reps=5, warmup=1)`` -> ``{"median", "min", "max", "reps", "times"}`` in seconds."""
    return time_it


@pytest.fixture
def bench_ratio() -> Callable[[dict, dict], dict[str, float]]:
    """``bench_ratio(slow, fast)`` -> how many times faster ``fast`` is: ``{"median", "min", "max"}``."""
    return ratio


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    status = item.config.stash[_STATUS_KEY]
    if report.failed:
        status[item.nodeid] = "failed"
    elif report.skipped:
        status.setdefault(item.nodeid, "skipped")
    elif report.when == "call":
        status.setdefault(item.nodeid, "passed")
    return report


def pytest_sessionfinish(session, exitstatus):
    records = session.config.stash.get(_RESULTS_KEY, {})
    if not records:
        return
    out_dir = Path(os.environ.get("HOMEFEED_BENCH_OUT", REPO / "out"))
    write_outputs(records, out_dir, session.config.stash.get(_STATUS_KEY, {}))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"benchmarks: {len(records)} recorded -> {out_dir / 'bench.json'}, {out_dir / 'bench.md'}")
