"""EvalResult: statistics, paired orderings, undefined metrics, writer and reader round trip."""

from __future__ import annotations

import datetime as dt
import json
import math
import re

import pytest

from components.evaluation.result import EvalResult, PaperNumber, Stat, read_results, t975, to_markdown, write_result


def _result() -> EvalResult:
    r = EvalResult(model="toy", dataset="hand", command="homefeed eval toy", protocol={"split": "time", "seeds": [0, 1, 2]},
                   metrics={"mrr": "higher", "auc": "higher", "train_seconds": "lower"})
    for seed, (a, b) in enumerate([(0.30, 0.20), (0.32, 0.21), (0.31, 0.25)]):
        r.add("A", seed, mrr=a, auc=float("nan"), train_seconds=2.0 + 0.1 * seed)
        r.add("B", seed, mrr=b, auc=0.5, train_seconds=1.0)
    return r


def test_stat_mean_std_t_interval():
    s = Stat.of([1.0, 2.0, 3.0, None])
    assert (s.mean, s.n) == (2.0, 3)
    assert s.std == pytest.approx(1.0)
    assert s.ci_low == pytest.approx(2.0 - 4.303 / math.sqrt(3))
    assert s.ci_high == pytest.approx(2.0 + 4.303 / math.sqrt(3))
    assert Stat.of([0.4]).std is None and Stat.of([]).mean is None
    assert t975(1) == 12.706 and t975(100) == 1.96


def test_undefined_metrics_are_none_not_nan():
    r = _result()
    assert r.values("A", "auc") == {0: None, 1: None, 2: None}
    assert r.stat("A", "auc").mean is None
    assert "undefined" in to_markdown(r) and "nan" not in to_markdown(r).lower()


def test_paired_comparison_and_direction():
    r = _result()
    c = r.compare("A", "B", "mrr")
    # paired differences 0.10, 0.11, 0.06: mean 0.09, CI above zero
    assert c.diff_mean == pytest.approx(0.09) and c.n == 3 and c.verdict == "holds" and c.holds
    assert r.compare("B", "A", "mrr").verdict == "reversed"
    # lower is better for train_seconds: B (1 s) beats A (2.0-2.2 s)
    assert r.compare("B", "A", "train_seconds").verdict == "holds"
    assert r.compare("A", "B", "auc").verdict == "undefined"
    assert r.best("mrr") == "A" and r.best("train_seconds") == "B" and r.best("auc") == "B"


def test_declared_metrics_and_directions_are_checked():
    r = _result()
    with pytest.raises(ValueError, match="'recall' .*not declared|not declared"):
        r.add("A", 0, recall=0.1)
    with pytest.raises(ValueError, match="direction 'up'"):
        EvalResult(model="m", dataset="d", command="", protocol={}, metrics={"x": "up"})
    with pytest.raises(ValueError, match="no variant 'C'"):
        r.compare("A", "C", "mrr")


def test_write_and_read_round_trip(tmp_path):
    r = _result()
    r.compare("A", "B", "mrr")
    r.papers.append(PaperNumber("arXiv 0000.0000", "A", "mrr", 0.5, "other data", protocol_matches=False))
    path = write_result(r, tmp_path)
    assert path.name == "toy_hand.json" and (tmp_path / "toy_hand.md").exists()
    (tmp_path / "bench.json").write_text(json.dumps({"not": "a result"}))  # skipped by the reader
    [back] = read_results(tmp_path)
    assert back.to_dict() == r.to_dict()
    md = (tmp_path / "toy_hand.md").read_text()
    assert "| A > B | mrr |" in md and "holds" in md and "different protocol" in md
    d = json.loads(path.read_text())
    assert d["summary"]["A"]["mrr"]["mean"] == pytest.approx(0.31) and d["metrics"]["train_seconds"] == "lower"
    # created_at: this run's UTC time, RFC 3339 to the second
    created = dt.datetime.fromisoformat(d["created_at"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", d["created_at"])
    assert abs(dt.datetime.now(dt.UTC) - created) < dt.timedelta(hours=1)
