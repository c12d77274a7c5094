"""Benchmarks of the synthetic data generator (collected only by ``make bench``).

1. 1M events (experiment ``synthetic_1m``): generating the tables in memory vs writing them as day-partitioned
   Parquet (events/s for each and the write/generate ratio); the issue asks for well under a minute.
2. The vectorised generator vs a per-event Python reference of the same event process (sessions, drifting
   interests, exploration, popularity-weighted pins within a topic, action types, durations, surfaces) on
   the same small configuration: events/s and the speed-up. The vectorised time is the whole ``generate``
   (pins, boards and impressions too), so the ratio understates the event loop's speed-up.
"""

from __future__ import annotations

import bisect
import math
import random

import numpy as np

from components import config
from components.data import synthetic
from components.data.prepare import write_dataset
from components.data.schemas import ACTION_TYPES, SURFACES

REPS = 3


def reference_events(cfg, seed: int = 0) -> list[tuple]:
    """The event process of ``synthetic.generate`` written one event at a time in plain Python."""
    rnd = random.Random(seed)
    T, P, U = cfg.topics, cfg.pins, cfg.users
    topic_w = [1 / math.sqrt(t + 1) for t in range(T)]
    pin_topic = rnd.choices(range(T), weights=topic_w, k=P)
    pin_pop = [rnd.lognormvariate(0.0, 1.0) for _ in range(P)]
    by_topic: list[list[int]] = [[] for _ in range(T)]
    for p, t in enumerate(pin_topic):
        by_topic[t].append(p)
    cum: list[list[float]] = []
    for pins in by_topic:
        acc, c = 0.0, []
        for p in pins:
            acc += pin_pop[p]
            c.append(acc)
        cum.append(c)
    span = cfg.days * 86_400
    k = min(cfg.interests_per_user, T)
    p_in, p_ex = [0.25, 0.35, 0.3, 0.1], [0.03, 0.12, 0.45, 0.4]
    mu = [[math.log(6), math.log(18), math.log(12), 0.0], [math.log(3), math.log(5), math.log(3), 0.0]]
    out = []
    for user in range(U):
        interests = rnd.sample(range(T), k)
        w = [rnd.gammavariate(1.0, 1.0) for _ in range(k)]
        weights = [x / sum(w) for x in w]
        drift_t = synthetic.START_TS + rnd.randrange(span // 4, 3 * span // 4) if rnd.random() < cfg.drift_prob \
            else None
        after_interests = list(interests)
        after_interests[rnd.randrange(k)] = rnd.randrange(T)
        n_ev = max(2, int(rnd.lognormvariate(math.log(cfg.events_per_user) - 0.32, 0.8)))
        sessions = [synthetic.START_TS + rnd.randrange(span - 3600) for _ in range(max(1, n_ev // 6))]
        times = sorted(min(rnd.choice(sessions) + int(rnd.expovariate(1 / 600)), synthetic.START_TS + span - 1)
                       for _ in range(n_ev))
        for ts in times:
            cur = after_interests if drift_t is not None and ts >= drift_t else interests
            topic = rnd.choices(cur, weights=weights)[0]
            explore = rnd.random() < 0.15
            if explore:
                topic = rnd.randrange(T)
            if not by_topic[topic]:
                continue
            c = cum[topic]
            pin = by_topic[topic][min(bisect.bisect_right(c, rnd.random() * c[-1]), len(c) - 1)]
            act = rnd.choices(range(4), weights=p_ex if explore else p_in)[0]
            dur = rnd.lognormvariate(mu[int(explore)][act], 0.8)
            surface = rnd.choices(SURFACES, weights=synthetic.SURFACE_P)[0]
            out.append((user + 1, pin + 1, ACTION_TYPES[act], surface, ts, dur))
    return out


def test_bench_generate_vs_write_1m_events(tmp_path, bench_record, bench_time, bench_ratio):
    cfg = config.load("synthetic_1m")
    tables = synthetic.generate(cfg)
    n_events, n_imp = len(tables["events"]), len(tables["impressions"])
    gen = bench_time(lambda: synthetic.generate(cfg), reps=REPS, warmup=0)
    out = tmp_path / "d"
    write = bench_time(lambda: write_dataset(out, tables, progress=False), reps=REPS, warmup=0)
    result = {
        "events": n_events, "impressions": n_imp, "users": cfg.users, "pins": cfg.pins, "days": cfg.days,
        "generate_s": gen, "write_s": write,
        "generate_events_per_s": n_events / gen["median"], "write_events_per_s": n_events / write["median"],
        "ratio_write_to_generate": bench_ratio(write, gen),
    }
    bench_record("data.synthetic_1m_generate_vs_write", result)
    print({k: v for k, v in result.items() if not isinstance(v, dict)})
    assert n_events > 900_000
    assert gen["median"] < 60, "1M events must generate in well under a minute"


def test_bench_vectorised_vs_per_event_reference(bench_record, bench_time, bench_ratio):
    cfg = config.load("synthetic", {"users": 1000, "pins": 4000, "boards": 400})
    vec_events = len(synthetic.generate(cfg)["events"])
    ref = reference_events(cfg)
    vec = bench_time(lambda: synthetic.generate(cfg), reps=REPS, warmup=0)
    slow = bench_time(lambda: reference_events(cfg), reps=REPS, warmup=0)
    per_event_vec = {k: v / vec_events for k, v in vec.items() if k in ("median", "min", "max")}
    per_event_ref = {k: v / len(ref) for k, v in slow.items() if k in ("median", "min", "max")}
    # the two processes draw comparable data: same action mix within a few points
    mix_vec = synthetic.generate(cfg)["events"]["action_type"].value_counts(normalize=True)
    mix_ref = {a: sum(1 for e in ref if e[2] == a) / len(ref) for a in ACTION_TYPES}
    mix_gap = max(abs(mix_vec.get(a, 0.0) - mix_ref[a]) for a in ACTION_TYPES)
    result = {
        "users": cfg.users, "pins": cfg.pins, "events_vectorised": vec_events, "events_reference": len(ref),
        "vectorised_s": vec, "reference_s": slow,
        "vectorised_events_per_s": vec_events / vec["median"], "reference_events_per_s": len(ref) / slow["median"],
        "speedup_vectorised": bench_ratio(per_event_ref, per_event_vec),
        "action_mix_max_gap": mix_gap,
        "note": "vectorised time includes pins, boards and impressions; the reference makes events only",
    }
    bench_record("data.vectorised_vs_per_event_reference", result)
    print({k: v for k, v in result.items() if not isinstance(v, dict)})
    assert abs(len(ref) / vec_events - 1) < 0.2 and mix_gap < 0.05
    assert np.isfinite(result["speedup_vectorised"]["median"])
