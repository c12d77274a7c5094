"""Impressions of an import: the logged ones, or one request per (user, day, surface) with the engaged items
and negatives sampled by :mod:`components.data.negatives`, labelled by the action -> task mapping, with
the request features the ranker reads.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from components.config import ConfigError
from components.data.import_columns import IdSpace, map_surfaces, numbers_of, to_unix_seconds
from components.data.import_config import ImportConfig
from components.data.negatives import sample_negatives
from components.data.point_in_time import counts_before
from components.data.schemas import TASKS


def request_features(imp: pd.DataFrame, ev: pd.DataFrame, pin_ids: np.ndarray, pop: np.ndarray,
                      dense_pin: dict[str, np.ndarray], sparse_pin: dict[str, tuple[np.ndarray, int]]) -> dict[str, int]:
    """Add the ranker's d_*/s_* columns to ``imp`` in place; returns the sparse cardinalities."""
    prow = np.searchsorted(pin_ids, imp["pin_id"].to_numpy())
    # the item's interactions strictly before the request (point in time: never the row's own)
    imp["d_pin_popularity"] = np.log1p(counts_before(np.searchsorted(pin_ids, ev["pin_id"].to_numpy()),
                                                     ev["timestamp"].to_numpy(), prow,
                                                     imp["timestamp"].to_numpy())).astype(np.float32)
    # the user's activity so far: events strictly before the request
    ev_key = ev["user_id"].to_numpy().astype(np.float64) * 1e10 + ev["timestamp"].to_numpy()
    req_key = imp["user_id"].to_numpy().astype(np.float64) * 1e10 + imp["timestamp"].to_numpy()
    user_start = np.searchsorted(ev_key, imp["user_id"].to_numpy().astype(np.float64) * 1e10)
    imp["d_user_activity"] = np.log1p(np.searchsorted(ev_key, req_key) - user_start).astype(np.float32)
    for name, values in dense_pin.items():
        imp[name] = values[prow]
    cards = {"s_hour": 24}
    imp["s_hour"] = ((imp["timestamp"].to_numpy() // 3600) % 24).astype(np.int64)
    for name, (ids, card) in sparse_pin.items():
        imp[name] = ids[prow]
        cards[name] = card
    return cards


def sampled_impressions(cfg: ImportConfig, ev: pd.DataFrame, label_of: dict[str, np.ndarray], pin_ids: np.ndarray,
                         pop: np.ndarray) -> pd.DataFrame:
    """One request per (user, UTC day, surface): its engaged items + sampled negatives (all labels 0)."""
    day = ev["timestamp"].to_numpy() // 86_400
    keys = pd.DataFrame({"u": ev["user_id"].to_numpy(), "d": day, "s": ev["surface"].to_numpy()})
    req = keys.groupby(["u", "d", "s"], sort=True).ngroup().to_numpy()
    pos = pd.DataFrame({"req": req, "pin_id": ev["pin_id"].to_numpy(), "timestamp": ev["timestamp"].to_numpy(),
                        **{f"label_{t}": label_of[t].astype(np.int8) for t in TASKS}})
    # an item engaged twice in one request is one impression holding every label it earned
    eng = pos.groupby(["req", "pin_id"], sort=True).agg(
        {"timestamp": "min", **{f"label_{t}": "max" for t in TASKS}}).reset_index()
    first = pos.groupby("req", sort=True).agg(timestamp=("timestamp", "min")).reset_index()
    req_user = keys.groupby(req, sort=True)["u"].first().to_numpy()
    req_surface = keys.groupby(req, sort=True)["s"].first().to_numpy()
    n_eng = eng.groupby("req").size().reindex(np.arange(len(req_user)), fill_value=0).to_numpy()
    wanted = np.round(cfg.negatives.per_positive * n_eng).astype(np.int64)
    nreq, nitem = sample_negatives(req_user, wanted, pin_ids, pop, ev["user_id"].to_numpy(), ev["pin_id"].to_numpy(),
                                   cfg.negatives.seed)
    neg = pd.DataFrame({"req": nreq, "pin_id": nitem, **{f"label_{t}": np.zeros(len(nreq), np.int8) for t in TASKS}})
    imp = pd.concat([eng.drop(columns="timestamp"), neg], ignore_index=True).sort_values(["req", "pin_id"], kind="stable")
    r = imp["req"].to_numpy()
    out = pd.DataFrame({"request_id": (r + 1).astype(np.int64), "user_id": req_user[r].astype(np.int64),
                        "pin_id": imp["pin_id"].to_numpy(np.int64), "surface": req_surface[r],
                        "timestamp": first["timestamp"].to_numpy()[r].astype(np.int64)})
    for t in TASKS:
        out[f"label_{t}"] = imp[f"label_{t}"].to_numpy(np.int8)
    return out


def logged_impressions(cfg: ImportConfig, users: IdSpace, items: IdSpace, df: pd.DataFrame, name: str) -> pd.DataFrame:
    spec = cfg.impressions
    ts = to_unix_seconds(df[spec.timestamp], "auto", None, "impressions.timestamp", name)
    if spec.request is not None:
        request = pd.factorize(df[spec.request])[0].astype(np.int64) + 1
    else:
        request = pd.factorize(pd.Series(users.map(df[spec.user])).astype(str) + ":" + pd.Series(ts // 86_400).astype(str))[0] + 1
    if spec.surface is None:
        surface = np.full(len(df), cfg.surface_names[0], dtype=object)
    else:
        surface = map_surfaces(df.rename(columns={spec.surface: cfg.interactions.surface or spec.surface}), cfg)
    out = pd.DataFrame({"request_id": request.astype(np.int64), "user_id": users.map(df[spec.user]),
                        "pin_id": items.map(df[spec.item]), "surface": surface, "timestamp": ts})
    for t in TASKS:
        if t in spec.labels:
            vals = numbers_of(df[spec.labels[t]], f"impressions.labels.{t}", name)
            bad = ~np.isin(vals, [0, 1])
            if bad.any():
                raise ConfigError(f"{name}: column '{spec.labels[t]}' (key 'impressions.labels.{t}'): {int(bad.sum())} "
                                  f"values are not 0 or 1; first at row {int(np.argmax(bad))}")
            out[f"label_{t}"] = vals.astype(np.int8)
        else:
            out[f"label_{t}"] = np.zeros(len(df), np.int8)
    out = out[out["surface"].notna()]
    return out.drop_duplicates(["request_id", "pin_id"]).reset_index(drop=True)
