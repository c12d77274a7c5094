"""Count-min sketch: estimates bound the exact counts from above and stay within eps * N w.p. 1 - delta."""

from __future__ import annotations

import math

import numpy as np
import pytest

from components.training.countmin import CountMinSketch


def _zipf_stream(n: int, items: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, items + 1) ** 1.1
    return rng.choice(np.arange(items) * 7919 + 13, size=n, p=p / p.sum())  # scattered int64 keys


def test_upper_bound_and_error_bound():
    eps, delta = 0.005, 0.01
    sketch = CountMinSketch.from_error(eps, delta, seed=3)
    assert sketch.width == math.ceil(math.e / eps) and sketch.depth == math.ceil(math.log(1 / delta))
    stream = _zipf_stream(200_000, 5_000, seed=1)
    for chunk in np.array_split(stream, 17):  # streaming updates
        sketch.add(chunk)
    keys, exact = np.unique(stream, return_counts=True)
    est = sketch.estimate(keys)
    n = len(stream)
    assert sketch.total == n
    assert (est >= exact).all(), "a count-min estimate fell below the exact count"
    within = (est - exact) <= eps * n
    # each key violates the bound with probability <= delta; allow sampling slack (binomial, 5 sigma)
    k = len(keys)
    allowed = delta * k + 5 * math.sqrt(delta * (1 - delta) * k)
    assert (~within).sum() <= allowed, f"{(~within).sum()} of {k} keys exceed eps*N (allowed {allowed:.1f})"
    # the sketch is not trivially exact either: with many keys some estimates overcount
    assert (est > exact).any()


def test_weighted_add_state_roundtrip_and_errors():
    s = CountMinSketch(64, 3, seed=0)
    s.add(np.array([5, 6, 5]), np.array([2, 1, 3]))
    assert s.estimate(np.array([5]))[0] >= 5 and s.total == 6
    t = CountMinSketch(1, 1)
    t.load_state_dict(s.state_dict())
    np.testing.assert_array_equal(t.estimate(np.array([5, 6, 7])), s.estimate(np.array([5, 6, 7])))
    assert s.probability(np.array([5]))[0] == pytest.approx(s.estimate(np.array([5]))[0] / 6)
    with pytest.raises(ValueError, match="width and depth"):
        CountMinSketch(0, 2)
    with pytest.raises(ValueError, match="counts must be >= 0"):
        s.add(np.array([1]), -1)
