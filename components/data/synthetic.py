"""A seeded generator of Pinterest-shaped data with planted structure.

- ``topics`` topics with Zipf-like sizes; each pin has one topic and a log-normal popularity.
- content features = a weak topic signal plus noise (``feature_noise``): content alone says little,
  the graph says more, so PinSage has something to learn over content-only features.
- boards: mostly one topic (``board_purity``), pins drawn by popularity.
- users: a few interests with Dirichlet weights; with ``drift_prob`` one interest is replaced at a
  random time (interests drift). Activity is log-normal.
- events come in sessions; in-interest events are mostly positive (repin, long closeups and clicks),
  exploration events mostly short clicks and hides. Surfaces: homefeed, related, search.
- impressions: requests of ``impressions_per_request`` pins, half from the user's current interests;
  each label's logit depends on the user-pin affinity times a surface-specific weight, plus a surface
  bias, so multi-domain gates (EPNet) have something to learn.
- ``ground_truth``: pin and board topics, user interests before/after drift and the drift time.

Everything is vectorised numpy; 1M events generate in seconds (``tests/bench/``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from components.config import ConfigError, DataConfig
from components.data.schemas import ACTION_TYPES, SURFACES, TASKS

START_TS = 1_704_067_200  # 2024-01-01 00:00:00 UTC
SURFACE_P = np.array([0.6, 0.25, 0.15])
# per-task (intercept, affinity weight per surface, surface bias per surface)
LABEL_MODEL = {
    "save": (-2.6, np.array([2.5, 0.8, 3.5]), np.array([0.0, -0.3, 0.2])),
    "closeup": (-1.8, np.array([1.5, 2.8, 0.8]), np.array([0.0, 0.3, -0.2])),
    "click": (-1.4, np.array([0.6, 2.0, 3.0]), np.array([0.0, 0.2, 0.5])),
    "hide": (-2.2, np.array([-2.5, -0.5, -1.2]), np.array([0.0, -0.2, 0.1])),
}
assert tuple(LABEL_MODEL) == TASKS


def _sample_in_topic(rng: np.random.Generator, topics: np.ndarray, pin_topic: np.ndarray,
                     pin_pop: np.ndarray, n_topics: int) -> np.ndarray:
    """For each entry of ``topics``, a pin of that topic drawn proportionally to popularity."""
    order = np.argsort(pin_topic, kind="stable")
    cum = np.cumsum(pin_pop[order])
    counts = np.bincount(pin_topic, minlength=n_topics)
    ends = np.cumsum(counts)
    starts = ends - counts
    lo = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
    hi = cum[np.maximum(ends - 1, 0)]
    u = rng.random(len(topics))
    target = lo[topics] + u * (hi[topics] - lo[topics])
    pos = np.searchsorted(cum, target, side="right")
    pos = np.clip(pos, starts[topics], np.maximum(ends[topics] - 1, starts[topics]))
    return order[pos]


def generate(cfg: DataConfig) -> dict[str, object]:
    rng = np.random.default_rng(cfg.seed)
    T, P, U, B, F = cfg.topics, cfg.pins, cfg.users, cfg.boards, cfg.feature_dim
    small = {k: v for k, v in {"topics": T, "pins": P, "users": U, "boards": B, "feature_dim": F}.items() if v <= 0}
    if small:
        raise ConfigError(f"synthetic data: {', '.join(f'{k}={v}' for k, v in small.items())}; expected > 0")
    if cfg.days <= cfg.eval_days:
        raise ConfigError(f"synthetic data: days={cfg.days} must be greater than eval_days={cfg.eval_days} "
                          "(the last eval_days days are held out)")
    topic_w = 1.0 / np.sqrt(np.arange(1, T + 1))
    topic_w /= topic_w.sum()

    # ---- pins ------------------------------------------------------------------------------------
    pin_topic = rng.choice(T, P, p=topic_w)
    pin_topic[:T] = np.arange(T) if P >= T else pin_topic[:T]  # every topic has a pin
    pin_pop = rng.lognormal(0.0, 1.0, P)
    centroids = rng.normal(size=(T, F)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    feats = centroids[pin_topic] + rng.normal(scale=cfg.feature_noise / np.sqrt(F), size=(P, F)).astype(np.float32)
    feats = feats.astype(np.float32)
    category = np.where(rng.random(P) < 0.7, pin_topic, rng.integers(0, T, P))
    pin_ids = np.arange(1, P + 1, dtype=np.int64)
    pins = pd.DataFrame({"pin_id": pin_ids, "features": list(feats), "s_category": category.astype(np.int64)})

    # ---- boards ----------------------------------------------------------------------------------
    board_topic = rng.choice(T, B, p=topic_w)
    sizes = 4 + rng.geometric(1 / 12, B)
    edge_board = np.repeat(np.arange(B), sizes)
    own = rng.random(len(edge_board)) < cfg.board_purity
    edge_topic = np.where(own, board_topic[edge_board], rng.integers(0, T, len(edge_board)))
    edge_pin = _sample_in_topic(rng, edge_topic, pin_topic, pin_pop, T)
    # every pin in at least one board: attach orphans to a board of their topic
    orphans = np.setdiff1d(np.arange(P), edge_pin)
    if len(orphans):
        by_topic = [np.flatnonzero(board_topic == t) for t in range(T)]
        ob = np.array([rng.choice(by_topic[t]) if len(by_topic[t]) else rng.integers(0, B)
                       for t in pin_topic[orphans]])
        edge_board = np.r_[edge_board, ob]
        edge_pin = np.r_[edge_pin, orphans]
    pin_boards = pd.DataFrame({"board_id": edge_board + 1, "pin_id": edge_pin + 1}).drop_duplicates()
    pin_boards = pin_boards.astype(np.int64).sort_values(["board_id", "pin_id"]).reset_index(drop=True)
    boards = pd.DataFrame({"board_id": np.arange(1, B + 1, dtype=np.int64),
                           "name": [f"board-{b}-topic-{t}" for b, t in enumerate(board_topic, 1)],
                           "kind": "user"})

    # ---- users and interests ---------------------------------------------------------------------
    k = max(1, min(cfg.interests_per_user, T))
    interests = np.stack([rng.choice(T, k, replace=False, p=topic_w) for _ in range(U)])  # (U, k)
    weights = rng.dirichlet(np.ones(k), U)
    drifts = rng.random(U) < cfg.drift_prob
    span = cfg.days * 86_400
    drift_time = np.where(drifts, START_TS + rng.integers(span // 4, 3 * span // 4, U), np.iinfo(np.int64).max)
    drift_slot = rng.integers(0, k, U)
    new_topic = rng.integers(0, T, U)
    interests_after = interests.copy()
    interests_after[np.arange(U), drift_slot] = np.where(drifts, new_topic, interests[np.arange(U), drift_slot])
    user_ids = np.arange(1, U + 1, dtype=np.int64)
    users = pd.DataFrame({"user_id": user_ids,
                          "s_segment": rng.integers(0, 8, U).astype(np.int64),
                          "s_top_interest": interests[np.arange(U), weights.argmax(1)].astype(np.int64)})

    # ---- events ----------------------------------------------------------------------------------
    n_ev = np.maximum(2, rng.lognormal(np.log(cfg.events_per_user) - 0.32, 0.8, U).astype(np.int64))
    E = int(n_ev.sum())
    ev_user = np.repeat(np.arange(U), n_ev)
    n_sess = np.maximum(1, n_ev // 6)
    sess_start = START_TS + rng.integers(0, span - 3600, int(n_sess.sum()))
    sess_base = np.r_[0, np.cumsum(n_sess)[:-1]]
    ev_sess = sess_base[ev_user] + (rng.random(E) * n_sess[ev_user]).astype(np.int64)
    ev_ts = sess_start[ev_sess] + rng.exponential(600.0, E).astype(np.int64)
    ev_ts = np.minimum(ev_ts, START_TS + span - 1)
    order = np.lexsort((ev_ts, ev_user))
    ev_user, ev_ts = ev_user[order], ev_ts[order]
    after = ev_ts >= drift_time[ev_user]
    slot = (rng.random(E)[:, None] > np.cumsum(weights[ev_user], axis=1)).sum(1).clip(0, k - 1)
    topic_now = np.where(after, interests_after[ev_user, slot], interests[ev_user, slot])
    explore = rng.random(E) < 0.15
    ev_topic = np.where(explore, rng.integers(0, T, E), topic_now)
    ev_pin = _sample_in_topic(rng, ev_topic, pin_topic, pin_pop, T)
    in_interest = ~explore
    p_in = np.array([0.25, 0.35, 0.3, 0.1])
    p_ex = np.array([0.03, 0.12, 0.45, 0.4])
    u = rng.random(E)
    act = np.where(in_interest, np.searchsorted(np.cumsum(p_in), u), np.searchsorted(np.cumsum(p_ex), u)).clip(0, 3)
    mu = np.array([[np.log(6), np.log(18), np.log(12), np.log(1)],
                   [np.log(3), np.log(5), np.log(3), np.log(1)]])
    dur = rng.lognormal(mu[(~in_interest).astype(int), act], 0.8).astype(np.float32)
    surface = np.searchsorted(np.cumsum(SURFACE_P), rng.random(E)).clip(0, 2)
    events = pd.DataFrame({
        "user_id": user_ids[ev_user],
        "pin_id": pin_ids[ev_pin],
        "action_type": np.array(ACTION_TYPES)[act],
        "surface": np.array(SURFACES)[surface],
        "timestamp": ev_ts.astype(np.int64),
        "duration_s": dur,
    })

    # ---- impressions -----------------------------------------------------------------------------
    R = max(1, int(U * cfg.days * cfg.requests_per_user_day / 10))
    K = cfg.impressions_per_request
    activity = n_ev / n_ev.sum()
    rq_user = rng.choice(U, R, p=activity)
    rq_ts = START_TS + rng.integers(0, span, R)
    rq_surface = np.searchsorted(np.cumsum(SURFACE_P), rng.random(R)).clip(0, 2)
    im_user = np.repeat(rq_user, K)
    im_ts = np.repeat(rq_ts, K)
    im_surface = np.repeat(rq_surface, K)
    after = im_ts >= drift_time[im_user]
    cur = np.where(after[:, None], interests_after[im_user], interests[im_user])  # (R*K, k)
    from_interest = rng.random(R * K) < 0.5
    slot = (rng.random(R * K)[:, None] > np.cumsum(weights[im_user], axis=1)).sum(1).clip(0, k - 1)
    im_topic = np.where(from_interest, cur[np.arange(R * K), slot], rng.integers(0, T, R * K))
    im_pin = _sample_in_topic(rng, im_topic, pin_topic, pin_pop, T)
    # affinity: the interest weight of the pin's topic for the user now (0 if not an interest)
    match = cur == pin_topic[im_pin][:, None]
    affinity = (weights[im_user] * match).sum(1) * k  # ~1 for an average interest
    pop_z = (np.log(pin_pop[im_pin]) - 0.0)
    labels = {}
    for task, (b0, w_aff, b_surf) in LABEL_MODEL.items():
        logit = b0 + w_aff[im_surface] * affinity + b_surf[im_surface] + 0.3 * pop_z
        labels[task] = (rng.random(R * K) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    request_id = np.repeat(np.arange(1, R + 1, dtype=np.int64), K)
    impressions = pd.DataFrame({
        "request_id": request_id,
        "user_id": user_ids[im_user],
        "pin_id": pin_ids[im_pin],
        "surface": np.array(SURFACES)[im_surface],
        "timestamp": im_ts.astype(np.int64),
        "d_pin_popularity": np.log1p(pin_pop[im_pin]).astype(np.float32),
        "d_user_activity": np.log1p(n_ev[im_user]).astype(np.float32),
        "d_position": np.tile(np.arange(K, dtype=np.float32) / K, R),
        "s_pin_category": category[im_pin].astype(np.int64),
        "s_user_top_interest": users["s_top_interest"].to_numpy()[im_user],
        "s_user_segment": users["s_segment"].to_numpy()[im_user],
        "s_hour": ((im_ts // 3600) % 24).astype(np.int64),
        **{f"label_{t}": v for t, v in labels.items()},
    }).drop_duplicates(["request_id", "pin_id"]).reset_index(drop=True)

    split_ts = START_TS + (cfg.days - cfg.eval_days) * 86_400
    meta = {
        "dataset": "synthetic",
        "seed": cfg.seed,
        "split_timestamp": int(split_ts),
        "eval_days": cfg.eval_days,
        "feature_dim": F,
        "dense_features": ["d_pin_popularity", "d_user_activity", "d_position"],
        "sparse_features": {"s_pin_category": T, "s_user_top_interest": T, "s_user_segment": 8, "s_hour": 24},
        "user_features": ["s_user_top_interest", "s_user_segment", "d_user_activity"],
        "pin_features": ["s_pin_category", "d_pin_popularity"],
        "domain_feature": "surface",
        "generator": {k: v for k, v in vars(cfg).items() if not k.startswith("_")},
    }
    ground_truth = {
        "pin_topics": pd.DataFrame({"pin_id": pin_ids, "topic": pin_topic.astype(np.int64)}),
        "board_topics": pd.DataFrame({"board_id": boards["board_id"], "topic": board_topic.astype(np.int64)}),
        "user_interests": pd.DataFrame({
            "user_id": user_ids,
            "interests": list(interests.astype(np.int64)),
            "weights": list(weights.astype(np.float32)),
            "interests_after": list(interests_after.astype(np.int64)),
            "drift_time": np.where(drifts, drift_time, -1).astype(np.int64),
        }),
    }
    return {"pins": pins, "boards": boards, "pin_boards": pin_boards, "users": users, "events": events,
            "impressions": impressions, "meta": meta, "ground_truth": ground_truth}
