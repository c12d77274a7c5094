"""The recommend path: Feast -> Milvus -> Feast -> Triton.

1. the user's embedding from Feast (``retrieval_v1``);
2. the top-N candidate pins from Milvus through the ``pins`` alias (cosine similarity);
3. the ranker's features for (user, candidate) from Feast (``ranker_v1``), plus request-context
   features (hour of the request, position, surface);
4. per-task probabilities and the combined score from Triton's ``ranker_ensemble``;
5. the top k by score, each with its probabilities and retrieval similarity.

A user without an embedding in the feature store gets the popular pins (cold start) and the response
says so. Missing feature values are filled as training would see an unknown: dense -> the training
mean (normalised 0), sparse -> the unknown id 0; the response counts them.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from components.serving import feast_store, ranker_io
from components.serving.milvus_index import ALIAS, PinIndex
from components.serving.model_repository import PREPROCESS
from components.serving.triton_client import RankerClient


class RecommendError(RuntimeError):
    """A recommend-path problem naming the store, index or server and what was expected."""


@dataclass
class RecommendConfig:
    feature_repo: Path
    milvus_uri: str
    triton_url: str
    preprocess: Path  # preprocess.json of the served ranker (export dir or model repository)
    protocol: str = "grpc"
    candidates: int = 500  # N
    alias: str = ALIAS
    surface: str = "homefeed"
    ef_search: int = 128


def find_preprocess(path: str | Path) -> Path:
    """preprocess.json from a file, an export directory or a materialised model repository."""
    path = Path(path)
    for p in (path, path / ranker_io.PREPROCESS_FILE, path / PREPROCESS / "1" / ranker_io.PREPROCESS_FILE):
        if p.is_file():
            return p
    raise FileNotFoundError(f"{path}: no {ranker_io.PREPROCESS_FILE} (expected a file, an export dir or a Triton "
                            f"model repository)")


@dataclass
class Recommendation:
    user_id: int
    cold_start: bool
    message: str
    items: list[dict[str, Any]]
    timings_ms: dict[str, float] = field(default_factory=dict)
    filled: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "cold_start": self.cold_start, "message": self.message,
                "items": self.items, "timings_ms": self.timings_ms, "filled_missing_values": self.filled}


class Recommender:
    """Holds the connections (feature store, index, Triton client) across requests."""

    def __init__(self, cfg: RecommendConfig):
        self.cfg = cfg
        self.pre = json.loads(find_preprocess(cfg.preprocess).read_text())
        self.store = feast_store.open_store(cfg.feature_repo)
        self.index = PinIndex(cfg.milvus_uri, cfg.alias, cfg.ef_search)
        self.client = RankerClient(cfg.triton_url, cfg.protocol)
        try:
            ready = self.client.client.is_model_ready(self.client.model)
        except Exception as e:  # noqa: BLE001 - connection refused, timeouts, wrong protocol
            raise RecommendError(f"Triton at {cfg.triton_url} ({cfg.protocol}) is not reachable: {e}") from e
        if not ready:
            raise RecommendError(f"Triton at {cfg.triton_url}: model '{self.client.model}' is not ready")
        self.tasks = list(self.pre["tasks"])
        if cfg.surface not in self.pre["surfaces"]:
            raise RecommendError(f"surface '{cfg.surface}' unknown to the ranker; expected one of {self.pre['surfaces']}")
        pop_path = Path(cfg.feature_repo) / "sources" / feast_store.POPULAR_FILE
        self.popular = pq.read_table(pop_path).column("pin_id").to_numpy() if pop_path.exists() else np.zeros(0, np.int64)
        d = self.pre["dims"]
        if self.index.dim() != d["d_user"]:
            raise RecommendError(f"{cfg.milvus_uri}: index '{cfg.alias}' holds {self.index.dim()}-d pins but the ranker's "
                                 f"user embeddings are {d['d_user']}-d; retrieval needs the same space")

    def close(self) -> None:
        self.client.close()
        self.index.close()

    def __enter__(self) -> Recommender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- stages ----
    def user_embedding(self, user_id: int) -> np.ndarray | None:
        emb, found = feast_store.online_user_embeddings(self.cfg.feature_repo, [user_id], store=self.store)
        return emb[0] if found[0] else None

    def candidates(self, embedding: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids, sims = self.index.search(embedding[None, :], self.cfg.candidates)
        keep = ids[0] >= 0
        return ids[0][keep], sims[0][keep]

    def ranker_inputs(self, user_id: int, pin_ids: np.ndarray, when: dt.datetime) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Raw ranker inputs (ranker_io.RAW_INPUTS) for (user, each pin); counts of filled missing values."""
        feats = feast_store.online_ranker_features(self.cfg.feature_repo, user_id, pin_ids, store=self.store)
        n = len(pin_ids)
        context = {"s_hour": when.hour, "d_position": 0.0}  # request-time features
        filled: dict[str, int] = {}
        dense = np.zeros((n, len(self.pre["dense"]["names"])), np.float32)
        for j, (name, mean) in enumerate(zip(self.pre["dense"]["names"], self.pre["dense"]["mean"])):
            dense[:, j] = self._column(name, feats, context, n, float(mean), filled)
        sparse = np.zeros((n, len(self.pre["sparse"]["names"])), np.int64)
        for j, name in enumerate(self.pre["sparse"]["names"]):
            sparse[:, j] = self._column(name, feats, context, n, 0, filled)
        surface = np.full((n, 1), self.pre["surfaces"].index(self.cfg.surface), np.int64)
        user = self._embeddings(feats.get("user_embedding"), n, self.pre["dims"]["d_user"], "user_embedding", filled)
        pins = self._embeddings(feats.get("pin_embedding"), n, self.pre["dims"]["d_pin"], "pin_embedding", filled)
        return {"dense": dense, "sparse": sparse, "surface": surface, "user_embedding": user, "pin_embedding": pins}, filled

    @staticmethod
    def _column(name: str, feats: dict, context: dict, n: int, default: float, filled: dict[str, int]) -> np.ndarray:
        if name in feats:
            values = feats[name]
            missing = sum(v is None for v in values)
            if missing:
                filled[name] = missing
            return np.array([default if v is None else v for v in values], np.float64)
        if name in context:
            return np.full(n, context[name], np.float64)
        filled[name] = n
        return np.full(n, default, np.float64)

    @staticmethod
    def _embeddings(values: list | None, n: int, dim: int, name: str, filled: dict[str, int]) -> np.ndarray:
        out = np.zeros((n, dim), np.float32)
        for i, v in enumerate(values or [None] * n):
            if v is None:
                filled[name] = filled.get(name, 0) + 1
            elif len(v) != dim:
                raise RecommendError(f"feature store {name} has {len(v)} values, the ranker expects {dim}")
            else:
                out[i] = v
        return out

    # ---- the path ----
    def recommend(self, user_id: int, k: int = 20, when: dt.datetime | None = None) -> Recommendation:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        when = when or dt.datetime.now(dt.UTC)
        t = {"start": time.perf_counter()}
        emb = self.user_embedding(user_id)
        t["feast_user"] = time.perf_counter()
        if emb is None:
            items = [{"pin_id": int(p), "rank": i + 1, "score": None, "probabilities": None, "similarity": None}
                     for i, p in enumerate(self.popular[:k])]
            t["end"] = time.perf_counter()
            msg = (f"user {user_id} has no embedding in the feature store (unknown or new user): cold start with "
                   f"the {len(items)} most popular pins")
            return Recommendation(int(user_id), True, msg, items, _ms(t))
        pin_ids, sims = self.candidates(emb)
        t["milvus"] = time.perf_counter()
        if len(pin_ids) == 0:
            raise RecommendError(f"{self.cfg.milvus_uri}: index '{self.cfg.alias}' returned no candidates")
        raw, filled = self.ranker_inputs(user_id, pin_ids, when)
        t["feast_features"] = time.perf_counter()
        probs, score = self.client.score(raw)
        t["triton"] = time.perf_counter()
        order = np.argsort(-score, kind="stable")[:k]
        items = [{"pin_id": int(pin_ids[i]), "rank": r + 1, "score": float(score[i]),
                  "probabilities": {task: float(p) for task, p in zip(self.tasks, probs[i])},
                  "similarity": float(sims[i]), "retrieval_rank": int(i) + 1} for r, i in enumerate(order)]
        t["end"] = time.perf_counter()
        msg = f"ranked {len(pin_ids)} candidates from Milvus with the Triton ranker ensemble"
        return Recommendation(int(user_id), False, msg, items, _ms(t), filled)


def _ms(t: dict[str, float]) -> dict[str, float]:
    keys = list(t)
    out = {b: round((t[b] - t[a]) * 1000, 3) for a, b in zip(keys, keys[1:]) if b != "end"}
    out["total"] = round((t["end"] - t["start"]) * 1000, 3)
    return out


def recommend(cfg: RecommendConfig, user_id: int, k: int = 20) -> Recommendation:
    """One request end to end (opens and closes the connections)."""
    with Recommender(cfg) as r:
        return r.recommend(user_id, k)


def format_table(rec: Recommendation) -> str:
    lines = [rec.message]
    if rec.filled:
        lines.append(f"filled missing feature values: {rec.filled}")
    tasks = list(rec.items[0]["probabilities"]) if rec.items and rec.items[0]["probabilities"] else []
    lines.append("rank  pin_id      score  similarity  " + "  ".join(f"p({t})" for t in tasks))
    for it in rec.items:
        if it["probabilities"] is None:
            lines.append(f"{it['rank']:>4}  {it['pin_id']:>6}  (popular)")
            continue
        probs = "  ".join(f"{it['probabilities'][t]:>{len(t) + 3}.3f}" for t in tasks)
        lines.append(f"{it['rank']:>4}  {it['pin_id']:>6}  {it['score']:>9.4f}  {it['similarity']:>10.4f}  {probs}")
    lines.append("timings (ms): " + ", ".join(f"{k}={v}" for k, v in rec.timings_ms.items()))
    return "\n".join(lines)
