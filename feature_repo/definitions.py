"""Feast definitions of homefeed: entities, sources, feature views and feature services.

Sources are Parquet snapshots under ``sources/`` beside this file, written by
``components.serving.feast_store.write_sources`` from a data directory and the published embedding
tables; every row carries ``event_timestamp``, when its values last changed: the latest impression for user
features, the start of the day a row was new or different from the previous day's for embeddings and pin
features (so a daily materialization loads only what changed; ``components.serving.feast_sources``). Each source
holds one row per entity; ``pin_features`` has a row for every pin (engagement at the training defaults for a pin
never shown). Column names of the ranker features are those of the data directory's ``meta.json``
(``user_features`` / ``pin_features``) and the engagement columns, listed in ``sources/schema.json``.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32, Int64, String

SOURCES = Path(__file__).resolve().parent / "sources"
TTL = timedelta(days=3650)  # snapshots are replaced daily; the online store keeps the latest row
_schema_file = SOURCES / "schema.json"
SCHEMA = json.loads(_schema_file.read_text()) if _schema_file.exists() else {"user_features": {}, "pin_features": {}}
_TYPES = {"float": Float32, "int": Int64}

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="a homefeed user")
pin = Entity(name="pin", join_keys=["pin_id"], value_type=ValueType.INT64, description="a pin")


def _source(name: str) -> FileSource:
    return FileSource(name=f"{name}_source", path=str(SOURCES / f"{name}.parquet"), timestamp_field="event_timestamp")


user_embedding = FeatureView(
    name="user_embedding",
    entities=[user],
    ttl=TTL,
    schema=[Field(name="embedding", dtype=Array(Float32)), Field(name="model_version", dtype=String)],
    source=_source("user_embedding"),
    description="PinnerFormer user embedding (the daily published table)",
)
pin_embedding = FeatureView(
    name="pin_embedding",
    entities=[pin],
    ttl=TTL,
    schema=[Field(name="embedding", dtype=Array(Float32)), Field(name="model_version", dtype=String)],
    source=_source("pin_embedding"),
    description="PinSage pin embedding (the ranker's pin input)",
)
user_features = FeatureView(
    name="user_features",
    entities=[user],
    ttl=TTL,
    schema=[Field(name=n, dtype=_TYPES[t]) for n, t in SCHEMA["user_features"].items()],
    source=_source("user_features"),
    description="the ranker's user features (latest value seen in impressions)",
)
pin_features = FeatureView(
    name="pin_features",
    entities=[pin],
    ttl=TTL,
    schema=[Field(name=n, dtype=_TYPES[t]) for n, t in SCHEMA["pin_features"].items()],
    source=_source("pin_features"),
    description="the ranker's pin features (latest value seen in impressions) and pin engagement, every pin",
)

retrieval_v1 = FeatureService(name="retrieval_v1", features=[user_embedding])
ranker_v1 = FeatureService(name="ranker_v1", features=[user_features, pin_features, user_embedding, pin_embedding])
