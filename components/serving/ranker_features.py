"""The ranker's features for (user, candidate pins) from Feast's ``ranker_v1`` service, with an in-process pin cache.

Why: Feast's ``get_online_features`` does per-row, per-view Python work (entity-key serialisation, one Redis
``HMGET`` per row and view, protobuf parsing, ``to_dict`` conversion per value). For 500 candidates over the four
views of ``ranker_v1`` that was 84% of the recommend path's mean on the server profile (docs/scale.md), and most of
it is the pin side (500 rows x 2 views) while the user side is one row. Pin-side features (pin features and the
PinSage pin embedding) change once a day, so :class:`PinCache` keeps them per pin id in process:

- Feast stays the store of record: a pin not in the cache (or older than ``max_age_s``) is read through
  ``get_online_features`` on the pin-side views of ``ranker_v1``, only for the missing pins, in one call; the user
  side (one row) is read per request.
- Invalidation: the whole cache is dropped when the Milvus alias starts serving another collection (a daily run
  published a new pin table: :meth:`PinCache.sync`); when a read returns pin embeddings of another
  ``model_version`` than the cached ones (then the request's pins are read again, so no response mixes two
  versions); and when the request's probe pin differs from its cached values: the per-request user read is one
  ``ranker_v1`` row (user, one candidate, rotating), so every request checks one cached pin against the store and a
  re-materialisation is seen at the first request whose probe pin changed. ``max_age_s`` bounds the rest.
- Bounded: at most ``max_entries`` pins, least recently used evicted first (:data:`BYTES_PER_ENTRY`).
- The values are those of the uncached read (:meth:`FeatureReader.uncached`): the same dict, the same pin version
  (tests/test_recommend_cache.py compares both and the ranked output on the real stack).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from components.serving.contract import RecommendError

SERVICE = "ranker_v1"
PIN_KEY, USER_KEY = "pin_id", "user_id"
PIN_VERSION = "pin_embedding__model_version"
# measured with tracemalloc for 20k entries of the synthetic schema (a sparse int, a dense float, a 64-d embedding,
# the version string): ~540 B of values (the float32 array 256 B + its header, the tuple, scalars, the string) and
# ~160 B of cache structure (the OrderedDict slot, the (time, values) pair): ~0.7 KB per pin at d=64, 200k ~ 140 MB
BYTES_PER_ENTRY = 700


class PinCache:
    """Pin-side ``ranker_v1`` values per pin id: bounded LRU, max age, dropped when the pin side is republished.

    Thread-safe; one per process (the service's Recommender pool shares it). ``max_entries`` 0 disables it.
    """

    def __init__(self, max_entries: int = 200_000, max_age_s: float = 600.0):
        if max_entries < 0 or max_age_s <= 0:
            raise ValueError(f"pin cache: max_entries must be >= 0 and max_age_s > 0, got {max_entries}, {max_age_s}")
        self.max_entries, self.max_age_s = max_entries, max_age_s
        self._d: OrderedDict[int, tuple[float, tuple]] = OrderedDict()
        self._lock = threading.Lock()
        self.generation: str | None = None  # the Milvus collection the cached pins were read for
        self.version: str | None = None  # the cached pin embeddings' model_version
        self.hits = self.misses = self.invalidations = 0
        self.epoch = 0  # +1 at every drop: rows read before a drop are not stored after it

    def __len__(self) -> int:
        return len(self._d)

    def sync(self, generation: str | None) -> None:
        """Drop everything when the served pin table changed (``generation``: the collection behind the alias)."""
        with self._lock:
            if generation != self.generation:
                self._clear(generation)

    def _clear(self, generation: str | None) -> None:
        if self._d:
            self.invalidations += 1
        self.epoch += 1
        self._d.clear()
        self.generation, self.version = generation, None

    def check(self, pin_id: int, fresh: tuple) -> bool:
        """Compare a pin just read from the store with its cached values; drop the cache when they differ. True
        if the cache was dropped."""
        with self._lock:
            hit = self._d.get(pin_id)
            if hit is None or _same(hit[1], fresh):
                return False
            self._clear(self.generation)
            return True

    def get_many(self, pin_ids: list[int]) -> list[tuple | None]:
        """The cached values per pin (None: missing or older than max_age_s); counts hits and misses."""
        now = time.monotonic()
        out: list[tuple | None] = []
        with self._lock:
            for p in pin_ids:
                hit = self._d.get(p)
                if hit is not None and now - hit[0] <= self.max_age_s:
                    self._d.move_to_end(p)
                    out.append(hit[1])
                else:
                    out.append(None)
            found = sum(v is not None for v in out)
            self.hits += found
            self.misses += len(out) - found
        return out

    def put_many(self, pin_ids: list[int], values: list[tuple], version: str | None, generation: str | None,
                 epoch: int | None = None) -> bool:
        """Store values read for ``generation`` with pin embeddings of ``version`` (read while ``epoch`` was current,
        if given). False (and the cache dropped) when ``version`` differs from the cached one: the caller must read
        every pin again."""
        now = time.monotonic()
        with self._lock:
            if generation != self.generation or (epoch is not None and epoch != self.epoch):
                return True  # the cache was dropped since these rows were read (another worker saw a change)
            if version and self.version and version != self.version:
                self._clear(generation)
                self.version = version
                return False
            if version:
                self.version = version
            for p, v in zip(pin_ids, values):
                self._d[p] = (now, v)
                self._d.move_to_end(p)
            while len(self._d) > self.max_entries:
                self._d.popitem(last=False)
        return True

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "size": len(self._d), "invalidations": self.invalidations}


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(
        (x is None) == (y is None) and (x is None or (np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y))
        for x, y in zip(a, b))


def _output_name(key: str) -> str | None:
    """The ranker's name for a ``view__feature`` column (embeddings by view); None for join keys and versions."""
    view, _, feat = key.partition("__")
    if not feat or feat == "model_version":
        return None
    return view if feat == "embedding" else feat


class FeatureReader:
    """Reads ``ranker_v1`` for one user and candidate pins from a Feast store, through a :class:`PinCache` or not."""

    def __init__(self, store: Any, cache: PinCache | None = None, registry_check_s: float = 1.0):
        self.store, self.cache = store, cache if cache is not None and cache.max_entries > 0 else None
        self.registry_check_s = registry_check_s
        self._services: dict[str, tuple[float, Any]] = {}
        self._split: tuple[tuple, list[str], list[str]] | None = None
        self._probe = 0  # which candidate this request checks against the store (rotates)

    def service(self, name: str = SERVICE) -> Any:
        """The feature service ``name``, looked up at most every ``registry_check_s`` (a registry query per call
        with allow_cache=False, and a protobuf-to-object conversion per call even from the cache: 2-25 ms each
        here). It comes from the registry copy get_online_features reads its views from (the file registry's copy
        follows the file's mtime, the SQL registry's its cache_ttl_seconds)."""
        now = time.monotonic()
        hit = self._services.get(name)
        if hit is None or now - hit[0] > self.registry_check_s:
            hit = self._services[name] = (now, self.store.get_feature_service(name, allow_cache=True))
        return hit[1]

    def _refs(self) -> tuple[Any, list[str], list[str]]:
        """(the service, its user-side refs, its pin-side refs) ``view:feature``, split by the views' join keys."""
        service = self.service()
        shape = tuple((proj.name, tuple(f.name for f in proj.features)) for proj in service.feature_view_projections)
        if self._split is None or self._split[0] != shape:
            user, pins = [], []
            for proj in service.feature_view_projections:
                keys = self.store.get_feature_view(proj.name, allow_registry_cache=True).join_keys
                if keys not in ([USER_KEY], [PIN_KEY]):
                    raise RecommendError(f"feature service {SERVICE}: view '{proj.name}' is keyed by {keys}; the "
                                         f"recommend path reads views keyed by {USER_KEY} or {PIN_KEY}")
                (user if keys == [USER_KEY] else pins).extend(f"{proj.name}:{f.name}" for f in proj.features)
            self._split = (shape, user, pins)
        return service, self._split[1], self._split[2]

    def uncached(self, user_id: int, pin_ids: np.ndarray) -> tuple[dict[str, list[Any]], str | None]:
        """The ``ranker_v1`` service for (user, each pin) in one Feast call: feature -> values (embeddings as
        ``user_embedding`` / ``pin_embedding``), and the pin embeddings' model_version (the first recorded)."""
        rows = [{USER_KEY: int(user_id), PIN_KEY: int(p)} for p in pin_ids]
        out = self.store.get_online_features(features=self.service(), entity_rows=rows,
                                             full_feature_names=True).to_dict()
        pin_version = next((v for v in out.get(PIN_VERSION, []) if v), None)
        result = {name: values for key, values in out.items() if (name := _output_name(key))}
        return result, pin_version

    def read(self, user_id: int, pin_ids: np.ndarray, generation: str | None) -> tuple[dict[str, list[Any]], str | None]:
        """As :meth:`uncached`, with the pin side from the cache (``generation``: the served Milvus collection)."""
        if self.cache is None:
            return self.uncached(user_id, pin_ids)
        service, user_refs, pin_refs = self._refs()
        ids = [int(p) for p in pin_ids]
        n = len(ids)
        probe = ids[self._probe % n]
        self._probe += 1
        # one row (user, probe pin) over the whole service: the user side, and one pin to check the cache against
        out = self.store.get_online_features(features=service, entity_rows=[{USER_KEY: int(user_id),
                                             PIN_KEY: probe}], full_feature_names=True).to_dict()
        user_keys = {ref.replace(":", "__", 1) for ref in user_refs}
        result = {name: out[key] * n for key in user_keys if (name := _output_name(key))}
        self.cache.sync(generation)
        pin_keys = [ref.replace(":", "__", 1) for ref in pin_refs]
        self.cache.check(probe, _rows({k: out[k] for k in pin_keys}, pin_keys)[0])
        names, values, pin_version = self._pins(ids, pin_refs, generation)
        for j, name in enumerate(names):
            if name:
                result[name] = [v[j] for v in values]
        return result, pin_version

    def _pins(self, ids: list[int], refs: list[str], generation: str | None) -> tuple[list, list[tuple], str | None]:
        """(output name per value slot, values per pin, the first recorded pin version)."""
        self.cache.sync(generation)
        keys = [ref.replace(":", "__", 1) for ref in refs]
        names = [_output_name(k) for k in keys]
        vi = keys.index(PIN_VERSION) if PIN_VERSION in keys else None
        for _ in range(2):  # a second pass only when the pin version changed under the cache
            epoch = self.cache.epoch
            got = self.cache.get_many(ids)
            missing = [p for p, v in zip(ids, got) if v is None]
            if missing:
                fresh = self._read_pins(missing, refs, keys)
                version = next((v[vi] for v in fresh if v[vi]), None) if vi is not None else None
                if not self.cache.put_many(missing, fresh, version, generation, epoch):
                    continue
                by_id = dict(zip(missing, fresh))
                got = [v if v is not None else by_id[p] for p, v in zip(ids, got)]
            pin_version = next((v[vi] for v in got if v[vi]), None) if vi is not None else None
            return names, got, pin_version
        raise RecommendError("feature store pin embeddings changed model_version twice within one request")

    def _read_pins(self, ids: list[int], refs: list[str], keys: list[str]) -> list[tuple]:
        out = self.store.get_online_features(features=refs, entity_rows={PIN_KEY: ids},
                                             full_feature_names=True).to_dict()
        return _rows(out, keys)

    def warm(self, pin_ids: list[int], generation: str | None, batch: int = 500) -> int:
        """Read ``pin_ids`` into the cache (e.g. the most popular pins at start); the number now cached."""
        if self.cache is None:
            return 0
        _, _, refs = self._refs()
        for i in range(0, len(pin_ids), batch):
            self._pins([int(p) for p in pin_ids[i:i + batch]], refs, generation)
        return len(self.cache)


def _rows(out: dict[str, list[Any]], keys: list[str]) -> list[tuple]:
    """Per-row value tuples (in ``keys`` order) of a Feast ``to_dict``; embeddings as float32 arrays: the same
    values the ranker input gets from Feast's lists, in a third of the memory."""
    cols = [out[k] for k in keys]
    for j, k in enumerate(keys):
        if k.endswith("__embedding"):
            cols[j] = [None if v is None else np.asarray(v, np.float32) for v in cols[j]]
    return list(zip(*cols))


def raw_inputs(pre: dict[str, Any], feats: dict[str, list[Any]], n: int, when: dt.datetime,
               surface: str) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Raw ranker inputs (ranker_inputs.RAW_INPUTS) for ``n`` rows from ``feats`` plus request-time features;
    missing values filled as training saw an unknown (dense: the training mean, sparse: id 0), counted per name."""
    context = {"s_hour": when.hour, "d_position": 0.0}  # request-time features
    filled: dict[str, int] = {}
    dense = np.zeros((n, len(pre["dense"]["names"])), np.float32)  # (n, dense)
    for j, (name, mean) in enumerate(zip(pre["dense"]["names"], pre["dense"]["mean"])):
        dense[:, j] = _column(name, feats, context, n, float(mean), filled)
    sparse = np.zeros((n, len(pre["sparse"]["names"])), np.int64)  # (n, sparse)
    for j, name in enumerate(pre["sparse"]["names"]):
        sparse[:, j] = _column(name, feats, context, n, 0, filled)
    surf = np.full((n, 1), pre["surfaces"].index(surface), np.int64)
    user = _embeddings(feats.get("user_embedding"), n, pre["dims"]["d_user"], "user_embedding", filled)
    pins = _embeddings(feats.get("pin_embedding"), n, pre["dims"]["d_pin"], "pin_embedding", filled)
    return {"dense": dense, "sparse": sparse, "surface": surf, "user_embedding": user, "pin_embedding": pins}, filled


def _column(name: str, feats: dict, context: dict, n: int, default: float, filled: dict[str, int]) -> np.ndarray:
    if name in feats:
        values = feats[name]
        missing = values.count(None)  # scalars only: count compares by identity, then ==
        if not missing:
            return np.array(values, np.float64)
        filled[name] = missing
        return np.array([default if v is None else v for v in values], np.float64)
    if name in context:
        return np.full(n, context[name], np.float64)
    filled[name] = n
    return np.full(n, default, np.float64)


def _embeddings(values: list | None, n: int, dim: int, name: str, filled: dict[str, int]) -> np.ndarray:
    """(n, dim) float32 rows of ``values`` (zeros where None, counted in ``filled``), in one conversion: the user
    side is one object repeated n times, the pin side one array or list per pin."""
    out = np.zeros((n, dim), np.float32)  # (n, dim)
    values = values or [None] * n
    first = values[0] if n else None
    if first is not None and all(v is first for v in values):  # the user side
        _check_dim(first, dim, name)
        out[:] = np.asarray(first, np.float32)  # (dim,) broadcast over the rows
        return out
    rows = [i for i, v in enumerate(values) if v is not None]
    if len(rows) < n:
        filled[name] = filled.get(name, 0) + n - len(rows)
    for i in rows:
        _check_dim(values[i], dim, name)
    if rows:
        out[rows] = np.asarray([values[i] for i in rows], np.float32)  # (len(rows), dim)
    return out


def _check_dim(v: Any, dim: int, name: str) -> None:
    if len(v) != dim:
        raise RecommendError(f"feature store {name} has {len(v)} values, the ranker expects {dim}")
