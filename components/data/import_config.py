"""The import config of ``homefeed data import``: what the user's tables hold and the rules to apply.

One YAML file (see ``components/configs/import/*.yaml`` and ``docs/data.md``) with these sections;
paths are relative to the config file's folder. Every key is checked: an unknown key, a wrong type or
a rule that names an undeclared action is a :class:`~components.config.ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.config import ConfigError
from components.data.schemas import TASKS
from components.data.vocab import MAX_ACTION_TYPES, MAX_SURFACES

TIMESTAMP_UNITS = ("auto", "s", "ms", "us", "ns", "datetime")
FORMATS = ("auto", "csv", "tsv", "parquet")
COLLECTION_SOURCES = ("none", "table", "column", "item_column", "user_positives")
PARTITIONS = ("auto", "day", "month")


@dataclass
class Source:
    """A table file: CSV/TSV (``sep``) or Parquet; ``format: auto`` goes by the file suffix."""

    path: str = ""
    format: str = "auto"  # auto | csv | tsv | parquet
    sep: str | None = None  # CSV separator; auto: tab for .tsv/.inter/.tab, else comma
    na_values: list[str] = field(default_factory=list)  # CSV cells that mean "missing" (besides empty)


@dataclass
class Interactions(Source):
    """The interaction log: one row per user action on an item."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    timestamp_unit: str = "auto"  # auto (numbers: s, text: datetime) | s | ms | us | ns | datetime
    timestamp_format: str | None = None  # strptime format for text timestamps (None: ISO 8601 and friends)
    event: str | None = None  # event-type column; `actions` maps its values
    signal: str | None = None  # numeric column (rating, watch %); `actions` maps ranges of it
    duration: str | None = None  # seconds spent (optional; 0 when absent)
    surface: str | None = None  # where it happened (optional; `surfaces` maps its values)
    collection: str | None = None  # basket/session/list id (collections.source: column)


@dataclass
class Items(Source):
    """Optional item table: its columns become the items' content features."""

    id: str = "item_id"
    numeric: list[str] = field(default_factory=list)  # standardised into the feature vector
    categorical: list[str] = field(default_factory=list)  # hashed one-hot; also s_pin_<col> ranker features
    multi: list[str] = field(default_factory=list)  # multi-valued "A|B" cells: hashed multi-hot
    multi_sep: str = "|"
    title: str | None = None


@dataclass
class Collections(Source):
    """What a collection (PinSage's board) is."""

    source: str = "user_positives"  # none | table | column | item_column | user_positives
    collection: str = "collection_id"  # table: its collection column
    item: str = "item_id"  # table: its item column
    column: str | None = None  # column: interactions column; item_column: items column (multi-valued ok)
    min_size: int = 2  # smaller collections are dropped (a one-item board links nothing)
    max_size: int = 200  # user_positives: a user's positives are cut into boards of at most this many


@dataclass
class Impressions(Source):
    """Optional logged impressions (what was shown, with outcomes) for the ranker."""

    request: str | None = None  # request id column (None: one request per user and day)
    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    surface: str | None = None
    labels: dict[str, str] = field(default_factory=dict)  # task -> 0/1 column; missing tasks are all 0


@dataclass
class Negatives:
    """Ranker negatives sampled when there are no impressions (see docs/data.md)."""

    per_positive: float = 1.0  # sampled items per engaged item of a request
    seed: int = 0


@dataclass
class Split:
    """Exactly one of ``date``, ``fraction``, ``leave_last``."""

    date: str | None = None  # YYYY-MM-DD: events from this UTC day on are evaluation
    fraction: float | None = None  # the first fraction of events (by time) trains; cut on a day boundary
    leave_last: int | None = None  # each user's last N events are evaluation


@dataclass
class Features:
    hash_dim: int = 32  # buckets of the hashed categorical / multi-valued block
    id_dim: int = 8  # per-item random block (the default content for items with no features)
    max_categories: int = 1000  # s_pin_<col>: the most frequent values keep an id, the rest share 0


@dataclass
class ImportConfig:
    """``homefeed data import --config import.yaml``."""

    name: str = "imported"
    interactions: Interactions = field(default_factory=Interactions)
    # action -> raw values of `interactions.event` (a list) or a range of `interactions.signal`
    # ({min: x, max: y}: x <= signal < y); first match in declaration order wins, other rows are dropped
    actions: dict[str, Any] = field(default_factory=dict)
    positive: list[str] = field(default_factory=list)  # actions that are positive engagement
    positive_min_duration_s: dict[str, float] = field(default_factory=dict)  # action -> positive when longer
    # surface names (no surface column) or surface -> raw values of `interactions.surface`
    surfaces: Any = field(default_factory=lambda: ["homefeed"])
    # ranker task -> actions that set its label (defaults: save/closeup = positive; click = all but hide)
    labels: dict[str, list[str]] = field(default_factory=dict)
    items: Items | None = None
    collections: Collections = field(default_factory=Collections)
    impressions: Impressions | None = None
    negatives: Negatives = field(default_factory=Negatives)
    split: Split = field(default_factory=lambda: Split(fraction=0.9))
    partition: str = "auto"  # auto | day | month
    features: Features = field(default_factory=Features)
    base_dir: str = "."  # set to the config file's folder when loaded from a file

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else Path(self.base_dir) / p

    @property
    def surface_names(self) -> list[str]:
        return list(self.surfaces) if isinstance(self.surfaces, list) else list(self.surfaces)

    def label_actions(self) -> dict[str, list[str]]:
        """task -> action types that set ``label_<task>`` (declared, or the documented defaults)."""
        hide = list(self.labels.get("hide", []))
        defaults = {"save": list(self.positive), "closeup": list(self.positive),
                    "click": [a for a in self.actions if a not in hide], "hide": hide}
        return {t: list(self.labels.get(t, defaults[t])) for t in TASKS}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against the annotation ``tp`` (dataclasses recursively)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"import config: key '{key}' is {value!r}, expected a list")
        (arg,) = typing.get_args(tp)
        return [_coerce(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"import config: key '{key}' is {value!r}, expected a mapping")
        _, arg = typing.get_args(tp)
        return {str(k): _coerce(v, arg, f"{key}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool) and key.endswith(".date"):
        value = str(value)
    if not isinstance(value, tp) or (isinstance(value, bool) and tp is not bool):
        raise ConfigError(f"import config: key '{key}' is {value!r}, expected {_type_name(tp)}")
    return value


def build(cls: type, data: Any, key: str = "") -> Any:
    """Dataclass ``cls`` from the mapping ``data``; unknown keys and wrong types name the key."""
    where = f"key '{key}'" if key else "the top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"import config: {where} is {data!r}, expected a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields - {"base_dir"})
    if unknown:
        raise ConfigError(f"import config: unknown key '{(key + '.') if key else ''}{unknown[0]}' "
                          f"(expected one of {', '.join(sorted(fields - {'base_dir'}))})")
    kwargs = {k: _coerce(v, hints[k], f"{key}.{k}" if key else k) for k, v in data.items() if k != "base_dir"}
    return cls(**kwargs)


def check(cfg: ImportConfig) -> ImportConfig:
    """Cross-key rules: declared actions/surfaces, rules naming them, one split, known choices."""
    it = cfg.interactions
    if not it.path:
        raise ConfigError("import config: key 'interactions.path' is missing (the interactions file)")
    for key, value, choices in (("interactions.timestamp_unit", it.timestamp_unit, TIMESTAMP_UNITS),
                                ("interactions.format", it.format, FORMATS),
                                ("collections.source", cfg.collections.source, COLLECTION_SOURCES),
                                ("partition", cfg.partition, PARTITIONS)):
        if value not in choices:
            raise ConfigError(f"import config: key '{key}' is {value!r}, expected one of {', '.join(choices)}")
    if (it.event is None) == (it.signal is None):
        raise ConfigError("import config: set exactly one of 'interactions.event' (an event-type column) and "
                          "'interactions.signal' (a numeric column such as a rating)")
    if not cfg.actions:
        raise ConfigError("import config: key 'actions' is empty; declare each action type and the raw "
                          "values (event) or the range (signal) that map to it")
    if len(cfg.actions) > MAX_ACTION_TYPES:
        raise ConfigError(f"import config: key 'actions' declares {len(cfg.actions)} action types "
                          f"({', '.join(cfg.actions)}); at most {MAX_ACTION_TYPES} (the models' action table)")
    for action, rule in cfg.actions.items():
        key = f"actions.{action}"
        if it.event is not None:
            if not isinstance(rule, list) or not rule:
                raise ConfigError(f"import config: key '{key}' is {rule!r}, expected a non-empty list of "
                                  f"values of the event column '{it.event}'")
        else:
            if not isinstance(rule, dict) or not set(rule) <= {"min", "max"} or not rule:
                raise ConfigError(f"import config: key '{key}' is {rule!r}, expected a range "
                                  f"{{min: x, max: y}} of the signal column '{it.signal}' (x <= value < y)")
            for bound, v in rule.items():
                if not isinstance(v, int | float) or isinstance(v, bool) or math.isnan(v):
                    raise ConfigError(f"import config: key '{key}.{bound}' is {v!r}, expected a number")
    if not cfg.positive and not cfg.positive_min_duration_s:
        raise ConfigError("import config: key 'positive' is empty; name the action types that are positive "
                          f"engagement (declared actions: {', '.join(cfg.actions)})")
    for key, names in (("positive", cfg.positive), ("positive_min_duration_s", list(cfg.positive_min_duration_s)),
                       *((f"labels.{t}", v) for t, v in cfg.labels.items())):
        for a in names:
            if a not in cfg.actions:
                raise ConfigError(f"import config: key '{key}' names action '{a}', which is not declared in "
                                  f"'actions' ({', '.join(cfg.actions)})")
    if cfg.positive_min_duration_s and it.duration is None:
        raise ConfigError("import config: key 'positive_min_duration_s' needs 'interactions.duration' "
                          "(a column of seconds)")
    for t in cfg.labels:
        if t not in TASKS:
            raise ConfigError(f"import config: key 'labels.{t}': unknown ranker task (expected {', '.join(TASKS)})")
    surfaces = cfg.surfaces
    if isinstance(surfaces, list):
        if not surfaces or not all(isinstance(s, str) for s in surfaces):
            raise ConfigError(f"import config: key 'surfaces' is {surfaces!r}, expected a list of names")
        if it.surface is not None and len(surfaces) > 1:
            raise ConfigError("import config: key 'surfaces' lists names but 'interactions.surface' is a column; "
                              "map each surface to the column's raw values ({surface: [values]})")
    elif isinstance(surfaces, dict):
        if it.surface is None:
            raise ConfigError("import config: key 'surfaces' maps raw values but 'interactions.surface' "
                              "(the column holding them) is not set")
        for s, raw in surfaces.items():
            if not isinstance(raw, list) or not raw:
                raise ConfigError(f"import config: key 'surfaces.{s}' is {raw!r}, expected a list of values "
                                  f"of the surface column '{it.surface}'")
    else:
        raise ConfigError(f"import config: key 'surfaces' is {surfaces!r}, expected a list of names or a "
                          "mapping surface -> raw values")
    if not 0 < len(surfaces) <= MAX_SURFACES:
        raise ConfigError(f"import config: key 'surfaces' declares {len(surfaces)} surfaces; expected 1 to "
                          f"{MAX_SURFACES} (the models' surface table)")
    given = [k for k in ("date", "fraction", "leave_last") if getattr(cfg.split, k) is not None]
    if len(given) != 1:
        raise ConfigError(f"import config: key 'split' sets {given or 'nothing'}; expected exactly one of "
                          "date, fraction, leave_last")
    if cfg.split.fraction is not None and not 0 < cfg.split.fraction < 1:
        raise ConfigError(f"import config: key 'split.fraction' is {cfg.split.fraction}, expected 0 < x < 1")
    if cfg.split.leave_last is not None and cfg.split.leave_last < 1:
        raise ConfigError(f"import config: key 'split.leave_last' is {cfg.split.leave_last}, expected >= 1")
    col = cfg.collections
    if col.source == "table" and not col.path:
        raise ConfigError("import config: key 'collections.path' is missing (collections.source: table)")
    if col.source in ("column", "item_column") and not col.column:
        raise ConfigError(f"import config: key 'collections.column' is missing (collections.source: {col.source})")
    if col.source == "column" and col.column != it.collection and it.collection is not None:
        raise ConfigError("import config: keys 'collections.column' and 'interactions.collection' disagree")
    if col.source == "item_column" and cfg.items is None:
        raise ConfigError("import config: collections.source 'item_column' needs an 'items' table")
    if col.min_size < 1 or col.max_size < col.min_size:
        raise ConfigError("import config: keys 'collections.min_size'/'max_size' expect 1 <= min_size <= max_size")
    if cfg.negatives.per_positive < 0:
        raise ConfigError(f"import config: key 'negatives.per_positive' is {cfg.negatives.per_positive}, "
                          "expected >= 0")
    if cfg.impressions is not None:
        for t in cfg.impressions.labels:
            if t not in TASKS:
                raise ConfigError(f"import config: key 'impressions.labels.{t}': unknown ranker task "
                                  f"(expected {', '.join(TASKS)})")
    f = cfg.features
    if f.hash_dim < 0 or f.id_dim < 0 or f.hash_dim + f.id_dim == 0:
        raise ConfigError("import config: keys 'features.hash_dim'/'id_dim' expect >= 0 and not both 0")
    return cfg


def load_import_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ImportConfig:
    """Read, build and check the import config at ``path`` (relative paths resolve against its folder)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: import config not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    data = dict(data or {}) if isinstance(data, dict) or data is None else data
    if isinstance(data, dict):
        data.update(overrides or {})
    cfg = build(ImportConfig, data)
    cfg.base_dir = str(path.parent.resolve())
    return check(cfg)


def from_dict(data: dict[str, Any], base_dir: str | Path = ".") -> ImportConfig:
    """An import config from a mapping (tests, the pipeline step)."""
    cfg = build(ImportConfig, data)
    cfg.base_dir = str(Path(base_dir).resolve())
    return check(cfg)


def to_dict(cfg: ImportConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d.pop("base_dir", None)
    return d
