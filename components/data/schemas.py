"""Table schemas of a homefeed data directory, and the vocabularies every model shares.

A data directory holds::

    pins.parquet            pin_id, features (fixed-size list<float32>)
    boards.parquet          board_id, name, kind
    pin_boards.parquet      board_id, pin_id        (membership edges)
    users.parquet           user_id, s_* sparse user features
    events/dt=YYYY-MM-DD/part-0.parquet
                            user_id, pin_id, action_type, surface, timestamp, duration_s
    impressions/dt=YYYY-MM-DD/part-0.parquet
                            request_id, user_id, pin_id, surface, timestamp,
                            d_* dense features, s_* sparse features, label_<task> per task
    meta.json               dataset, split time, feature lists, sparse cardinalities
    ground_truth/           (synthetic only) planted topics and interests

Timestamps are int64 unix seconds. Ids are int64.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

ACTION_TYPES: tuple[str, ...] = ("repin", "closeup", "click", "hide")
SURFACES: tuple[str, ...] = ("homefeed", "related", "search")
TASKS: tuple[str, ...] = ("save", "closeup", "click", "hide")
# PinnerFormer's positive engagement: repin, closeup > 10 s, click > 10 s.
POSITIVE_MIN_DURATION_S = 10.0

# Valid timestamp range: MovieLens starts in 1997; nothing is later than 2100.
MIN_TIMESTAMP = 631_152_000  # 1990-01-01
MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01

# The longest plausible dwell: a closeup or click longer than one day is a logging error (3e38 s,
# a stuck timer), not engagement; the validator rejects durations above it.
MAX_DURATION_S = 86_400.0
# Timestamps later than the validator's clock plus this slack are "in the future" (a dt=2099-01-01
# partition would otherwise count as evaluation events); the slack covers clock skew and time zones.
FUTURE_SLACK_S = 86_400
# At most this many problems are listed in an error message (the rest are counted).
MAX_LISTED_ERRORS = 40

DENSE_PREFIX = "d_"
SPARSE_PREFIX = "s_"
LABEL_PREFIX = "label_"


class DataValidationError(ValueError):
    """Bad input data; ``errors`` holds one message per problem (each names the file, column, rows).

    Defined here, at the bottom layer, so that ``io`` can raise it too; ``validate`` re-exports it."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        shown = self.errors[:MAX_LISTED_ERRORS]
        more = len(self.errors) - len(shown)
        super().__init__("invalid data:\n  " + "\n  ".join(shown)
                         + (f"\n  ... and {more} more problem{'s' if more > 1 else ''} "
                            f"({len(self.errors)} in all)" if more else ""))


@dataclass(frozen=True)
class TableSpec:
    """What a table must hold: required columns with their Arrow types, the primary key,
    the columns that must reference another table, and prefixes of typed optional columns."""

    name: str
    columns: dict[str, pa.DataType]
    primary_key: tuple[str, ...] = ()
    partitioned: bool = False  # stored as <name>/dt=YYYY-MM-DD/part-0.parquet
    references: dict[str, str] = field(default_factory=dict)  # column -> "table.column"
    prefixed: dict[str, pa.DataType] = field(default_factory=dict)  # prefix -> type
    required_prefixed: tuple[str, ...] = ()  # prefixed columns that must be present (e.g. label_<task>)
    non_negative: tuple[str, ...] = ()
    timestamps: tuple[str, ...] = ()
    vocab: dict[str, tuple[str, ...]] = field(default_factory=dict)  # column -> allowed values
    maximum: dict[str, float] = field(default_factory=dict)  # column -> largest allowed value
    unique_rows: bool = False  # two identical rows are an error (a logged event appears once)
    one_per_key: dict[str, tuple[str, ...]] = field(default_factory=dict)  # key -> columns constant per key

    @property
    def filename(self) -> str:
        return self.name if self.partitioned else f"{self.name}.parquet"


PINS = TableSpec(
    "pins",
    {"pin_id": pa.int64(), "features": pa.list_(pa.float32())},
    primary_key=("pin_id",),
    prefixed={SPARSE_PREFIX: pa.int64()},
)
BOARDS = TableSpec("boards", {"board_id": pa.int64(), "name": pa.string(), "kind": pa.string()},
                   primary_key=("board_id",))
PIN_BOARDS = TableSpec(
    "pin_boards",
    {"board_id": pa.int64(), "pin_id": pa.int64()},
    primary_key=("board_id", "pin_id"),
    references={"board_id": "boards.board_id", "pin_id": "pins.pin_id"},
)
USERS = TableSpec("users", {"user_id": pa.int64()}, primary_key=("user_id",),
                  prefixed={SPARSE_PREFIX: pa.int64(), DENSE_PREFIX: pa.float32()})
EVENTS = TableSpec(
    "events",
    {
        "user_id": pa.int64(),
        "pin_id": pa.int64(),
        "action_type": pa.string(),
        "surface": pa.string(),
        "timestamp": pa.int64(),
        "duration_s": pa.float32(),
    },
    partitioned=True,
    references={"pin_id": "pins.pin_id", "user_id": "users.user_id"},
    non_negative=("duration_s",),
    timestamps=("timestamp",),
    vocab={"action_type": ACTION_TYPES, "surface": SURFACES},
    maximum={"duration_s": MAX_DURATION_S},
    unique_rows=True,
)
IMPRESSIONS = TableSpec(
    "impressions",
    {
        "request_id": pa.int64(),
        "user_id": pa.int64(),
        "pin_id": pa.int64(),
        "surface": pa.string(),
        "timestamp": pa.int64(),
    },
    primary_key=("request_id", "pin_id"),
    partitioned=True,
    references={"pin_id": "pins.pin_id", "user_id": "users.user_id"},
    prefixed={DENSE_PREFIX: pa.float32(), SPARSE_PREFIX: pa.int64(), LABEL_PREFIX: pa.int8()},
    required_prefixed=tuple(f"{LABEL_PREFIX}{t}" for t in TASKS),
    non_negative=(),
    timestamps=("timestamp",),
    vocab={"surface": SURFACES},
    one_per_key={"request_id": ("user_id",)},  # a request is one user's
)

# meta.json: required keys and their JSON types
META_KEYS: dict[str, type | tuple[type, ...]] = {
    "dataset": str,
    "split_timestamp": int,
    "feature_dim": int,
    "dense_features": list,
    "sparse_features": dict,
    "user_features": list,
    "pin_features": list,
}
# meta.json: optional keys no code depends on (checked for type when present): eval_days (days from the split
# to the end of the log, informational) and domain_feature (PEPNet's EPNet domain; the models gate on surface).
OPTIONAL_META_KEYS: dict[str, type] = {"eval_days": int, "domain_feature": str}

TABLES: dict[str, TableSpec] = {t.name: t for t in (PINS, BOARDS, PIN_BOARDS, USERS, EVENTS, IMPRESSIONS)}


def arrow_schema(spec: TableSpec, extra: dict[str, pa.DataType] | None = None) -> pa.Schema:
    """The Arrow schema for writing ``spec`` with optional prefixed columns ``extra``."""
    return pa.schema([pa.field(n, t) for n, t in {**spec.columns, **(extra or {})}.items()])
