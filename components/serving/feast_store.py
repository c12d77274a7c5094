"""The Feast feature store: instantiate the repo, write its sources, apply, materialize, read.

``feature_repo/`` holds definitions only. A *repo instance* is a copy of it for one data directory
(``init_repo``): ``sources/`` (Parquet snapshots, ``write_sources``) and, on the local profile, ``state/``
(the file registry and the SQLite online store) live inside the instance. Its ``feature_store.yaml`` is
generated from the stack config (``components.stackconfig``): SQLite + file registry (``local``) or
Redis + SQL registry (``server``, a cluster), secrets as ``${VAR}`` placeholders.

- ``apply(repo_dir)`` imports every definition file of the instance (as ``feast apply`` does) and
  registers the objects, removing registered objects that are no longer defined.
- ``write_sources`` (``feast_sources``) writes the Parquet snapshots in batches of rows, stamping each row with
  when it last changed.
- ``materialize(repo_dir, date)`` loads every feature view's rows stamped from its last materialized end (or the
  beginning) up to the end of ``date`` (UTC) into the online store, ``batch_rows`` at a time through Feast's
  ``write_to_online_store``, and records the interval in Feast's registry as ``FeatureStore.materialize`` does.
  Re-running the latest date reloads the whole snapshot, so a corrected run replaces what that date wrote; an
  older date than the store holds is refused unless forced (a backfill must not move serving backwards).
- Reads keep working while a view is being materialized (``serve_features_while_materializing``).
- ``online_user_embeddings`` / ``online_ranker_features`` read the online store.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import logging
import re
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis
import yaml
from feast import Entity, FeatureService, FeatureStore, FeatureView
from feast.feature_view import FeatureViewState
from feast.infra.registry.file import FileRegistryStore
from feast.repo_config import RepoConfig

from components import stackconfig
from components.data import durable, io
from components.progress import Progress
from components.serving.feast_sources import (
    BATCH_ROWS,
    POPULAR_FILE,
    TS,
    FeatureStoreError,
    popular_pins,
    table_path,
    write_sources,
)
from components.serving.ranker_features import FeatureReader

__all__ = ["BATCH_ROWS", "POPULAR_FILE", "FeatureStoreError", "apply", "init_repo", "materialize", "open_store",
           "online_ranker_features", "online_user_embeddings", "popular_pins", "read_schema", "table_path",
           "write_sources"]

REPO_TEMPLATE = Path(__file__).resolve().parents[2] / "feature_repo"
SOURCE_NAMES = ("user_embedding", "pin_embedding", "user_features", "pin_features")
EPOCH = dt.datetime(1970, 1, 2, tzinfo=dt.UTC)


class _FileRegistryFlagWarning(logging.Filter):
    """Feast warns that ``serve_features_while_materializing`` "typically has no effect" on a file
    registry; its file registry does read the flag (``registry.Registry``), so the warning is noise here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "serve_features_while_materializing` is enabled but `registry_type` is 'file'" not in record.getMessage()


logging.getLogger("feast.repo_config").addFilter(_FileRegistryFlagWarning())


class AtomicFileRegistryStore(FileRegistryStore):
    """Feast's file registry store, written atomically (temp file + fsync + rename).

    Feast rewrites the registry file in place (truncate, then write) on every apply and on each
    materialization's state changes, so a concurrent reader (the recommend path refreshing its registry
    copy) can parse an empty or partial file and fail with "feature service ... does not exist". The
    ``local`` profile's feature_store.yaml names this class (``registry_store_type``).
    """

    def _write_registry(self, registry_proto) -> None:
        registry_proto.version_id = str(uuid.uuid4())
        registry_proto.last_updated.FromDatetime(dt.datetime.now(dt.UTC))
        durable.atomic_write_bytes(self._filepath, registry_proto.SerializeToString())


def init_repo(repo_dir: str | Path, template: str | Path = REPO_TEMPLATE,
              stack: stackconfig.StackConfig | None = None) -> Path:
    """Copy the definitions of ``template`` into ``repo_dir`` and write its ``feature_store.yaml`` generated
    from ``stack`` (None: the ``local`` profile, SQLite inside the instance). Sources and state already
    there are kept. Returns the repo directory."""
    repo_dir, template = Path(repo_dir), Path(template)
    if not (template / "definitions.py").exists():
        raise FileNotFoundError(f"{template}: not a Feast repo template (definitions.py missing)")
    repo_dir.mkdir(parents=True, exist_ok=True)
    if repo_dir.resolve() != template.resolve():
        for f in sorted(template.iterdir()):
            if f.is_file() and f.suffix == ".py":
                shutil.copy2(f, repo_dir / f.name)
        fs = stackconfig.feature_store_yaml(stack or stackconfig.load_stack("local"))
        durable.atomic_write_bytes(repo_dir / "feature_store.yaml", yaml.safe_dump(fs, sort_keys=False).encode())
    (repo_dir / "sources").mkdir(exist_ok=True)
    (repo_dir / "state").mkdir(exist_ok=True)
    return repo_dir


def _day_start(date: str) -> dt.datetime:
    start, _ = io.day_bounds(date)
    return dt.datetime.fromtimestamp(start, dt.UTC)


def open_store(repo_dir: str | Path, stack: stackconfig.StackConfig | None = None):
    """The FeatureStore of a repo instance, configured by ``stack`` (None: the instance's own
    feature_store.yaml, ``${VAR}`` placeholders from the environment). Credentials are checked here: a
    wrong Redis password or registry password is a FeatureStoreError naming the store."""
    repo_dir = Path(repo_dir).resolve()
    if stack is not None:
        raw = stackconfig.feature_store_yaml(stack)
        text = stackconfig.expand(yaml.safe_dump(raw), stackconfig.feast_secret_env(stack), f"stack {stack.source}")
    else:
        fs = repo_dir / "feature_store.yaml"
        if not fs.exists():
            raise FileNotFoundError(f"{repo_dir}: not a Feast repo instance (feature_store.yaml missing; run init_repo)")
        text = stackconfig.expand(fs.read_text(), {}, str(fs))
    config = RepoConfig(**yaml.safe_load(text))
    config.repo_path = repo_dir
    online = config.online_store
    if getattr(online, "type", "") == "redis":
        _check_redis(online.connection_string)
    try:
        store = FeatureStore(repo_path=str(repo_dir), config=config)
        if config.registry.registry_type == "sql":
            store.list_entities()  # the SQL registry connects lazily: check its credentials now
        return store
    except Exception as e:  # noqa: BLE001 - sqlalchemy/psycopg errors: name the registry, never the password
        if type(e).__module__.split(".")[0] in ("sqlalchemy", "psycopg"):
            where = _redact(str(config.registry.path))
            raise FeatureStoreError(f"Feast SQL registry at {where}: cannot connect: {_first_line(e)}") from None
        raise


def _redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return _redact(lines[0] if lines else type(e).__name__)


def _check_redis(connection_string: str) -> None:
    """Ping the Redis online store with Feast's connection options; a refused password names the store."""
    host, _, rest = connection_string.partition(",")
    address, _, port = host.rpartition(":")
    opts = dict(kv.split("=", 1) for kv in rest.split(",") if "=" in kv)
    client = redis.Redis(host=address or host, port=int(port or 6379), password=opts.get("password") or None,
                         socket_connect_timeout=5)
    try:
        client.ping()
    except redis.exceptions.AuthenticationError as e:
        raise FeatureStoreError(f"Redis online store at {host}: authentication failed ({e}); check "
                                f"feast.online_store.password") from None
    except redis.exceptions.ResponseError as e:
        raise FeatureStoreError(f"Redis online store at {host}: {e}") from None
    except redis.exceptions.ConnectionError as e:
        raise FeatureStoreError(f"Redis online store at {host}: not reachable ({e})") from None
    finally:
        client.close()


def _definitions(repo_dir: Path) -> list[Any]:
    """Import every definition file of the repo (as ``feast apply`` does) under a unique module name,
    so two repo instances in one process never share a cached module; collect the Feast objects."""
    objects: list[Any] = []
    for f in sorted(repo_dir.glob("*.py")):
        if f.name == "__init__.py":
            continue
        name = f"_homefeed_feast_{f.stem}_{uuid.uuid4().hex[:8]}"
        spec = importlib.util.spec_from_file_location(name, f)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise FeatureStoreError(f"{f}: failed to import Feast definitions: {e}") from e
        finally:
            sys.modules.pop(name, None)
        for obj in vars(module).values():
            if isinstance(obj, Entity | FeatureView | FeatureService) and not any(obj is o for o in objects):
                objects.append(obj)
    return objects


def apply(repo_dir: str | Path, stack: stackconfig.StackConfig | None = None) -> dict[str, list[str]]:
    """Register the repo's definitions (and delete registered objects no longer defined)."""
    repo_dir = Path(repo_dir).resolve()
    for name in SOURCE_NAMES:
        if not (repo_dir / "sources" / f"{name}.parquet").exists():
            raise FeatureStoreError(f"{repo_dir}/sources/{name}.parquet: missing; run write_sources first")
    store = open_store(repo_dir, stack)
    objects = _definitions(repo_dir)
    names = {type(o).__name__: [] for o in objects}
    for o in objects:
        names[type(o).__name__].append(o.name)
    stale: list[Any] = []
    for listed, cls in ((store.list_feature_services(), "FeatureService"), (store.list_feature_views(), "FeatureView"),
                        (store.list_entities(), "Entity")):
        stale += [o for o in listed if o.name not in names.get(cls, []) and o.name != "__dummy"]
    store.apply(objects, objects_to_delete=stale, partial=False)
    return names


def materialize(repo_dir: str | Path, date: str, stack: stackconfig.StackConfig | None = None,
                force: bool = False, batch_rows: int = BATCH_ROWS) -> dict[str, str]:
    """Load every feature view into the online store up to the end of ``date`` (UTC), ``batch_rows`` source rows
    at a time.

    A new date loads the rows stamped since the view's last materialized end (incremental: ``write_sources``
    stamps a row with the day it last changed). Re-running the latest date reloads the whole snapshot from the
    beginning, so corrected sources replace what the first run wrote (the sources hold one row per entity). A
    date older than what a view already holds is an error unless ``force`` (then that snapshot is reloaded).
    Returns per view the interval loaded and the rows written.
    """
    if batch_rows < 1:
        raise FeatureStoreError(f"batch_rows must be >= 1, got {batch_rows}")
    store = open_store(repo_dir, stack)
    end = _day_start(date) + dt.timedelta(days=1)
    views = store.list_feature_views()
    if not views:
        raise FeatureStoreError(f"{repo_dir}: no feature views registered; run apply first")
    done: dict[str, str] = {}
    with Progress(total=len(views), desc="materialize", unit="view") as bar:
        for fv in views:
            bar.set_description(f"materialize {fv.name}")
            done[fv.name] = _materialize_view(store, fv, repo_dir, date, end, force, batch_rows)
            bar.update(1)
    return done


def _materialize_view(store: Any, fv: Any, repo_dir: str | Path, date: str, end: dt.datetime, force: bool,
                      batch_rows: int) -> str:
    """One view: from its last materialized end (or the beginning, to reload) up to ``end``; the interval."""
    ends = [e if e.tzinfo else e.replace(tzinfo=dt.UTC) for _, e in fv.materialization_intervals]
    last = max(ends) if ends else None
    if last is not None and end < last and not force:
        raise FeatureStoreError(f"{repo_dir}: feature view '{fv.name}' already holds data through "
                                f"{last - dt.timedelta(days=1):%Y-%m-%d}; materializing {date} would move serving backwards (pass force)")
    start = last if last is not None and end > last else EPOCH
    previous = _begin(store, fv)
    try:
        rows, batches = _write_online(store, fv, start, end, batch_rows)
    except BaseException:
        if previous is not None:  # as FeatureStore.materialize: a failed run gives the view its state back
            fv.state = previous
            store.registry.apply_feature_view(fv, store.project, commit=True)
        raise
    store.registry.apply_materialization(fv, store.project, start, end)  # the interval; state AVAILABLE_ONLINE
    logging.getLogger(__name__).debug("materialize %s: %s .. %s, %d rows in %d batches", fv.name, start, end,
                                      rows, batches)
    return f"{start.isoformat()} .. {end.isoformat()}, {rows} rows" + (" (reload)" if start == EPOCH and last else "")


def _begin(store: Any, fv: Any) -> FeatureViewState | None:
    """Mark ``fv`` MATERIALIZING in the registry as ``FeatureStore.materialize`` does (readers keep reading it:
    ``serve_features_while_materializing``); the state to restore on failure (None: nothing changed)."""
    state = getattr(fv, "state", None)
    if state is None or state == FeatureViewState.STATE_UNSPECIFIED:
        return None
    if state == FeatureViewState.MATERIALIZING:  # left by a killed run: proceed, and restore GENERATED on failure
        return FeatureViewState.GENERATED
    if not state.can_transition_to(FeatureViewState.MATERIALIZING):
        raise FeatureStoreError(f"feature view '{fv.name}' is {state.name}, which cannot be materialized")
    fv.state = FeatureViewState.MATERIALIZING
    store.registry.apply_feature_view(fv, store.project, commit=True)
    return state


def _write_online(store: Any, fv: Any, start: dt.datetime, end: dt.datetime, batch_rows: int) -> tuple[int, int]:
    """Write the source rows of ``fv`` with ``start <= event_timestamp <= end`` (Feast's file offline store's
    window, both ends included) to the online store through ``FeatureStore.write_to_online_store`` (Feast's own
    row conversion and online write), one record batch at a time. (rows, batches written)."""
    source = fv.batch_source
    path = Path(source.path)
    path = path if path.is_absolute() else Path(store.repo_path) / path  # as Feast resolves a relative FileSource
    if not path.exists():
        raise FeatureStoreError(f"{path}: the source of feature view '{fv.name}' is missing; run write_sources")
    ts_field = source.timestamp_field
    columns = list(dict.fromkeys([*fv.join_keys, *(f.name for f in fv.features), ts_field]))
    lo, hi = pa.scalar(start, TS), pa.scalar(end, TS)
    rows = batches = 0
    for b in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
        ts = b.column(ts_field).cast(TS)
        b = b.filter(pc.and_(pc.greater_equal(ts, lo), pc.less_equal(ts, hi)))
        if b.num_rows:
            store.write_to_online_store(fv.name, df=b.to_pandas())
            rows, batches = rows + b.num_rows, batches + 1
    return rows, batches


def online_user_embeddings(repo_dir: str | Path, user_ids: list[int] | np.ndarray,
                           store: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (U, D) float32, found (U,) bool) from the ``retrieval_v1`` service."""
    store = store or open_store(repo_dir)
    rows = [{"user_id": int(u)} for u in user_ids]
    out = store.get_online_features(features=store.get_feature_service("retrieval_v1"),
                                    entity_rows=rows).to_dict()
    emb = out["embedding"]
    found = np.array([e is not None for e in emb], bool)
    dim = next((len(e) for e in emb if e is not None), 0)
    arr = np.zeros((len(rows), dim), np.float32)
    for i, e in enumerate(emb):
        if e is not None:
            arr[i] = e
    return arr, found


def online_ranker_features(repo_dir: str | Path, user_id: int, pin_ids: list[int] | np.ndarray,
                           store: Any = None) -> dict[str, list[Any]]:
    """The ``ranker_v1`` service for one user and candidate pins: feature name -> values per pin
    (None where the store has no value). Embeddings come as ``user_embedding`` / ``pin_embedding``.
    The recommend path's uncached read (``ranker_features.FeatureReader.uncached``)."""
    return FeatureReader(store or open_store(repo_dir)).uncached(int(user_id), np.asarray(pin_ids))[0]


def read_schema(repo_dir: str | Path) -> dict[str, dict[str, str]]:
    f = Path(repo_dir) / "sources" / "schema.json"
    if not f.exists():
        raise FileNotFoundError(f"{f}: missing; run write_sources first")
    return json.loads(f.read_text())
