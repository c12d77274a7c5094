"""The recommend path: Feast -> Milvus -> Feast -> Triton.

1. the user's embedding from Feast (``retrieval_v1``);
2. the top-N candidate pins from Milvus through the ``pins`` alias (cosine similarity);
3. the ranker's features for (user, candidate) from Feast (``ranker_v1``), plus request-context
   features (hour of the request, position, surface);
4. per-task probabilities and the combined score from Triton's ``ranker_ensemble``;
5. the top k by score, each with its probabilities and retrieval similarity.

A user without an embedding in the feature store gets the popular pins (cold start) and the response
says so (``fallback: "unknown_user"``). Missing feature values are filled as training would see an unknown:
dense -> the training mean (normalised 0), sparse -> the unknown id 0; the response counts them.

Fallbacks (the response's ``fallback`` names the reason, null when the ensemble ranked fresh values):
- the feature store's read fails (a view MATERIALIZING, the online store down): the user's last good
  embedding from this process's cache (``stale_user_embedding``), else the popular pins
  (``feature_store_unavailable``); a failed ranker-feature read ranks the candidates by retrieval
  similarity (``ranker_features_unavailable``).
- Milvus or Triton failing is a :class:`DependencyError` naming it (the service answers 503).

Versions (``components/serving/contract.py``): user embeddings, the indexed pin tower and the ranker must come
from one PinnerFormer model (:class:`IncompatibleVersions` at open and per request, a 503); the feature store's
pin embeddings must be those the ranker was trained on (``pinsage-<model digest>``), else the candidates are
returned in retrieval order with ``fallback: "incompatible_pin_embeddings"`` and the reason.

The ranker features' pin side comes through an in-process cache (``components/serving/ranker_features.py``:
read through Feast on a miss, dropped when the served pin table changes, bounded, max age); the response and the
stage timings are laid out in ``components/serving/recommendation.py``.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from components.serving import feast_store
from components.serving.contract import (
    DependencyError,
    IncompatibleVersions,
    RecommendError,
    RequestError,
    check_limits,
    collection_version,
    pin_mismatch,
    read_preprocess,
    version_slug,
)
from components.serving.milvus_index import ALIAS, PinIndex, served_collection
from components.serving.ranker_features import FeatureReader, PinCache, raw_inputs
from components.serving.recommendation import (
    LastGood,
    Recommendation,
    first_line,
    format_table,
    retrieval_order,
    stage_ms,
)
from components.serving.triton_client import RankerClient

__all__ = ["DependencyError", "IncompatibleVersions", "LastGood", "PinCache", "Recommendation", "RecommendConfig",
           "Recommender", "RecommendError", "RequestError", "check_limits", "format_table", "recommend"]


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
    milvus_token: str | None = None
    milvus_consistency: str = "Eventually"  # the searches' consistency level (stack milvus.consistency)
    triton_model: str = "ranker_ensemble"
    max_k: int = 200
    max_candidates: int = 2000
    stack: Any = None  # the StackConfig it came from (Feast connection settings), None: the repo's own yaml
    triton_timeout_s: float = 10.0
    # a one-shot command wants "Triton not reachable" at once; the service opens without it (unknown users get
    # popular pins while Triton is down, and /readyz reports Triton)
    check_triton_at_open: bool = True
    # the ranker features' pin side cached in process (ranker_features.PinCache): at most this many pins (0: off,
    # every request reads all pins through Feast), each re-read after max age; the service reads the pin_cache_warm
    # most popular pins into it in the background at start
    pin_cache_size: int = 200_000
    pin_cache_max_age_s: float = 600.0
    pin_cache_warm: int = 1000

    @classmethod
    def from_stack(cls, stack: Any, preprocess: str | Path | None = None, **overrides: Any) -> RecommendConfig:
        """The recommend path of a StackConfig (components.stackconfig): secrets resolved now."""
        kw = dict(feature_repo=Path(stack.feast.repo), milvus_uri=stack.milvus.uri, triton_url=stack.triton.url,
                  preprocess=Path(preprocess or stack.triton.repository), protocol=stack.triton.protocol,
                  alias=stack.milvus.alias, ef_search=stack.milvus.ef_search, milvus_token=stack.milvus_token(),
                  milvus_consistency=stack.milvus.consistency,
                  triton_model=stack.triton.model, max_k=stack.service.max_k,
                  max_candidates=stack.service.max_candidates, stack=stack)
        kw["candidates"] = min(500, kw["max_candidates"])
        kw.update(overrides)
        return cls(**kw)


class Recommender:
    """Holds the connections (feature store, index, Triton client) across requests.

    One Recommender serves one request at a time (the service keeps a pool, one per worker thread);
    ``cache`` (the last good user embeddings) and ``pin_cache`` (the ranker features' pin side) may be shared by a
    pool.
    """

    def __init__(self, cfg: RecommendConfig, cache: LastGood | None = None, pin_cache: PinCache | None = None):
        self.cfg = cfg
        self.cache = cache or LastGood()
        self.pin_cache = pin_cache if pin_cache is not None else PinCache(cfg.pin_cache_size, cfg.pin_cache_max_age_s)
        self.pre, ranker_version = read_preprocess(cfg.preprocess)
        self.tasks = list(self.pre["tasks"])
        if cfg.surface not in self.pre["surfaces"] and cfg.surface == RecommendConfig.surface:
            # a ranker trained on an imported dataset knows that dataset's surfaces (data.vocab, meta.json):
            # the first one is its default, as "homefeed" is for homefeed's own vocabulary
            self.cfg = cfg = replace(cfg, surface=self.pre["surfaces"][0])
        if cfg.surface not in self.pre["surfaces"]:
            raise RecommendError(f"surface '{cfg.surface}' unknown to the ranker; expected one of {self.pre['surfaces']}")
        check_limits(cfg.candidates, cfg.candidates, cfg.max_candidates, cfg.max_candidates)
        trained_on = self.pre.get("embedding_versions") or {}
        self.versions: dict[str, Any] = {"ranker": ranker_version, "ranker_user_embeddings": trained_on.get("user"),
                                         "ranker_pin_embeddings": trained_on.get("pin")}
        self.client = self.index = self.store = None
        try:
            self.index = self._open_milvus()
            self.store = self._open_feast()
            self.features = FeatureReader(self.store, self.pin_cache)
            self.client = self._open_triton()
            self._check_open_versions()
        except BaseException:
            self.close()
            raise
        pop_path = Path(cfg.feature_repo) / "sources" / feast_store.POPULAR_FILE
        self.popular = pq.read_table(pop_path).column("pin_id").to_numpy() if pop_path.exists() else np.zeros(0, np.int64)

    # ---- opening: each failure names its dependency ----
    def _open_feast(self):
        if not Path(self.cfg.feature_repo).is_dir():
            raise FileNotFoundError(f"{self.cfg.feature_repo}: no Feast repo instance at this path (run `homefeed "
                                    "features apply --repo ...` or set feast.repo in the stack file)")
        try:
            kw = {"stack": self.cfg.stack} if self.cfg.stack is not None else {}
            return feast_store.open_store(self.cfg.feature_repo, **kw)
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - registry/online store connection errors of any client library
            raise DependencyError("feast", f"feature store {self.cfg.feature_repo} cannot be opened: {e}") from e

    def _open_milvus(self) -> PinIndex:
        uri = self.cfg.milvus_uri
        if "://" not in uri and not Path(uri).exists():
            # Milvus Lite creates a new empty database at any path: a typo must not look like an empty index
            raise FileNotFoundError(f"{uri}: no Milvus Lite database at this path (build one with `homefeed index "
                                    f"build --uri {uri}` or pass a Milvus server URI http://host:19530)")
        try:
            kw = {"token": self.cfg.milvus_token} if self.cfg.milvus_token else {}
            index = PinIndex(uri, self.cfg.alias, self.cfg.ef_search, consistency=self.cfg.milvus_consistency, **kw)
            self.versions["index_collection"] = served_collection(index.client, self.cfg.alias)
            dim = index.dim()
        except Exception as e:  # noqa: BLE001 - grpc/milvus errors: unreachable, auth, no alias
            raise DependencyError("milvus", f"Milvus at {uri} (alias '{self.cfg.alias}'): {e}") from e
        if dim != self.pre["dims"]["d_user"]:
            index.close()
            raise IncompatibleVersions(f"{uri}: index '{self.cfg.alias}' holds {dim}-d pins but the ranker's user "
                                       f"embeddings are {self.pre['dims']['d_user']}-d; retrieval needs the same space")
        return index

    def _open_triton(self) -> RankerClient:
        cfg = self.cfg
        try:
            client = RankerClient(cfg.triton_url, cfg.protocol, model=cfg.triton_model, timeout_s=cfg.triton_timeout_s)
        except Exception as e:  # noqa: BLE001 - a malformed URL
            raise DependencyError("triton", f"Triton at {cfg.triton_url} ({cfg.protocol}): {e}") from e
        if not cfg.check_triton_at_open:
            return client
        try:
            ready = client.client.is_model_ready(client.model)
        except Exception as e:  # noqa: BLE001 - connection refused, timeouts, wrong protocol
            client.close()
            raise DependencyError("triton", f"Triton at {cfg.triton_url} ({cfg.protocol}) is not reachable: "
                                            f"{first_line(e)}") from e
        if not ready:
            client.close()
            raise DependencyError("triton", f"Triton at {cfg.triton_url}: model '{client.model}' is not ready")
        return client

    def refresh_index_version(self, max_age_s: float = 2.0) -> None:
        """Re-read which collection the alias serves (a daily run switches it), at most every ``max_age_s``."""
        now = time.monotonic()
        if now - self._index_checked < max_age_s:
            return
        try:
            name = served_collection(self.index.client, self.cfg.alias)
        except Exception as e:  # noqa: BLE001 - grpc / Milvus Lite errors
            raise DependencyError("milvus", f"{self.cfg.milvus_uri}: cannot read alias '{self.cfg.alias}': "
                                            f"{first_line(e)}") from e
        self._index_checked = now
        if name != self.versions.get("index_collection"):
            self.versions["index_collection"] = name
            self._check_open_versions()

    def _check_open_versions(self) -> None:
        """The indexed pin tower must be the ranker's user-embedding model (when both are recorded)."""
        self._index_checked = time.monotonic()
        indexed = collection_version(self.versions.get("index_collection") or "", self.cfg.alias)
        want = self.versions["ranker_user_embeddings"]
        self.versions["index_embeddings"] = indexed
        if indexed and want and indexed != version_slug(want):
            raise IncompatibleVersions(
                f"{self.cfg.milvus_uri}: alias '{self.cfg.alias}' serves {self.versions['index_collection']} "
                f"(pin tower of '{indexed}') but the ranker was trained on user embeddings of '{want}': "
                "publish the index and the ranker from the same PinnerFormer model")

    def check_user_version(self, version: str | None) -> None:
        """A user embedding of ``version`` must match the indexed pin tower and the ranker's training."""
        if not version:
            return
        indexed, want = self.versions.get("index_embeddings"), self.versions.get("ranker_user_embeddings")
        if indexed and version_slug(version) != indexed:
            raise IncompatibleVersions(f"feature store user embedding of '{version}' does not match the pin tower "
                                       f"indexed in Milvus ('{indexed}', {self.versions.get('index_collection')})")
        if want and version != want:
            raise IncompatibleVersions(f"feature store user embedding of '{version}' but the ranker "
                                       f"({self.versions['ranker']}) was trained on '{want}'")

    def close(self) -> None:
        for part in (self.client, self.index):
            if part is not None:
                try:
                    part.close()
                except Exception:  # noqa: BLE001, S110 - closing a connection to a dead server
                    pass
        self.client = self.index = None

    def __enter__(self) -> Recommender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- stages ----
    def user_embedding(self, user_id: int) -> np.ndarray | None:
        emb, _ = self.user_embedding_version(user_id)
        return emb

    def user_embedding_version(self, user_id: int) -> tuple[np.ndarray | None, str | None]:
        """(embedding or None, its model_version) from the ``retrieval_v1`` service."""
        out = self.store.get_online_features(features=self.features.service("retrieval_v1"),
                                             entity_rows=[{"user_id": int(user_id)}]).to_dict()
        emb = out["embedding"][0]
        return (None if emb is None else np.asarray(emb, np.float32)), (out.get("model_version") or [None])[0]

    def candidates(self, embedding: np.ndarray, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        ids, sims = self.index.search(embedding[None, :], n or self.cfg.candidates)
        keep = ids[0] >= 0
        return ids[0][keep], sims[0][keep]

    def ranker_features(self, user_id: int, pin_ids: np.ndarray,
                        cached: bool = True) -> tuple[dict[str, list[Any]], str | None]:
        """The ``ranker_v1`` service for (user, each pin): feature -> values (embeddings as ``user_embedding`` /
        ``pin_embedding``), and the pin embeddings' model_version; the pin side through the pin cache unless
        ``cached`` is False (then one Feast read of every row, as without a cache)."""
        if not cached:
            return self.features.uncached(user_id, pin_ids)
        return self.features.read(user_id, pin_ids, self.versions.get("index_collection"))

    def warm_pin_cache(self, n: int | None = None) -> int:
        """Read the ``n`` (default ``cfg.pin_cache_warm``) most popular pins' features into the pin cache; the
        number of pins now cached."""
        n = self.cfg.pin_cache_warm if n is None else n
        return self.features.warm(self.popular[:n].tolist(), self.versions.get("index_collection"))

    def ranker_inputs(self, user_id: int, pin_ids: np.ndarray, when: dt.datetime,
                      surface: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Raw ranker inputs (ranker_inputs.RAW_INPUTS) for (user, each pin); counts of filled missing values."""
        feats, _ = self.ranker_features(user_id, pin_ids)
        return raw_inputs(self.pre, feats, len(pin_ids), when, surface or self.cfg.surface)

    # ---- the path ----
    def _popular(self, user_id: int, k: int, exclude: set[int], fallback: str, msg: str, t: dict,
                 surface: str) -> Recommendation:
        pins = [int(p) for p in self.popular if int(p) not in exclude][:k]
        items = [{"pin_id": p, "rank": i + 1, "score": None, "probabilities": None, "similarity": None}
                 for i, p in enumerate(pins)]
        t["end"] = time.perf_counter()
        return Recommendation(int(user_id), fallback == "unknown_user", f"{msg}: the {len(items)} most popular pins",
                              items, stage_ms(t), fallback=fallback, versions=dict(self.versions), surface=surface)

    def recommend(self, user_id: int, k: int = 20, when: dt.datetime | None = None, surface: str | None = None,
                  exclude: list[int] | None = None, candidates: int | None = None) -> Recommendation:
        """The top ``k`` pins for ``user_id`` on ``surface``, never any of ``exclude``.

        Raises RequestError (bad k / candidates / surface), DependencyError (Milvus or Triton failing; the
        feature store failing falls back instead, see the module doc), IncompatibleVersions.
        """
        n = self.cfg.candidates if candidates is None else candidates
        check_limits(k, n, self.cfg.max_k, self.cfg.max_candidates)
        surface = self.cfg.surface if surface is None else surface
        if surface not in self.pre["surfaces"]:
            raise RequestError("surface", f"unknown surface {surface!r}; expected one of {self.pre['surfaces']}")
        excluded = {int(p) for p in exclude or []}
        when = when or dt.datetime.now(dt.UTC)
        t = {"start": time.perf_counter()}
        fallback = None
        try:
            emb, user_version = self.user_embedding_version(user_id)
            if emb is not None:
                self.cache.put(int(user_id), (emb, user_version))
        except Exception as e:  # noqa: BLE001 - any online-store failure (MATERIALIZING, connection): fall back
            cached = self.cache.get(int(user_id))
            if cached is None:
                t["feast_user"] = time.perf_counter()
                return self._popular(user_id, k, excluded, "feature_store_unavailable",
                                     f"feature store read failed ({first_line(e)})", t, surface)
            (emb, user_version), fallback = cached, "stale_user_embedding"
        t["feast_user"] = time.perf_counter()
        if emb is None:
            return self._popular(user_id, k, excluded, "unknown_user",
                                 f"user {user_id} has no embedding in the feature store (unknown or new user): "
                                 "cold start with", t, surface)
        self.refresh_index_version()
        self.check_user_version(user_version)
        try:
            pin_ids, sims = self.candidates(emb, n + len(excluded))
        except Exception as e:  # noqa: BLE001 - grpc / Milvus Lite errors
            raise DependencyError("milvus", f"search on {self.cfg.milvus_uri} alias '{self.cfg.alias}' failed: "
                                            f"{first_line(e)}") from e
        if excluded:
            keep = ~np.isin(pin_ids, np.fromiter(excluded, np.int64))
            pin_ids, sims = pin_ids[keep][:n], sims[keep][:n]
        t["milvus"] = time.perf_counter()
        if len(pin_ids) == 0:
            raise DependencyError("milvus", f"{self.cfg.milvus_uri}: index '{self.cfg.alias}' returned no candidates")
        versions = dict(self.versions, user_embeddings=user_version)
        try:
            feats, versions["pin_embeddings"] = self.ranker_features(user_id, pin_ids)
        except Exception as e:  # noqa: BLE001 - online-store failure: rank by retrieval similarity instead
            return retrieval_order(user_id, k, pin_ids, sims, t, versions, surface, "ranker_features_unavailable",
                                    f"feature store read of ranker features failed ({first_line(e)})")
        mismatch = pin_mismatch(versions["pin_embeddings"], self.versions)
        if mismatch:  # scores of a ranker on another model's pin embeddings would be noise: never serve them
            return retrieval_order(user_id, k, pin_ids, sims, t, versions, surface, "incompatible_pin_embeddings",
                                    mismatch)
        raw, filled = raw_inputs(self.pre, feats, len(pin_ids), when, surface)
        t["feast_features"] = time.perf_counter()
        try:
            probs, score = self.client.score(raw)
        except Exception as e:  # noqa: BLE001 - tritonclient errors: unavailable, timeout, model unloaded
            raise DependencyError("triton", f"{self.cfg.triton_url} ({self.cfg.protocol}) model "
                                            f"'{self.client.model}': {first_line(e)}") from e
        t["triton"] = time.perf_counter()
        order = np.argsort(-score, kind="stable")[:k]
        items = [{"pin_id": int(pin_ids[i]), "rank": r + 1, "score": float(score[i]),
                  "probabilities": {task: float(p) for task, p in zip(self.tasks, probs[i])},
                  "similarity": float(sims[i]), "retrieval_rank": int(i) + 1} for r, i in enumerate(order)]
        t["end"] = time.perf_counter()
        msg = f"ranked {len(pin_ids)} candidates from Milvus with the Triton ranker ensemble"
        if fallback:
            msg += " (feature store read failed: the user's last good embedding from this process's cache)"
        return Recommendation(int(user_id), False, msg, items, stage_ms(t), filled, fallback, versions, surface)


def recommend(cfg: RecommendConfig, user_id: int, k: int = 20, surface: str | None = None,
              exclude: list[int] | None = None) -> Recommendation:
    """One request end to end (opens and closes the connections)."""
    with Recommender(cfg) as r:
        return r.recommend(user_id, k, surface=surface, exclude=exclude)

