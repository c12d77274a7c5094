"""The stack config: one typed file that names every store and server the platform reads and writes.

A stack file (YAML) has the sections ``feast`` (project, repo instance, online store sqlite | redis,
registry file | sql, offline store, optional feature-server URL), ``milvus`` (URI, token, alias, how many
collections to keep), ``triton`` (URL, protocol, model, served repository), ``embeddings`` (the
embedding store root) and ``service`` (the recommend service's token and limits). The pipeline steps,
the CLI, the recommend path and the Helm chart all derive their endpoints from it, so the pipeline
writes exactly where serving reads.

Credentials are references, never values: ``{env: NAME}`` (an environment variable) or
``{file: PATH}`` (a file, e.g. a mounted Secret), resolved only when a connection is made. A literal
string where a secret is expected is an error naming the key.

The Feast ``feature_store.yaml`` is generated from the stack (:func:`feature_store_yaml`): secrets
appear there as ``${VAR}`` placeholders that Feast expands from the environment when it reads the file
(``feast serve`` on a cluster); in this process :func:`feast_secret_env` gives the values to expand.

Profiles ship in ``components/configs/stack/``: ``local`` (Feast SQLite + file registry, Milvus Lite,
a local Triton) and ``server`` (Feast Redis + SQL registry on PostgreSQL, a Milvus server, Triton,
``feast serve``: the endpoints ``homefeed stack up --profile server`` fills in).
``load_stack(None)`` reads ``$HOMEFEED_STACK``, else the ``local`` profile. Relative paths in a stack
file resolve against the current directory (as every other CLI path does).
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from components.config import ConfigError

STACK_DIR = Path(__file__).parent / "configs" / "stack"
STACK_ENV = "HOMEFEED_STACK"
PROFILES = ("local", "server")


class StackConfigError(ConfigError):
    """A stack-file problem: the message names the file, the key and what was expected."""


class SecretError(StackConfigError):
    """A secret reference that cannot be resolved (unset variable, missing or empty file)."""


@dataclass(frozen=True)
class SecretRef:
    """A credential by reference: exactly one of ``env`` (variable name) or ``file`` (path)."""

    env: str | None = None
    file: str | None = None

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env else f"file {self.file}"

    def resolve(self, key: str = "secret") -> str:
        """The secret's value (stripped of a trailing newline); a clear error naming ``key`` if absent."""
        if self.env:
            value = os.environ.get(self.env)
            if not value:
                raise SecretError(f"{key}: environment variable {self.env} is not set (the secret is read from it)")
            return value
        path = Path(self.file)
        try:
            value = path.read_text().rstrip("\r\n")
        except OSError as e:
            raise SecretError(f"{key}: cannot read secret file {path}: {e.strerror or e}") from e
        if not value:
            raise SecretError(f"{key}: secret file {path} is empty")
        return value

    def to_yaml(self) -> dict[str, str]:
        return {"env": self.env} if self.env else {"file": self.file}


@dataclass
class OnlineStoreConfig:
    type: Literal["sqlite", "redis"] = "sqlite"
    path: str = "state/online.db"  # sqlite: relative to the repo instance
    connection_string: str = ""  # redis: host:port (extra Feast options after commas, no password)
    password: SecretRef | None = None  # redis: the server's password (requirepass)


@dataclass
class RegistryConfig:
    type: Literal["file", "sql"] = "file"
    path: str = "state/registry.db"  # file: relative to the repo instance; sql: an SQLAlchemy URL without password
    password: SecretRef | None = None  # sql: inserted into the URL's user info
    url: SecretRef | None = None  # sql: the whole URL from a secret instead (FEAST_REGISTRY_URL)
    cache_ttl_seconds: int = 60  # how long a reader trusts its registry copy (feast serve included)


@dataclass
class OfflineStoreConfig:
    type: Literal["file"] = "file"


@dataclass
class FeastConfig:
    project: str = "homefeed"
    repo: str = "out/serving/feature_repo"  # the repo instance: definitions, sources/, generated feature_store.yaml
    online_store: OnlineStoreConfig = field(default_factory=OnlineStoreConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    offline_store: OfflineStoreConfig = field(default_factory=OfflineStoreConfig)
    server_url: str = ""  # the Feast feature server (feast serve), "" = none
    serve_while_materializing: bool = True  # reads keep the last values while a view is MATERIALIZING


@dataclass
class MilvusConfig:
    uri: str = "out/serving/milvus.db"  # a path = Milvus Lite; http://host:19530 = a Milvus server
    token: SecretRef | None = None  # "user:password" (or an API key) for a server with authorization
    alias: str = "pins"
    keep_collections: int = 3  # the served collection plus the previous ones kept for rollback
    ef_search: int = 128
    # the recommend path's searches: a published collection is never written again, so they need not wait for
    # newer writes (components/serving/milvus_search.py: Strong waits for a time tick per search)
    consistency: Literal["Strong", "Bounded", "Eventually"] = "Eventually"


@dataclass
class TritonConfig:
    url: str = "127.0.0.1:8001"
    protocol: Literal["grpc", "http"] = "grpc"
    model: str = "ranker_ensemble"
    repository: str = "out/serving/triton_repository"  # the served model repository (preprocess.json)


@dataclass
class EmbeddingsConfig:
    root: str = "out/serving/embeddings"  # VersionedStore roots: users/, pins/, pinsage/


@dataclass
class ServiceConfig:
    token: SecretRef | None = None  # the recommend service's bearer token
    max_k: int = 200
    max_candidates: int = 2000


@dataclass
class StackConfig:
    profile: str = "local"
    feast: FeastConfig = field(default_factory=FeastConfig)
    milvus: MilvusConfig = field(default_factory=MilvusConfig)
    triton: TritonConfig = field(default_factory=TritonConfig)
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    source: str = field(default="", compare=False)  # the file it was read from (not written)

    def milvus_token(self) -> str | None:
        return self.milvus.token.resolve("milvus.token") if self.milvus.token else None

    def redis_password(self) -> str | None:
        pw = self.feast.online_store.password
        return pw.resolve("feast.online_store.password") if pw else None


# ---- parsing ------------------------------------------------------------------------------------

def _secret(value: Any, where: str) -> SecretRef:
    if isinstance(value, str):
        raise StackConfigError(f"{where}: a literal secret is not allowed in a stack file; use "
                               f"{{env: VARIABLE}} or {{file: /path/to/secret}}")
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in ("env", "file"):
        raise StackConfigError(f"{where}: expected a secret reference {{env: NAME}} or {{file: PATH}}, got {value!r}")
    (kind, ref), = value.items()
    if not isinstance(ref, str) or not ref:
        raise StackConfigError(f"{where}.{kind}: expected a non-empty string, got {ref!r}")
    if kind == "env" and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", ref):
        raise StackConfigError(f"{where}.env: '{ref}' is not an environment variable name")
    return SecretRef(**{kind: ref})


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise StackConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise StackConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(fields))}")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _value(hints[name], value, key)
    return cls(**kwargs)


def _value(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is SecretRef:
        return _secret(value, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is Literal:
        if value not in args:
            raise StackConfigError(f"{key}: '{value}' is not one of {', '.join(map(str, args))}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise StackConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise StackConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise StackConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise StackConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - a new field type


def _check(cfg: StackConfig, where: str) -> StackConfig:
    f = cfg.feast
    if f.online_store.type == "redis" and not f.online_store.connection_string:
        raise StackConfigError(f"{where}: feast.online_store.connection_string: required for a redis online store "
                               "(host:port)")
    if f.online_store.type == "redis" and "password=" in f.online_store.connection_string:
        raise StackConfigError(f"{where}: feast.online_store.connection_string: holds a literal password; use "
                               "feast.online_store.password: {env: REDIS_PASSWORD}")
    if f.registry.type == "sql":
        if f.registry.url is None and not f.registry.path:
            raise StackConfigError(f"{where}: feast.registry: a sql registry needs path (an SQLAlchemy URL) or url "
                                   "({env: FEAST_REGISTRY_URL})")
        if f.registry.path and urllib.parse.urlsplit(f.registry.path).password:
            raise StackConfigError(f"{where}: feast.registry.path: holds a literal password; use "
                                   "feast.registry.password: {env: FEAST_REGISTRY_PASSWORD}")
    if cfg.milvus.keep_collections < 1:
        raise StackConfigError(f"{where}: milvus.keep_collections: must be >= 1 (the served collection), "
                               f"got {cfg.milvus.keep_collections}")
    for key, value in (("service.max_k", cfg.service.max_k), ("service.max_candidates", cfg.service.max_candidates)):
        if value < 1:
            raise StackConfigError(f"{where}: {key}: must be >= 1, got {value}")
    return cfg


def parse_stack(raw: Any, where: str = "stack") -> StackConfig:
    """A StackConfig from a parsed YAML mapping; errors name ``where`` and the key."""
    try:
        cfg = _build(StackConfig, raw, "")
    except StackConfigError as e:
        raise StackConfigError(f"{where}: {e}") from None
    return _check(cfg, where)


def profile_path(profile: str) -> Path:
    return STACK_DIR / f"{profile}.yaml"


def load_stack(path_or_profile: str | Path | None = None) -> StackConfig:
    """A stack file's path, a profile name (``local``, ``server``), or None: ``$HOMEFEED_STACK``, else ``local``."""
    if path_or_profile is None or str(path_or_profile) == "":
        path_or_profile = os.environ.get(STACK_ENV) or "local"
    p = Path(path_or_profile)
    if not p.exists() and profile_path(str(path_or_profile)).exists() and "/" not in str(path_or_profile):
        p = profile_path(str(path_or_profile))
    if not p.is_file():
        known = ", ".join(sorted(f.stem for f in STACK_DIR.glob("*.yaml")))
        raise StackConfigError(f"{path_or_profile}: no such stack file or profile (profiles: {known})")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise StackConfigError(f"{p}: not valid YAML: {e}") from None
    cfg = parse_stack(raw or {}, str(p))
    cfg.source = str(p)
    return cfg


def to_dict(cfg: StackConfig) -> dict[str, Any]:
    """The YAML mapping of a stack (secrets as references, ``None`` values left out)."""

    def conv(obj: Any) -> Any:
        if isinstance(obj, SecretRef):
            return obj.to_yaml()
        if dataclasses.is_dataclass(obj):
            return {f.name: conv(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                    if f.name != "source" and getattr(obj, f.name) is not None}
        return obj

    return conv(cfg)


def dump_stack(cfg: StackConfig, path: str | Path) -> Path:
    """Write a stack file (atomically: a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
    return path


# ---- the Feast config derived from the stack -----------------------------------------------------

# Placeholder variables for secrets read from files: Feast can expand only environment variables.
_FILE_VARS = {"online_store": "HOMEFEED_FEAST_REDIS_PASSWORD", "registry": "HOMEFEED_FEAST_REGISTRY_PASSWORD",
              "registry_url": "HOMEFEED_FEAST_REGISTRY_URL"}


def _placeholder(ref: SecretRef, slot: str) -> str:
    return ref.env if ref.env else _FILE_VARS[slot]


def feature_store_yaml(cfg: StackConfig) -> dict[str, Any]:
    """Feast's ``feature_store.yaml`` for this stack, secrets as ``${VAR}`` placeholders (see module doc)."""
    f = cfg.feast
    if f.online_store.type == "sqlite":
        online: dict[str, Any] = {"type": "sqlite", "path": f.online_store.path}
    else:
        conn = f.online_store.connection_string
        if f.online_store.password is not None:
            conn += f",password=${{{_placeholder(f.online_store.password, 'online_store')}}}"
        # one writer publishes whole daily snapshots: a re-run of a date must overwrite rows with the same
        # event timestamp, which Redis' timestamp de-duplication would skip (feast_store.materialize guards
        # against older dates itself)
        online = {"type": "redis", "connection_string": conn, "skip_dedup": True}
    reg = f.registry
    if reg.type == "file":
        # Feast's own file store rewrites the file in place: readers during a write fail (feast_store.py)
        registry: dict[str, Any] = {"registry_type": "file", "path": reg.path,
                                    "registry_store_type": "components.serving.feast_store.AtomicFileRegistryStore"}
    elif reg.url is not None:
        registry = {"registry_type": "sql", "path": f"${{{_placeholder(reg.url, 'registry_url')}}}"}
    else:
        path = reg.path
        if reg.password is not None:
            parts = urllib.parse.urlsplit(path)
            user = parts.username or "postgres"
            host = parts.netloc.rsplit("@", 1)[-1]
            netloc = f"{user}:${{{_placeholder(reg.password, 'registry')}}}@{host}"
            path = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
        registry = {"registry_type": "sql", "path": path, "sqlalchemy_config_kwargs": {"echo": False,
                                                                                      "pool_pre_ping": True}}
    registry["cache_ttl_seconds"] = reg.cache_ttl_seconds
    registry["serve_features_while_materializing"] = f.serve_while_materializing
    return {"project": f.project, "provider": "local", "registry": registry, "online_store": online,
            "offline_store": {"type": f.offline_store.type}, "entity_key_serialization_version": 3}


def feast_secret_env(cfg: StackConfig) -> dict[str, str]:
    """The values of the ``${VAR}`` placeholders of :func:`feature_store_yaml`, resolved now (URL parts quoted)."""
    f = cfg.feast
    env: dict[str, str] = {}
    if f.online_store.type == "redis" and f.online_store.password is not None:
        env[_placeholder(f.online_store.password, "online_store")] = f.online_store.password.resolve(
            "feast.online_store.password")
    if f.registry.type == "sql":
        if f.registry.url is not None:
            env[_placeholder(f.registry.url, "registry_url")] = f.registry.url.resolve("feast.registry.url")
        elif f.registry.password is not None:
            env[_placeholder(f.registry.password, "registry")] = urllib.parse.quote(
                f.registry.password.resolve("feast.registry.password"), safe="")
    return env


def expand(text: str, env: dict[str, str], where: str) -> str:
    """``${VAR}`` placeholders of ``text`` from ``env`` (then the process environment); an unset one is an error."""

    def sub(m: re.Match) -> str:
        name = m.group(1)
        value = env.get(name, os.environ.get(name))
        if value is None:
            raise SecretError(f"{where}: ${{{name}}} is not set (a secret the Feast config reads from the environment)")
        return value

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, text)
