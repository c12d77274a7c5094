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
- equal timestamps (about half the rows share one with another rating of the same user) get a stable
  tie-break: rows are ordered by (timestamp, crc32 of the item id) and nudged forward one second at a
  time until each user's timestamps strictly increase.
- impressions: one request per user-day; the items rated that day plus as many sampled unrated items
  (popularity-weighted); labels save = rating 5, closeup = rating >= 4, click = rating >= 3,
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


def tie_break(user: np.ndarray, ts: np.ndarray, item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stable order and strictly increasing per-user timestamps.

    Returns (order, new_ts) where ``order`` sorts rows by (user, ts, crc32(item)) and ``new_ts`` (in that
    order) is ``max(ts, previous + 1)`` within each user.
    """
    h = np.array([_crc(str(i)) for i in item], dtype=np.int64)
    order = np.lexsort((h, ts, user))
    u, t = user[order], ts[order]
    starts = np.r_[0, np.flatnonzero(u[1:] != u[:-1]) + 1]
    k = np.arange(len(u)) - np.repeat(starts, np.diff(np.r_[starts, len(u)]))  # index within user
    shifted = t - k
    out = np.empty_like(t)
    for s, e in zip(starts, np.r_[starts[1:], len(u)]):
        out[s:e] = np.maximum.accumulate(shifted[s:e])
    return order, out + k


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
    n_pins = len(pin_ids)
    pin_index = {p: i for i, p in enumerate(pin_ids)}
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
    kg_item = kg["head_id"].map(ent2item).map(pin_index).to_numpy()
    buckets = np.array([_crc(r + t) % kg_dim for r, t in zip(kg["relation_id"], kg["tail_id"])])
    np.add.at(feats, (kg_item, len(GENRES) + 2 + buckets), 1.0)
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

    # ---- boards ----------------------------------------------------------------------------------
    board_rows, edge_rows = [], []

    def add_board(name: str, kind: str, members: np.ndarray) -> None:
        bid = len(board_rows) + 1
        board_rows.append((bid, name, kind))
        edge_rows.extend((bid, int(p)) for p in np.unique(members))

    for g in GENRES:
        members = pin_ids[feats[:, genre_idx[g]] > 0]
        if len(members) >= min_board_size:
            add_board(f"genre:{g}", "genre", members)
    kgb = kg[kg["relation_id"].isin(KG_BOARD_RELATIONS)]
    for (rel, tail), grp in kgb.groupby(["relation_id", "tail_id"], sort=True):
        members = grp["head_id"].map(ent2item).to_numpy()
        if len(np.unique(members)) >= min_board_size:
            add_board(f"{KG_BOARD_RELATIONS[rel]}:{tail}", KG_BOARD_RELATIONS[rel], members)
    train_repins = events[(events["timestamp"] < split_ts) & (events["action_type"] == "repin")]
    genre_of = dict(zip(pin_ids, primary_genre))
    tr = train_repins.assign(genre=train_repins["pin_id"].map(genre_of))
    for (uid, g), grp in tr.groupby(["user_id", "genre"], sort=True):
        if len(grp) >= 2:
            gname = GENRES[g - 1] if g > 0 else "unknown"
            add_board(f"user:{uid}:{gname}", "user", grp["pin_id"].to_numpy())
    boards = pd.DataFrame(board_rows, columns=["board_id", "name", "kind"])
    pin_boards = pd.DataFrame(edge_rows, columns=["board_id", "pin_id"]).astype(np.int64)

    # ---- users -----------------------------------------------------------------------------------
    occ = {o: i for i, o in enumerate(OCCUPATIONS)}
    user_df = pd.DataFrame({
        "user_id": users["user_id"].astype(np.int64),
        "s_gender": (users["gender"] == "F").astype(np.int64),
        "s_occupation": users["occupation"].map(lambda o: occ.get(o, occ["other"])).astype(np.int64),
        "s_age_bucket": np.minimum(users["age"].astype(int) // 10, 7).astype(np.int64),
    })

    # ---- impressions: one request per user-day ----------------------------------------------------
    pop = np.bincount(np.searchsorted(pin_ids, events.loc[events["timestamp"] < split_ts, "pin_id"]),
                      minlength=n_pins).astype(np.float64)
    day = events["timestamp"].to_numpy() // 86_400
    events_day = events.assign(day=day, rating=r)
    seen = events.groupby("user_id")["pin_id"].agg(set).to_dict()
    p_sample = (pop + 1.0) / (pop + 1.0).sum()
    rows = []
    request_id = 0
    user_activity = events.groupby("user_id").cumcount().to_numpy()  # events before this one
    events_day["activity"] = user_activity
    for (uid, _day), grp in events_day.groupby(["user_id", "day"], sort=True):
        request_id += 1
        t0 = int(grp["timestamp"].min())
        act = int(grp["activity"].min())
        k = len(grp)
        cand = rng.choice(n_pins, size=min(3 * k + 10, n_pins), replace=False, p=p_sample)
        neg = [pin_ids[c] for c in cand if pin_ids[c] not in seen[uid]][:k]
        for pid, rating in zip(grp["pin_id"].to_numpy(), grp["rating"].to_numpy()):
            rows.append((request_id, uid, pid, t0, act, rating))
        for pid in neg:
            rows.append((request_id, uid, pid, t0, act, 0))
    imp = pd.DataFrame(rows, columns=["request_id", "user_id", "pin_id", "timestamp", "activity", "rating"])
    pidx = np.searchsorted(pin_ids, imp["pin_id"].to_numpy())
    uf = user_df.set_index("user_id").loc[imp["user_id"]]
    impressions = pd.DataFrame({
        "request_id": imp["request_id"].astype(np.int64),
        "user_id": imp["user_id"].astype(np.int64),
        "pin_id": imp["pin_id"].astype(np.int64),
        "surface": SURFACES[0],
        "timestamp": imp["timestamp"].astype(np.int64),
        "d_pin_popularity": np.log1p(pop[pidx]).astype(np.float32),
        "d_user_activity": np.log1p(imp["activity"].to_numpy()).astype(np.float32),
        "d_pin_year": year_f[pidx],
        "d_user_age": users.set_index(users["user_id"].astype(np.int64))["age"].astype(np.float32)
        .loc[imp["user_id"]].to_numpy(),
        "s_pin_genre": primary_genre[pidx],
        "s_user_gender": uf["s_gender"].to_numpy(),
        "s_user_occupation": uf["s_occupation"].to_numpy(),
        "s_hour": ((imp["timestamp"].to_numpy() // 3600) % 24).astype(np.int64),
        "label_save": (imp["rating"] == 5).astype(np.int8),
        "label_closeup": (imp["rating"] >= 4).astype(np.int8),
        "label_click": (imp["rating"] >= 3).astype(np.int8),
        "label_hide": ((imp["rating"] >= 1) & (imp["rating"] <= 2)).astype(np.int8),
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
