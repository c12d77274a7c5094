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

Bounded memory: :func:`pieces` yields the tables in row order, pins in blocks of ``chunk_pins`` and events and
impressions in chunks of about ``chunk_events`` rows (whole users, whole requests), so a writer holds one piece
at a time; only per-pin, per-board and per-user arrays (topics, popularity, interests, activity) are whole. The
pieces are the rows one whole-table draw gives, whatever the chunk sizes: every large draw (a value per event,
impression or feature) is made once from the seeded generator chunk by chunk and dropped, keeping the
generator's state at the start of each chunk (:class:`_Replay`); a chunk's values are then drawn again from its
saved state when the chunk is built. :func:`generate` concatenates the pieces (tests, small sizes).

Everything is vectorised numpy; 1M events generate in seconds (``tests/bench/``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

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
CHUNK_EVENTS = 262_144  # events (or impressions) per generated piece, about
CHUNK_PINS = 65_536  # pins per generated piece (x feature_dim float32 features)
P_IN = np.array([0.25, 0.35, 0.3, 0.1])  # action mix of in-interest events: repin, closeup, click, hide
P_EX = np.array([0.03, 0.12, 0.45, 0.4])  # ... of exploration events
MU_DURATION = np.array([[np.log(6), np.log(18), np.log(12), np.log(1)],  # log-normal dwell, in interest
                        [np.log(3), np.log(5), np.log(3), np.log(1)]])  # ... exploring

Draw = Callable[[np.random.Generator, int], np.ndarray]
UNIFORM: Draw = lambda g, n: g.random(n)  # noqa: E731 - the draws are values, named once


class _Replay:
    """Chunks of a generator's large draws, each drawn on its own with the values the whole draw gives it.

    :meth:`record` makes a draw of ``sum(sizes)`` values chunk by chunk from the main generator (the values are
    dropped; the main generator ends where one whole draw leaves it) and keeps the state at each chunk's start;
    :meth:`chunk` draws chunk ``c`` again from that state. A draw of n values followed by one of m consumes the
    bit stream exactly as one draw of n + m does (numpy's Generator keeps no buffer outside its bit generator's
    state), so the chunks are the whole draw's values (tested against the whole-table draws).
    """

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.states: dict[str, list[dict]] = {}

    def record(self, name: str, draw: Draw, sizes: np.ndarray) -> None:
        states = []
        for n in sizes:
            states.append(self.rng.bit_generator.state)
            draw(self.rng, int(n))
        self.states[name] = states

    def chunk(self, name: str, c: int, draw: Callable[[np.random.Generator], np.ndarray]) -> np.ndarray:
        g = np.random.Generator(type(self.rng.bit_generator)())
        g.bit_generator.state = self.states[name][c]
        return draw(g)


class _Picker:
    """Draws a pin of a given topic proportionally to popularity (the cumulative popularity, built once)."""

    def __init__(self, pin_topic: np.ndarray, pin_pop: np.ndarray, n_topics: int):
        self.order = np.argsort(pin_topic, kind="stable")
        self.cum = np.cumsum(pin_pop[self.order])
        counts = np.bincount(pin_topic, minlength=n_topics)
        self.ends = np.cumsum(counts)
        self.starts = self.ends - counts
        self.lo = np.where(self.starts > 0, self.cum[np.maximum(self.starts - 1, 0)], 0.0)
        self.hi = self.cum[np.maximum(self.ends - 1, 0)]

    def __call__(self, topics: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Pin indices: ``u`` (uniform in [0, 1), one per entry of ``topics``) through topic t's popularity CDF."""
        target = self.lo[topics] + u * (self.hi[topics] - self.lo[topics])
        pos = np.searchsorted(self.cum, target, side="right")
        pos = np.clip(pos, self.starts[topics], np.maximum(self.ends[topics] - 1, self.starts[topics]))
        return self.order[pos]


def _check(cfg: DataConfig) -> None:
    small = {k: v for k, v in {"topics": cfg.topics, "pins": cfg.pins, "users": cfg.users, "boards": cfg.boards,
                               "feature_dim": cfg.feature_dim}.items() if v <= 0}
    if small:
        raise ConfigError(f"synthetic data: {', '.join(f'{k}={v}' for k, v in small.items())}; expected > 0")
    if cfg.days <= cfg.eval_days:
        raise ConfigError(f"synthetic data: days={cfg.days} must be greater than eval_days={cfg.eval_days} "
                          "(the last eval_days days are held out)")


def _bounds(sizes: np.ndarray, target: int) -> np.ndarray:
    """Chunk boundaries over consecutive items of ``sizes`` rows each: a new chunk starts at the first item whose
    first row passes the next multiple of ``target`` (so a chunk holds about ``target`` rows, whole items)."""
    first = np.cumsum(sizes) - sizes
    bucket = first // max(int(target), 1)
    return np.r_[0, np.flatnonzero(np.diff(bucket)) + 1, len(sizes)].astype(np.int64)


@dataclass
class _World:
    """What every chunk reads: per-pin, per-board, per-user and per-request arrays and the replay states."""

    cfg: DataConfig
    replay: _Replay
    picker: _Picker
    k: int
    pin_topic: np.ndarray  # (P,)
    pin_pop: np.ndarray  # (P,)
    centroids: np.ndarray  # (T, F) float32
    category: np.ndarray  # (P,)
    pin_blocks: np.ndarray  # pin boundaries of the feature chunks
    board_topic: np.ndarray  # (B,)
    pin_boards: pd.DataFrame
    interests: np.ndarray  # (U, k)
    weights: np.ndarray  # (U, k)
    drifts: np.ndarray  # (U,) bool
    drift_time: np.ndarray  # (U,)
    interests_after: np.ndarray  # (U, k)
    users: pd.DataFrame
    n_ev: np.ndarray  # (U,) events per user
    n_sess: np.ndarray  # (U,) sessions per user
    sess_start: np.ndarray  # (sessions,)
    sess_base: np.ndarray  # (U,) first session of each user
    user_blocks: np.ndarray  # user boundaries of the event chunks
    rq_user: np.ndarray  # (R,)
    rq_ts: np.ndarray  # (R,)
    rq_surface: np.ndarray  # (R,)
    request_blocks: np.ndarray  # request boundaries of the impression chunks


def _world(cfg: DataConfig, chunk_events: int, chunk_pins: int) -> _World:
    """Every whole-catalogue array, drawn in the generator's order; the large draws are recorded, not kept."""
    _check(cfg)
    rng = np.random.default_rng(cfg.seed)
    replay = _Replay(rng)
    T, P, U, B, F = cfg.topics, cfg.pins, cfg.users, cfg.boards, cfg.feature_dim
    topic_w = 1.0 / np.sqrt(np.arange(1, T + 1))
    topic_w /= topic_w.sum()

    # ---- pins ------------------------------------------------------------------------------------
    pin_topic = rng.choice(T, P, p=topic_w)
    pin_topic[:T] = np.arange(T) if P >= T else pin_topic[:T]  # every topic has a pin
    pin_pop = rng.lognormal(0.0, 1.0, P)
    centroids = rng.normal(size=(T, F)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    pin_blocks = np.r_[np.arange(0, P, max(chunk_pins, 1)), P].astype(np.int64)
    scale = cfg.feature_noise / np.sqrt(F)
    replay.record("features", lambda g, n: g.normal(scale=scale, size=(n, F)), np.diff(pin_blocks))
    category = np.where(rng.random(P) < 0.7, pin_topic, rng.integers(0, T, P))
    picker = _Picker(pin_topic, pin_pop, T)

    # ---- boards ----------------------------------------------------------------------------------
    board_topic = rng.choice(T, B, p=topic_w)
    sizes = 4 + rng.geometric(1 / 12, B)
    edge_board = np.repeat(np.arange(B), sizes)
    own = rng.random(len(edge_board)) < cfg.board_purity
    edge_topic = np.where(own, board_topic[edge_board], rng.integers(0, T, len(edge_board)))
    edge_pin = picker(edge_topic, rng.random(len(edge_topic)))
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
    users = pd.DataFrame({"user_id": np.arange(1, U + 1, dtype=np.int64),
                          "s_segment": rng.integers(0, 8, U).astype(np.int64),
                          "s_top_interest": interests[np.arange(U), weights.argmax(1)].astype(np.int64)})

    # ---- events: per-user counts and sessions whole, the per-event draws recorded by user chunk ---
    n_ev = np.maximum(2, rng.lognormal(np.log(cfg.events_per_user) - 0.32, 0.8, U).astype(np.int64))
    n_sess = np.maximum(1, n_ev // 6)
    sess_start = START_TS + rng.integers(0, span - 3600, int(n_sess.sum()))
    sess_base = np.r_[0, np.cumsum(n_sess)[:-1]]
    user_blocks = _bounds(n_ev, chunk_events)
    ev_sizes = np.add.reduceat(n_ev, user_blocks[:-1])
    for name, draw in (("ev_session", UNIFORM), ("ev_delay", lambda g, n: g.exponential(600.0, n)),
                       ("ev_slot", UNIFORM), ("ev_explore", UNIFORM), ("ev_topic", lambda g, n: g.integers(0, T, n)),
                       ("ev_pick", UNIFORM), ("ev_action", UNIFORM), ("ev_duration", lambda g, n: g.lognormal(0.0, 0.8, n)),
                       ("ev_surface", UNIFORM)):
        replay.record(name, draw, ev_sizes)

    # ---- impressions: per-request draws whole, the per-impression ones recorded by request chunk --
    R = max(1, int(U * cfg.days * cfg.requests_per_user_day / 10))
    K = cfg.impressions_per_request
    rq_user = rng.choice(U, R, p=n_ev / n_ev.sum())
    rq_ts = START_TS + rng.integers(0, span, R)
    rq_surface = np.searchsorted(np.cumsum(SURFACE_P), rng.random(R)).clip(0, 2)
    request_blocks = np.r_[np.arange(0, R, max(chunk_events // K, 1)), R].astype(np.int64)
    im_sizes = np.diff(request_blocks) * K
    for name, draw in (("im_from_interest", UNIFORM), ("im_slot", UNIFORM),
                       ("im_topic", lambda g, n: g.integers(0, T, n)), ("im_pick", UNIFORM),
                       *((f"label_{t}", UNIFORM) for t in LABEL_MODEL)):
        replay.record(name, draw, im_sizes)
    return _World(cfg, replay, picker, k, pin_topic, pin_pop, centroids, category, pin_blocks, board_topic,
                  pin_boards, interests, weights, drifts, drift_time, interests_after, users, n_ev, n_sess,
                  sess_start, sess_base, user_blocks, rq_user, rq_ts, rq_surface, request_blocks)


def _pins(w: _World, c: int) -> pd.DataFrame:
    p0, p1 = int(w.pin_blocks[c]), int(w.pin_blocks[c + 1])
    noise = w.replay.chunk("features", c, lambda g: g.normal(scale=w.cfg.feature_noise / np.sqrt(w.cfg.feature_dim),
                                                              size=(p1 - p0, w.cfg.feature_dim)))
    feats = (w.centroids[w.pin_topic[p0:p1]] + noise.astype(np.float32)).astype(np.float32)  # (n, F)
    return pd.DataFrame({"pin_id": np.arange(p0 + 1, p1 + 1, dtype=np.int64), "features": list(feats),
                         "s_category": w.category[p0:p1].astype(np.int64)})


def _events(w: _World, c: int) -> pd.DataFrame:
    """The events of user chunk ``c``, in (user, timestamp) order."""
    T, k, span = w.cfg.topics, w.k, w.cfg.days * 86_400
    u0, u1 = int(w.user_blocks[c]), int(w.user_blocks[c + 1])
    ev_user = np.repeat(np.arange(u0, u1), w.n_ev[u0:u1])
    n = len(ev_user)
    draw = lambda name, fn=None: w.replay.chunk(name, c, fn or (lambda g: g.random(n)))  # noqa: E731
    ev_sess = w.sess_base[ev_user] + (draw("ev_session") * w.n_sess[ev_user]).astype(np.int64)
    ev_ts = w.sess_start[ev_sess] + draw("ev_delay", lambda g: g.exponential(600.0, n)).astype(np.int64)
    ev_ts = np.minimum(ev_ts, START_TS + span - 1)
    order = np.lexsort((ev_ts, ev_user))  # within each user: the chunk's users are whole
    ev_user, ev_ts = ev_user[order], ev_ts[order]
    after = ev_ts >= w.drift_time[ev_user]
    slot = (draw("ev_slot")[:, None] > np.cumsum(w.weights[ev_user], axis=1)).sum(1).clip(0, k - 1)
    topic_now = np.where(after, w.interests_after[ev_user, slot], w.interests[ev_user, slot])
    explore = draw("ev_explore") < 0.15
    ev_topic = np.where(explore, draw("ev_topic", lambda g: g.integers(0, T, n)), topic_now)
    ev_pin = w.picker(ev_topic, draw("ev_pick"))
    in_interest = ~explore
    u = draw("ev_action")
    act = np.where(in_interest, np.searchsorted(np.cumsum(P_IN), u), np.searchsorted(np.cumsum(P_EX), u)).clip(0, 3)
    mu = MU_DURATION[(~in_interest).astype(int), act]
    dur = draw("ev_duration", lambda g: g.lognormal(mu, 0.8)).astype(np.float32)
    surface = np.searchsorted(np.cumsum(SURFACE_P), draw("ev_surface")).clip(0, 2)
    return pd.DataFrame({
        "user_id": ev_user.astype(np.int64) + 1,
        "pin_id": ev_pin.astype(np.int64) + 1,
        "action_type": np.array(ACTION_TYPES)[act],
        "surface": np.array(SURFACES)[surface],
        "timestamp": ev_ts.astype(np.int64),
        "duration_s": dur,
    })


def _impressions(w: _World, c: int) -> pd.DataFrame:
    """The impressions of request chunk ``c`` (request order; a request's repeated pins once)."""
    T, k, K = w.cfg.topics, w.k, w.cfg.impressions_per_request
    r0, r1 = int(w.request_blocks[c]), int(w.request_blocks[c + 1])
    n = (r1 - r0) * K
    draw = lambda name, fn=None: w.replay.chunk(name, c, fn or (lambda g: g.random(n)))  # noqa: E731
    im_user = np.repeat(w.rq_user[r0:r1], K)
    im_ts = np.repeat(w.rq_ts[r0:r1], K)
    im_surface = np.repeat(w.rq_surface[r0:r1], K)
    after = im_ts >= w.drift_time[im_user]
    cur = np.where(after[:, None], w.interests_after[im_user], w.interests[im_user])  # (n, k)
    from_interest = draw("im_from_interest") < 0.5
    slot = (draw("im_slot")[:, None] > np.cumsum(w.weights[im_user], axis=1)).sum(1).clip(0, k - 1)
    im_topic = np.where(from_interest, cur[np.arange(n), slot], draw("im_topic", lambda g: g.integers(0, T, n)))
    im_pin = w.picker(im_topic, draw("im_pick"))
    # affinity: the interest weight of the pin's topic for the user now (0 if not an interest)
    match = cur == w.pin_topic[im_pin][:, None]
    affinity = (w.weights[im_user] * match).sum(1) * k  # ~1 for an average interest
    pop_z = np.log(w.pin_pop[im_pin]) - 0.0
    labels = {}
    for task, (b0, w_aff, b_surf) in LABEL_MODEL.items():
        logit = b0 + w_aff[im_surface] * affinity + b_surf[im_surface] + 0.3 * pop_z
        labels[task] = (draw(f"label_{task}") < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return pd.DataFrame({
        "request_id": np.repeat(np.arange(r0 + 1, r1 + 1, dtype=np.int64), K),
        "user_id": im_user.astype(np.int64) + 1,
        "pin_id": im_pin.astype(np.int64) + 1,
        "surface": np.array(SURFACES)[im_surface],
        "timestamp": im_ts.astype(np.int64),
        "d_pin_popularity": np.log1p(w.pin_pop[im_pin]).astype(np.float32),
        "d_user_activity": np.log1p(w.n_ev[im_user]).astype(np.float32),
        "d_position": np.tile(np.arange(K, dtype=np.float32) / K, r1 - r0),
        "s_pin_category": w.category[im_pin].astype(np.int64),
        "s_user_top_interest": w.users["s_top_interest"].to_numpy()[im_user],
        "s_user_segment": w.users["s_segment"].to_numpy()[im_user],
        "s_hour": ((im_ts // 3600) % 24).astype(np.int64),
        **{f"label_{t}": v for t, v in labels.items()},
    }).drop_duplicates(["request_id", "pin_id"]).reset_index(drop=True)


def _meta(w: _World) -> dict[str, object]:
    cfg, T = w.cfg, w.cfg.topics
    return {
        "dataset": "synthetic",
        "seed": cfg.seed,
        "split_timestamp": int(START_TS + (cfg.days - cfg.eval_days) * 86_400),
        "eval_days": cfg.eval_days,
        "feature_dim": cfg.feature_dim,
        "dense_features": ["d_pin_popularity", "d_user_activity", "d_position"],
        "sparse_features": {"s_pin_category": T, "s_user_top_interest": T, "s_user_segment": 8, "s_hour": 24},
        "user_features": ["s_user_top_interest", "s_user_segment", "d_user_activity"],
        "pin_features": ["s_pin_category", "d_pin_popularity"],
        "domain_feature": "surface",
        "generator": {k: v for k, v in vars(cfg).items() if not k.startswith("_")},
    }


def _ground_truth(w: _World) -> dict[str, pd.DataFrame]:
    return {
        "pin_topics": pd.DataFrame({"pin_id": np.arange(1, w.cfg.pins + 1, dtype=np.int64),
                                    "topic": w.pin_topic.astype(np.int64)}),
        "board_topics": pd.DataFrame({"board_id": np.arange(1, w.cfg.boards + 1, dtype=np.int64),
                                      "topic": w.board_topic.astype(np.int64)}),
        "user_interests": pd.DataFrame({
            "user_id": w.users["user_id"].to_numpy(),
            "interests": list(w.interests.astype(np.int64)),
            "weights": list(w.weights.astype(np.float32)),
            "interests_after": list(w.interests_after.astype(np.int64)),
            "drift_time": np.where(w.drifts, w.drift_time, -1).astype(np.int64),
        }),
    }


def pieces(cfg: DataConfig, chunk_events: int | None = None,
           chunk_pins: int | None = None) -> Iterator[tuple[str, object]]:
    """The dataset of ``cfg`` as (table, piece) pairs, each table's pieces in row order: ``pins`` in blocks of
    ``chunk_pins``, ``boards``, ``pin_boards``, ``users``, ``events`` by chunks of whole users (about
    ``chunk_events`` events, each chunk in (user, timestamp) order), ``impressions`` by chunks of whole requests,
    then ``("meta", dict)`` and ``("ground_truth", {name: frame})``. The rows do not depend on the chunk sizes
    (None: :data:`CHUNK_EVENTS`, :data:`CHUNK_PINS`)."""
    w = _world(cfg, chunk_events or CHUNK_EVENTS, chunk_pins or CHUNK_PINS)
    for c in range(len(w.pin_blocks) - 1):
        yield "pins", _pins(w, c)
    yield "boards", pd.DataFrame({"board_id": np.arange(1, cfg.boards + 1, dtype=np.int64),
                                  "name": [f"board-{b}-topic-{t}" for b, t in enumerate(w.board_topic, 1)],
                                  "kind": "user"})
    yield "pin_boards", w.pin_boards
    yield "users", w.users
    for c in range(len(w.user_blocks) - 1):
        yield "events", _events(w, c)
    for c in range(len(w.request_blocks) - 1):
        yield "impressions", _impressions(w, c)
    yield "meta", _meta(w)
    yield "ground_truth", _ground_truth(w)


def generate(cfg: DataConfig, chunk_events: int | None = None, chunk_pins: int | None = None) -> dict[str, object]:
    """Every table of :func:`pieces` in memory: {table: DataFrame, "meta": dict, "ground_truth": {name: frame}}."""
    parts: dict[str, list] = {}
    out: dict[str, object] = {}
    for name, piece in pieces(cfg, chunk_events, chunk_pins):
        if name in ("meta", "ground_truth"):
            out[name] = piece
        else:
            parts.setdefault(name, []).append(piece)
    for name, frames in parts.items():
        out[name] = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    return out
