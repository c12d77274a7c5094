"""MovieLens-100k with its Freebase knowledge graph, mapped into homefeed's event schema.

The files ship inside ``recbole==1.2.1`` (installed with ``--no-deps``) under
``recbole/dataset_example/ml-100k/``. The mapping (also in the README):

- items -> pins; content features: 18 genre one-hots, release year (scaled) and a missing-year flag,
  and the item's knowledge-graph entities (directors, actors, writers, producers, companies, languages,
  countries, subjects, content rating) hashed into the remaining dimensions, L2-normalised per block.
- boards: one per genre; one per knowledge-graph entity (director, actor, writer, producer, company,
  subject) linked to at least ``min_board_size`` items; one per (user, genre) holding the items the
  user rated 5 before the evaluation split (users' own boards; no evaluation data leaks into the graph).
- ratings -> events on the homefeed surface: 5 = repin, 4 = closeup (10-120 s), 3 = click (under 10 s),
  1-2 = hide; durations are drawn with a fixed seed.
- equal timestamps (three rows in four share one with another rating of the same user) get a stable
  tie-break: rows are ordered by (timestamp, crc32 of the item id) and nudged forward one second at a
  time until each user's timestamps strictly increase.
- impressions: one request per user-day; the items rated that day plus as many sampled unrated items
  (popularity-weighted from training-period counts, distinct, drawn with a fixed seed; a user who rated
  almost the whole catalogue may get fewer); labels save = rating 5, closeup = rating >= 4, click = rating >= 3,
  hide = rating <= 2, and all 0 for the sampled items.
- the last ``eval_days`` days are held out (``meta.json: split_timestamp``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from components.data.point_in_time import counts_before
from components.data.schemas import SURFACES

GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
          "Western")
KG_BOARD_RELATIONS = {
    "film.film.directed_by": "director",
    "film.film.actor": "actor",
    "film.film.written_by": "writer",
    "film.film.produced_by": "producer",
    "film.film.production_companies": "company",
    "film.film.subjects": "subject",
}
KG_FEATURE_RELATIONS = set(KG_BOARD_RELATIONS) | {"film.film.language", "film.film.country", "film.film.rating"}
OCCUPATIONS = ("administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
               "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
               "retired", "salesman", "scientist", "student", "technician", "writer")


def find_ml100k_dir() -> Path:
    """The folder of the ML-100k files inside the recbole package (never imported).

    Looked for in ``$HOMEFEED_ML100K_DIR``, then ``<venv>/share/recbole`` (where make installs it with
    ``--target`` so its unmet dependencies do not break ``pip check``), then an installed recbole.
    """
    candidates = []
    if os.environ.get("HOMEFEED_ML100K_DIR"):
        candidates.append(Path(os.environ["HOMEFEED_ML100K_DIR"]))
    candidates.append(Path(sys.prefix) / "share" / "recbole" / "recbole" / "dataset_example" / "ml-100k")
    spec = importlib.util.find_spec("recbole")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k")
    for path in candidates:
        if (path / "ml-100k.inter").exists():
            return path
    raise FileNotFoundError(
        "ML-100k not found (looked in " + ", ".join(map(str, candidates)) + "); it ships inside "
        "recbole==1.2.1: `pip install --no-deps --target <venv>/share/recbole recbole==1.2.1` (make does this)")


def _read(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    df.columns = [c.split(":")[0] for c in df.columns]
    return df


def _crc(s: str) -> int:
    return zlib.crc32(s.encode())


def crc_of(values: np.ndarray) -> np.ndarray:
    """crc32 of ``str(v)`` for each value, hashing each distinct value once (int64 array)."""
    uniq, inverse = np.unique(np.asarray(values), return_inverse=True)
    return np.fromiter((_crc(str(v)) for v in uniq), dtype=np.int64, count=len(uniq))[inverse.reshape(-1)]


def group_starts(keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in the sorted 1-d ``keys``."""
    return np.r_[0, np.flatnonzero(keys[1:] != keys[:-1]) + 1] if len(keys) else np.zeros(0, np.int64)


def tie_break(user: np.ndarray, ts: np.ndarray, item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stable order and strictly increasing per-user timestamps.

    Returns (order, new_ts) where ``order`` sorts rows by (user, ts, crc32(item)) and ``new_ts`` (in that
    order) is ``max(ts, previous + 1)`` within each user.
    """
    order = np.lexsort((crc_of(item), ts, user))
    u, t = user[order], np.asarray(ts, dtype=np.int64)[order]
    if len(u) == 0:
        return order, t
    starts = group_starts(u)
    sizes = np.diff(np.r_[starts, len(u)])
    k = np.arange(len(u)) - np.repeat(starts, sizes)  # index within the user
    shifted = t - k
    # running max within each user in one pass: lift user g's values into their own band [g*W, g*W + W)
    lo = int(shifted.min())
    width = int(shifted.max()) - lo + 1
    band = np.repeat(np.arange(len(starts), dtype=np.int64) * width, sizes)
    out = np.maximum.accumulate(shifted - lo + band) - band + lo
    return order, out + k


def _sorted_edges(board: np.ndarray, pin: np.ndarray) -> np.ndarray:
    """Unique (board, pin) rows sorted by board then pin, as an (E, 2) int64 array."""
    return np.unique(np.stack([board, pin], axis=1).astype(np.int64), axis=0)


def load(eval_days: int = 28, seed: int = 0, min_board_size: int = 3) -> dict[str, object]:
    """Build every table of the data directory from ML-100k (see the module docstring)."""
    src = find_ml100k_dir()
    rng = np.random.default_rng(seed)
    inter = _read(src / "ml-100k.inter")
    items = _read(src / "ml-100k.item")
    users = _read(src / "ml-100k.user")
    kg = _read(src / "ml-100k.kg")
    link = _read(src / "ml-100k.link")

    # ---- pins and content features -------------------------------------------------------------
    pin_ids = items["item_id"].astype(np.int64).to_numpy()
    order_p = np.argsort(pin_ids, kind="stable")
    items = items.iloc[order_p].reset_index(drop=True)
    pin_ids = pin_ids[order_p]
    n_pins = len(pin_ids)
    feat_dim = 64
    kg_dim = feat_dim - len(GENRES) - 2
    feats = np.zeros((n_pins, feat_dim), np.float32)
    genre_idx = {g: i for i, g in enumerate(GENRES)}
    primary_genre = np.zeros(n_pins, np.int64)  # 0 = unknown, 1.. = GENRES
    for i, cls in enumerate(items["class"]):
        gs = [genre_idx[g] for g in cls.split() if g in genre_idx]
        feats[i, gs] = 1.0
        primary_genre[i] = gs[0] + 1 if gs else 0
    year = pd.to_numeric(items["release_year"], errors="coerce").to_numpy()
    feats[:, len(GENRES)] = np.where(np.isnan(year), 0.0, (year - 1900) / 100.0)
    feats[:, len(GENRES) + 1] = np.isnan(year).astype(np.float32)
    year_f = np.where(np.isnan(year), np.nanmedian(year), year).astype(np.float32)

    ent2item = dict(zip(link["entity_id"], link["item_id"].astype(np.int64)))
    kg = kg[kg["relation_id"].isin(KG_FEATURE_RELATIONS) & kg["head_id"].isin(ent2item)]
    kg = kg.assign(item=kg["head_id"].map(ent2item).astype(np.int64))
    kg_row = np.searchsorted(pin_ids, kg["item"].to_numpy())
    buckets = crc_of((kg["relation_id"] + kg["tail_id"]).to_numpy()) % kg_dim
    np.add.at(feats, (kg_row, len(GENRES) + 2 + buckets), 1.0)
    kg_block = feats[:, len(GENRES) + 2:]
    kg_block /= np.maximum(np.linalg.norm(kg_block, axis=1, keepdims=True), 1e-6)
    pins = pd.DataFrame({"pin_id": pin_ids, "features": list(feats), "title": items["movie_title"].to_numpy(),
                         "s_genre": primary_genre})

    # ---- events ----------------------------------------------------------------------------------
    u = inter["user_id"].astype(np.int64).to_numpy()
    it = inter["item_id"].astype(np.int64).to_numpy()
    r = inter["rating"].astype(float).astype(np.int64).to_numpy()
    ts = inter["timestamp"].astype(float).astype(np.int64).to_numpy()
    order, new_ts = tie_break(u, ts, it)
    u, it, r = u[order], it[order], r[order]
    action = np.select([r == 5, r == 4, r == 3], ["repin", "closeup", "click"], "hide")
    dur = np.select(
        [r == 5, r == 4, r == 3],
        [rng.uniform(5, 60, len(r)), rng.uniform(10.5, 120, len(r)), rng.uniform(1, 9.5, len(r))],
        rng.uniform(0.2, 3, len(r)),
    ).astype(np.float32)
    events = pd.DataFrame({"user_id": u, "pin_id": it, "action_type": action, "surface": SURFACES[0],
                           "timestamp": new_ts, "duration_s": dur})
    split_ts = int(new_ts.max()) - eval_days * 86_400
    split_ts -= split_ts % 86_400  # split on a day boundary

    # ---- boards: genres, knowledge-graph entities, users' own (training-period) boards ------------
    names: list[np.ndarray] = []
    kinds: list[np.ndarray] = []
    edges: list[np.ndarray] = []  # (E, 2) rows of (local board index, pin_id) per kind
    genre_members = [pin_ids[feats[:, genre_idx[g]] > 0] for g in GENRES]
    keep_g = [g for g, m in zip(GENRES, genre_members) if len(m) >= min_board_size]
    names.append(np.array([f"genre:{g}" for g in keep_g], dtype=object))
    kinds.append(np.full(len(keep_g), "genre", dtype=object))
    edges.append(np.concatenate([_sorted_edges(np.full(len(genre_members[genre_idx[g]]), b),
                                               genre_members[genre_idx[g]]) for b, g in enumerate(keep_g)]))

    kgb = kg[kg["relation_id"].isin(KG_BOARD_RELATIONS)][["relation_id", "tail_id", "item"]].drop_duplicates()
    size = kgb.groupby(["relation_id", "tail_id"], sort=True)["item"].transform("size")
    kgb = kgb[size >= min_board_size].sort_values(["relation_id", "tail_id", "item"], kind="stable")
    key = (kgb["relation_id"] + "\t" + kgb["tail_id"]).to_numpy()
    kstarts = group_starts(key)
    kboard = np.repeat(np.arange(len(kstarts)), np.diff(np.r_[kstarts, len(key)]))
    kind_of = kgb["relation_id"].map(KG_BOARD_RELATIONS).to_numpy()[kstarts]
    names.append((pd.Series(kind_of) + ":" + kgb["tail_id"].to_numpy()[kstarts]).to_numpy(dtype=object))
    kinds.append(kind_of.astype(object))
    edges.append(np.stack([kboard, kgb["item"].to_numpy()], axis=1))

    genre_of_pin = primary_genre[np.searchsorted(pin_ids, events["pin_id"].to_numpy())]
    tr = events.assign(genre=genre_of_pin)
    tr = tr[(tr["timestamp"] < split_ts) & (tr["action_type"] == "repin")][["user_id", "genre", "pin_id"]]
    tr = tr.drop_duplicates().sort_values(["user_id", "genre", "pin_id"], kind="stable")
    tr = tr[tr.groupby(["user_id", "genre"])["pin_id"].transform("size") >= 2]
    ukey = tr["user_id"].to_numpy() * 100 + tr["genre"].to_numpy()
    ustarts = group_starts(ukey)
    uboard = np.repeat(np.arange(len(ustarts)), np.diff(np.r_[ustarts, len(ukey)]))
    gnames = np.array(("unknown",) + GENRES, dtype=object)
    names.append(("user:" + tr["user_id"].astype(str).to_numpy()[ustarts].astype(object) + ":"
                  + gnames[tr["genre"].to_numpy()[ustarts]]).astype(object))
    kinds.append(np.full(len(ustarts), "user", dtype=object))
    edges.append(np.stack([uboard, tr["pin_id"].to_numpy()], axis=1))

    offsets = np.cumsum([0] + [len(n) for n in names])
    boards = pd.DataFrame({"board_id": np.arange(1, offsets[-1] + 1, dtype=np.int64),
                           "name": np.concatenate(names), "kind": np.concatenate(kinds)})
    pin_boards = pd.DataFrame(np.concatenate([e + np.array([off + 1, 0]) for e, off in zip(edges, offsets)]),
                              columns=["board_id", "pin_id"]).astype(np.int64)

    # ---- users -----------------------------------------------------------------------------------
    occ = {o: i for i, o in enumerate(OCCUPATIONS)}
    user_df = pd.DataFrame({
        "user_id": users["user_id"].astype(np.int64),
        "s_gender": (users["gender"] == "F").astype(np.int64),
        "s_occupation": users["occupation"].map(lambda o: occ.get(o, occ["other"])).astype(np.int64),
        "s_age_bucket": np.minimum(users["age"].astype(int) // 10, 7).astype(np.int64),
    }).sort_values("user_id").reset_index(drop=True)

    # ---- impressions: one request per user-day ----------------------------------------------------
    # Events are sorted by (user, time), so each user-day is a contiguous run.
    pop = np.bincount(np.searchsorted(pin_ids, events.loc[events["timestamp"] < split_ts, "pin_id"]),
                      minlength=n_pins).astype(np.float64)
    ev_ts = events["timestamp"].to_numpy()
    req_key = u * 100_000 + ev_ts // 86_400
    rstarts = group_starts(req_key)
    rsize = np.diff(np.r_[rstarts, len(u)])
    n_req = len(rstarts)
    ev_req = np.repeat(np.arange(n_req), rsize)
    req_user, req_t0 = u[rstarts], ev_ts[rstarts]
    req_activity = rstarts - np.repeat(group_starts(u), np.diff(np.r_[group_starts(u), len(u)]))[rstarts]
    # negatives: as many pins as the request has ratings, popularity-weighted, never rated by the user,
    # distinct within the request (draw 6k+20 with replacement, drop repeats and seen pins, keep k)
    n_draw = 6 * rsize + 20
    draw_req = np.repeat(np.arange(n_req), n_draw)
    p_sample = (pop + 1.0) / (pop + 1.0).sum()
    draw_pin = pin_ids[rng.choice(n_pins, size=len(draw_req), p=p_sample)]
    seen = np.unique(u * 10_000_000 + it)
    ok = ~np.isin(req_user[draw_req] * 10_000_000 + draw_pin, seen)
    _, first = np.unique(draw_req * 10_000_000 + draw_pin, return_index=True)
    distinct = np.zeros(len(draw_req), bool)
    distinct[first] = True
    keep = np.flatnonzero(ok & distinct)
    kreq = draw_req[keep]
    rank = np.arange(len(keep)) - np.searchsorted(kreq, kreq)  # position among the kept draws of the request
    keep = keep[rank < rsize[kreq]]
    neg_req = draw_req[keep]
    imp_req = np.r_[ev_req, neg_req]
    imp_pin = np.r_[it, draw_pin[keep]]
    imp_rating = np.r_[r, np.zeros(len(keep), np.int64)]
    o = np.lexsort((np.r_[np.zeros(len(ev_req), np.int64), np.ones(len(neg_req), np.int64)], imp_req))
    imp_req, imp_pin, imp_rating = imp_req[o], imp_pin[o], imp_rating[o]
    imp_user, imp_ts, imp_act = req_user[imp_req], req_t0[imp_req], req_activity[imp_req]
    pidx = np.searchsorted(pin_ids, imp_pin)
    uidx = np.searchsorted(user_df["user_id"].to_numpy(), imp_user)
    age = users.set_index(users["user_id"].astype(np.int64))["age"].astype(np.float32)
    impressions = pd.DataFrame({
        "request_id": (imp_req + 1).astype(np.int64),
        "user_id": imp_user.astype(np.int64),
        "pin_id": imp_pin.astype(np.int64),
        "surface": SURFACES[0],
        "timestamp": imp_ts.astype(np.int64),
        # the pin's ratings strictly before the request (never the row's own rating: point in time)
        "d_pin_popularity": np.log1p(counts_before(np.searchsorted(pin_ids, events["pin_id"].to_numpy()), ev_ts,
                                                   pidx, imp_ts)).astype(np.float32),
        "d_user_activity": np.log1p(imp_act).astype(np.float32),
        "d_pin_year": year_f[pidx],
        "d_user_age": age.loc[user_df["user_id"]].to_numpy()[uidx],
        "s_pin_genre": primary_genre[pidx],
        "s_user_gender": user_df["s_gender"].to_numpy()[uidx],
        "s_user_occupation": user_df["s_occupation"].to_numpy()[uidx],
        "s_hour": ((imp_ts // 3600) % 24).astype(np.int64),
        "label_save": (imp_rating == 5).astype(np.int8),
        "label_closeup": (imp_rating >= 4).astype(np.int8),
        "label_click": (imp_rating >= 3).astype(np.int8),
        "label_hide": ((imp_rating >= 1) & (imp_rating <= 2)).astype(np.int8),
    })
    meta = {
        "dataset": "ml-100k",
        "seed": seed,
        "split_timestamp": split_ts,
        "eval_days": eval_days,
        "feature_dim": feat_dim,
        "dense_features": [c for c in impressions.columns if c.startswith("d_")],
        "sparse_features": {
            "s_pin_genre": len(GENRES) + 1, "s_user_gender": 2, "s_user_occupation": len(OCCUPATIONS),
            "s_hour": 24,
        },
        "user_features": ["s_user_gender", "s_user_occupation", "d_user_activity", "d_user_age"],
        "pin_features": ["s_pin_genre", "d_pin_popularity", "d_pin_year"],
        "domain_feature": "surface",
    }
    return {"pins": pins, "boards": boards, "pin_boards": pin_boards, "users": user_df, "events": events,
            "impressions": impressions, "meta": meta}
