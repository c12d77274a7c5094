"""The recommend service: one authenticated HTTP endpoint over the recommend path (FastAPI + uvicorn).

    POST /v1/recommend  {"user_id": int, "k": int = 20, "surface": str = "homefeed", "exclude": [int] = [],
                         "candidates": int = <stack default>}           (Authorization: Bearer <token>)
    GET  /healthz       200 while the process serves HTTP
    GET  /readyz        200 only when Feast, Milvus and Triton answer (and the versions agree); else 503
                        with the state of each
    GET  /metrics       Prometheus text format

Connections are held across requests: a pool of :class:`Recommender` objects (one per concurrent request,
at most ``concurrency``), opened lazily and reopened after a dependency failed, so the service starts
even while a dependency is down and recovers when it is back. The last good user embeddings are shared
by the pool (the feature-store fallback).

Status codes: 401 no or wrong bearer token (constant-time compare), 400 malformed JSON, 422 a bad field
(the message names it), 503 a dependency failing (the body names it: ``feast``, ``milvus``, ``triton``)
or incompatible model versions, 500 anything else (counted by class in the metrics).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pymilvus import MilvusClient
from starlette.concurrency import run_in_threadpool

from components.serving import feast_store
from components.serving.contract import parse_request
from components.serving.milvus_index import connect, disconnect, served_collection
from components.serving.ranker_features import PinCache
from components.serving.recommend import (
    DependencyError,
    IncompatibleVersions,
    LastGood,
    RecommendConfig,
    Recommender,
    RecommendError,
    RequestError,
)
from components.serving.recommendation import first_line as _first_line
from components.serving.triton_client import RankerClient

DEPENDENCIES = ("feast", "milvus", "triton")
STAGES = ("feast_user", "milvus", "feast_features", "triton", "total")
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


@dataclass
class ServiceSettings:
    recommend: RecommendConfig
    token: str  # the bearer token's value (resolved from a file / env reference, never from a config literal)
    concurrency: int = 8  # Recommenders in the pool = requests served at once
    default_k: int = 20
    acquire_timeout_s: float = 30.0


class Metrics:
    """The service's Prometheus metrics (one registry per app, so tests can run several apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("homefeed_requests_total", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=self.registry)
        self.errors = Counter("homefeed_request_errors_total", "failed recommend requests by error class",
                              ["error_class"], registry=self.registry)
        self.fallbacks = Counter("homefeed_fallbacks_total", "recommend responses served by a fallback, by reason",
                                 ["reason"], registry=self.registry)
        self.latency = Histogram("homefeed_request_latency_seconds", "recommend request latency (whole request)",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage = Histogram("homefeed_stage_latency_seconds", "recommend latency per stage",
                               ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.up = Gauge("homefeed_dependency_up", "1 if the dependency answered the last readiness probe",
                        ["dependency"], registry=self.registry)
        self.pool = Gauge("homefeed_recommenders_open", "recommend-path connections held open",
                          registry=self.registry)
        self.versions = Gauge("homefeed_serving_version_info", "1 for the model versions the last ranked response "
                              "was served with (ranker export digest, user-embedding model, Milvus collection)",
                              ["ranker_version", "user_embedding_version", "pin_index_collection"],
                              registry=self.registry)
        self._versions_lock = threading.Lock()
        self._served: tuple[str, str, str] | None = None

    def set_versions(self, versions: dict[str, Any]) -> None:
        """Point ``homefeed_serving_version_info`` at a ranked response's versions (one series: a change drops the old)."""
        labels = (str(versions.get("ranker") or ""), str(versions.get("user_embeddings") or ""),
                  str(versions.get("index_collection") or ""))
        with self._versions_lock:
            if labels == self._served:
                return
            if self._served is not None:
                self.versions.remove(*self._served)
            self.versions.labels(*labels).set(1)
            self._served = labels


class PinCacheCollector:
    """``homefeed_pin_cache_{hits,misses,invalidations}_total`` and ``homefeed_pin_cache_entries``, read from the
    pool's shared :class:`PinCache` at each scrape."""

    def __init__(self, cache: PinCache):
        self.cache = cache

    def collect(self):
        stats = self.cache.stats()
        for name, doc in (("hits", "ranker-feature pin lookups answered by the in-process pin cache"),
                          ("misses", "ranker-feature pin lookups read through Feast (not cached or expired)"),
                          ("invalidations", "times the pin cache was dropped (new pin table or pin model)")):
            yield CounterMetricFamily(f"homefeed_pin_cache_{name}", doc, value=stats[name])
        yield GaugeMetricFamily("homefeed_pin_cache_entries", f"pins in the pin cache (at most "
                                f"{self.cache.max_entries})", value=stats["size"])


class RecommenderPool:
    """At most ``size`` Recommenders, each used by one request at a time; a broken one is closed and reopened."""

    def __init__(self, cfg: RecommendConfig, size: int, metrics: Metrics, timeout_s: float = 30.0):
        self.cfg, self.size, self.metrics, self.timeout_s = cfg, size, metrics, timeout_s
        self.cache = LastGood()
        self.pin_cache = PinCache(cfg.pin_cache_size, cfg.pin_cache_max_age_s)
        self._idle: queue.LifoQueue[Recommender] = queue.LifoQueue()
        self._lock = threading.Lock()
        self._open = 0
        self.last_error: str | None = None

    @contextlib.contextmanager
    def acquire(self) -> Iterator[Recommender]:
        rec = self._get()
        healthy = False
        try:
            yield rec
            healthy = True
        except (RequestError, IncompatibleVersions):
            healthy = True  # the request was bad or the data inconsistent; the connections are fine
            raise
        finally:
            if healthy:
                self._idle.put(rec)
            else:
                self._discard(rec)

    def _get(self) -> Recommender:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            grow = self._open < self.size
            if grow:
                self._open += 1
        if not grow:
            try:
                return self._idle.get(timeout=self.timeout_s)
            except queue.Empty:
                raise DependencyError("service", f"all {self.size} recommend workers busy for "
                                                 f"{self.timeout_s:.0f} s") from None
        try:
            rec = Recommender(self.cfg, cache=self.cache, pin_cache=self.pin_cache)
        except BaseException as e:
            with self._lock:
                self._open -= 1
            self.last_error = str(e)
            raise
        self.last_error = None
        self.metrics.pool.set(self._open)
        return rec

    def reopen(self) -> None:
        """Take or open one Recommender and put it back (an open that succeeds clears ``last_error``)."""
        self._idle.put(self._get())

    def _discard(self, rec: Recommender) -> None:
        rec.close()
        with self._lock:
            self._open -= 1
        self.metrics.pool.set(self._open)

    def close(self) -> None:
        while True:
            try:
                self._discard(self._idle.get_nowait())
            except queue.Empty:
                return


class Probes:
    """Readiness: each dependency asked directly with its own connection (serialised, reopened on failure)."""

    def __init__(self, cfg: RecommendConfig):
        self.cfg = cfg
        self._lock = threading.Lock()
        self._store: Any = None
        self._triton: RankerClient | None = None

    def feast(self) -> str:
        if not Path(self.cfg.feature_repo).is_dir():  # before importing feast (seconds on a busy machine)
            raise FileNotFoundError(f"{self.cfg.feature_repo}: no Feast repo instance at this path")
        if self._store is None:
            kw = {"stack": self.cfg.stack} if self.cfg.stack is not None else {}
            self._store = feast_store.open_store(self.cfg.feature_repo, **kw)
        try:
            self._store.get_online_features(features=self._store.get_feature_service("retrieval_v1"),
                                            entity_rows=[{"user_id": -1}]).to_dict()
        except Exception as e:
            kind = getattr(self._store.config.online_store, "type", "the")
            self._store = None
            raise RecommendError(f"{kind} online store read failed: {_first_line(e)}") from e
        return "ok"

    def milvus(self) -> str:
        uri = self.cfg.milvus_uri
        if "://" not in uri and not Path(uri).exists():
            raise FileNotFoundError(f"{uri}: no Milvus Lite database at this path")
        kw = {"token": self.cfg.milvus_token} if self.cfg.milvus_token else {}
        if "://" in uri:
            client = MilvusClient(uri=uri, timeout=5, **kw)  # a server: a short-lived client with a timeout
            try:
                name = served_collection(client, self.cfg.alias)
            finally:
                client.close()
        else:
            client = connect(uri)
            try:
                name = served_collection(client, self.cfg.alias)
            finally:
                disconnect(client, uri)
        if name is None:
            raise RecommendError(f"no collection behind alias '{self.cfg.alias}'")
        return f"ok ({name})"

    def triton(self) -> str:
        if self._triton is None:
            self._triton = RankerClient(self.cfg.triton_url, self.cfg.protocol, model=self.cfg.triton_model,
                                        timeout_s=5.0)
        try:
            ready = self._triton.client.is_model_ready(self._triton.model)
        except Exception:
            self._triton.close()
            self._triton = None
            raise
        if not ready:
            raise RecommendError(f"model '{self.cfg.triton_model}' is not ready")
        return "ok"

    def check(self) -> dict[str, str]:
        out: dict[str, str] = {}
        with self._lock:
            for dep in DEPENDENCIES:
                try:
                    out[dep] = getattr(self, dep)()
                except Exception as e:  # noqa: BLE001 - any failure is "not ready", with its reason
                    out[dep] = f"unavailable: {_first_line(e)}"
        return out

    def close(self) -> None:
        if self._triton is not None:
            self._triton.close()


def _bearer_ok(header: str | None, token: str) -> bool:
    scheme, _, value = (header or "").partition(" ")
    # compare_digest on bytes: constant time whatever the length and content of the presented value
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def create_app(settings: ServiceSettings):
    """The FastAPI application (the pool opens its connections on the first requests)."""
    if not settings.token:
        raise ValueError("the recommend service needs a bearer token (an empty token would admit anyone)")
    metrics = Metrics()
    cfg = dataclasses.replace(settings.recommend, check_triton_at_open=False)
    pool = RecommenderPool(cfg, settings.concurrency, metrics, settings.acquire_timeout_s)
    probes = Probes(settings.recommend)
    metrics.registry.register(PinCacheCollector(pool.pin_cache))

    def warm() -> None:
        """Open the first connections in the background: the first requests and probes do not pay for imports
        and registry loads, and an unreachable dependency shows up in /readyz at once. Then the most popular
        pins' ranker features go into the pin cache (readiness does not wait for it)."""
        probes.check()
        with contextlib.suppress(Exception), pool.acquire() as rec:
            rec.warm_pin_cache()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=warm, name="warm", daemon=True).start()
        yield
        await run_in_threadpool(pool.close)
        await run_in_threadpool(probes.close)

    app = FastAPI(title="homefeed recommend", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.pool, app.state.metrics, app.state.probes = pool, metrics, probes

    def error(status: int, endpoint: str, error_class: str, message: str, **extra: Any) -> JSONResponse:
        metrics.requests.labels(endpoint, str(status)).inc()
        if endpoint == "/v1/recommend":
            metrics.errors.labels(error_class).inc()
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": error_class, "message": message, **extra}, status_code=status, headers=headers)

    def serve(req: dict[str, Any]) -> dict[str, Any]:
        with pool.acquire() as rec:
            out = rec.recommend(req["user_id"], req["k"], surface=req["surface"], exclude=req["exclude"],
                                candidates=req["candidates"])
        return out.to_dict()

    @app.post("/v1/recommend")
    async def recommend(request: Request):
        ep = "/v1/recommend"
        if not _bearer_ok(request.headers.get("authorization"), settings.token):
            return error(401, ep, "unauthorized", "a valid bearer token is required (Authorization: Bearer <token>)")
        t0 = time.perf_counter()
        try:
            req = parse_request(await request.body(), settings.default_k, settings.recommend.candidates)
            out = await run_in_threadpool(serve, req)
        except RequestError as e:
            status = 400 if e.field == "body" else 422
            return error(status, ep, "bad_request", str(e), field=e.field)
        except IncompatibleVersions as e:
            return error(503, ep, "incompatible_versions", str(e), dependency="versions")
        except DependencyError as e:
            return error(503, ep, f"dependency_{e.dependency}", str(e), dependency=e.dependency)
        except (RecommendError, FileNotFoundError) as e:
            return error(503, ep, "unavailable", str(e))
        except Exception as e:  # noqa: BLE001 - counted and reported, never a traceback to the client
            return error(500, ep, "internal", f"{type(e).__name__}: {_first_line(e)}")
        metrics.latency.observe(time.perf_counter() - t0)
        for stage, ms in out["timings_ms"].items():
            if stage in STAGES:
                metrics.stage.labels(stage).observe(ms / 1000)
        if out["fallback"]:
            metrics.fallbacks.labels(out["fallback"]).inc()
        if out["versions"].get("user_embeddings"):  # the user-side path ran: these versions served it
            metrics.set_versions(out["versions"])
        metrics.requests.labels(ep, "200").inc()
        return JSONResponse(out)

    @app.get("/healthz")
    async def healthz():
        metrics.requests.labels("/healthz", "200").inc()
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        deps = await run_in_threadpool(probes.check)
        for dep, state in deps.items():
            metrics.up.labels(dep).set(1 if state.startswith("ok") else 0)
        not_ready = [d for d, s in deps.items() if not s.startswith("ok")]
        if not not_ready and pool.last_error:  # the last open failed (e.g. racing a probe at start): retry it once
            with contextlib.suppress(Exception):
                await run_in_threadpool(pool.reopen)  # a success clears last_error: no request needed to recover
        if not not_ready and pool.last_error:
            deps["recommender"] = f"unavailable: {pool.last_error}"
            not_ready.append("recommender")
        status = 503 if not_ready else 200
        metrics.requests.labels("/readyz", str(status)).inc()
        return JSONResponse({"ready": not not_ready, "not_ready": not_ready, "dependencies": deps},
                            status_code=status)

    @app.get("/metrics")
    async def prometheus():
        metrics.requests.labels("/metrics", "200").inc()
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(404)
    async def not_found(request: Request, exc):
        return error(404, "other", "not_found", f"no endpoint {request.method} {request.url.path}")

    @app.exception_handler(405)
    async def not_allowed(request: Request, exc):
        return error(405, "other", "method_not_allowed", f"{request.method} is not allowed on {request.url.path}")

    return app


def run(settings: ServiceSettings, host: str = "127.0.0.1", port: int = 8080, tls_cert: str | None = None,
        tls_key: str | None = None, log_level: str = "warning") -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles both and closes the pool through the lifespan)."""
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    for f in (tls_cert, tls_key):
        if f and not Path(f).is_file():
            raise FileNotFoundError(f"{f}: TLS certificate/key file not found")
    config = uvicorn.Config(create_app(settings), host=host, port=port, log_level=log_level, access_log=False,
                            ssl_certfile=tls_cert, ssl_keyfile=tls_key, lifespan="on", timeout_graceful_shutdown=10)
    uvicorn.Server(config).run()
