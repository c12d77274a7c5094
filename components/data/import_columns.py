"""Reading an import's source tables and turning their columns into the platform's types: ids into int64
(:class:`IdSpace`), timestamps into unix seconds, events into the declared action types, surfaces into
the declared surfaces; every rejection names the file, the column and the expected form (docs/data.md).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from components.config import ConfigError
from components.data.import_config import ImportConfig, Source
from components.data.schemas import MAX_TIMESTAMP, MIN_TIMESTAMP


def read_source(cfg: ImportConfig, src: Source, key: str) -> tuple[pd.DataFrame, str]:
    """(the table, its file name for messages); missing file or unreadable content name ``key``."""
    path = cfg.resolve(src.path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found (import config key '{key}.path')")
    fmt = src.format
    if fmt == "auto":
        suffix = path.suffix.lower()
        fmt = "parquet" if suffix in (".parquet", ".pq") else "tsv" if suffix in (".tsv", ".tab", ".inter") else "csv"
    try:
        if fmt == "parquet":
            df = pd.read_parquet(path)
        else:
            sep = src.sep if src.sep is not None else ("\t" if fmt == "tsv" else ",")
            df = pd.read_csv(path, sep=sep, na_values=src.na_values or None)
    except Exception as e:  # noqa: BLE001 - any reader failure is the user's file: name it
        raise ConfigError(f"{path}: cannot be read as {fmt} (import config key '{key}.path'): {e}") from e
    if df.empty:
        raise ConfigError(f"{path}: no rows (import config key '{key}.path')")
    return df, path.name


def require_columns(df: pd.DataFrame, wanted: dict[str, str | None], source: str) -> None:
    """Every configured column (key -> column name) exists in ``df``."""
    for key, col in wanted.items():
        if col is not None and col not in df.columns:
            raise ConfigError(f"import config: key '{key}' names column '{col}', which {source} does not have "
                              f"(columns: {', '.join(map(str, df.columns))})")


def no_nulls(values: pd.Series, key: str, source: str) -> None:
    bad = values.isna().to_numpy()
    if bad.any():
        raise ConfigError(f"{source}: column '{values.name}' (key '{key}'): {int(bad.sum())} of {len(bad)} rows are "
                          f"empty; first at row {int(np.argmax(bad))}")


class IdSpace:
    """One id space (users or items) over several tables: integer ids are kept, others numbered 1..N."""

    def __init__(self, columns: list[pd.Series]):
        self.numeric = all(_integer_like(c) for c in columns)
        if not self.numeric:
            raw = pd.unique(pd.concat([c.astype(str) for c in columns], ignore_index=True))
            self.codes = pd.Index(raw)
            self.table = pd.DataFrame({"id": np.arange(1, len(raw) + 1, dtype=np.int64), "original": raw})

    def map(self, values: pd.Series) -> np.ndarray:
        if self.numeric:
            return pd.to_numeric(values).to_numpy().astype(np.int64)
        return (self.codes.get_indexer(values.astype(str)) + 1).astype(np.int64)


def _integer_like(values: pd.Series) -> bool:
    if pd.api.types.is_integer_dtype(values):
        return True
    if pd.api.types.is_float_dtype(values):
        v = values.to_numpy()
        return bool(np.isfinite(v).all() and (v == np.round(v)).all() and (np.abs(v) < 2**53).all())
    if values.dtype == object:
        s = values.astype(str)
        return bool(s.str.fullmatch(r"-?[0-9]{1,18}").all() and not s.str.match(r"-?0[0-9]").any())
    return False


def to_unix_seconds(values: pd.Series, unit: str, fmt: str | None, key: str, source: str) -> np.ndarray:
    """(N,) int64 unix seconds; unparseable or out-of-range values name the column and the first row."""
    no_nulls(values, key, source)
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if unit == "auto":
        unit = "s" if numeric else "datetime"
    col = f"{source}: column '{values.name}' (key '{key}', timestamp_unit {unit})"
    if unit == "datetime":
        if pd.api.types.is_datetime64_any_dtype(values):
            parsed = pd.to_datetime(values, utc=True)
        else:
            parsed = pd.to_datetime(values.astype(str), format=fmt or "mixed", utc=True, errors="coerce")
        bad = parsed.isna().to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise ConfigError(f"{col}: {int(bad.sum())} of {len(bad)} values are not dates; first at row {i}: "
                              f"{values.iloc[i]!r} (set timestamp_format, or timestamp_unit s/ms/us/ns for numbers)")
        ts = ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy().astype(np.int64)
    else:
        nums = pd.to_numeric(values, errors="coerce")
        bad = nums.isna().to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise ConfigError(f"{col}: {int(bad.sum())} of {len(bad)} values are not numbers; first at row {i}: "
                              f"{values.iloc[i]!r} (use timestamp_unit datetime for dates)")
        scale = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
        ts = np.floor(nums.to_numpy(np.float64) / scale).astype(np.int64)
    out = (ts < MIN_TIMESTAMP) | (ts >= MAX_TIMESTAMP)
    if out.any():
        i = int(np.argmax(out))
        raise ConfigError(f"{col}: {int(out.sum())} of {len(ts)} values fall outside 1990-01-01 .. 2100-01-01; "
                          f"first at row {i}: {values.iloc[i]!r} (a wrong timestamp_unit?)")
    return ts


def numbers_of(values: pd.Series, key: str, source: str) -> np.ndarray:
    nums = pd.to_numeric(values, errors="coerce")
    bad = nums.isna().to_numpy() & values.notna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise ConfigError(f"{source}: column '{values.name}' (key '{key}'): {int(bad.sum())} of {len(bad)} values "
                          f"are not numbers; first at row {i}: {values.iloc[i]!r}")
    return nums.to_numpy(np.float64)


def map_actions(df: pd.DataFrame, cfg: ImportConfig, source: str) -> np.ndarray:
    """(N,) object array of action types (None = no rule matched)."""
    it = cfg.interactions
    action = np.full(len(df), None, dtype=object)
    if it.event is not None:
        raw = df[it.event].astype(str).to_numpy()
        for name, values in cfg.actions.items():
            hit = np.isin(raw, [str(v) for v in values]) & (action == None)  # noqa: E711 - elementwise
            action[hit] = name
        what = f"values of column '{it.event}'"
        seen = pd.Series(raw).value_counts().index[:8].tolist()
    else:
        sig = numbers_of(df[it.signal], "interactions.signal", source)
        for name, rng in cfg.actions.items():
            hit = ((sig >= rng.get("min", -np.inf)) & (sig < rng.get("max", np.inf)) & (action == None))  # noqa: E711
            action[hit] = name
        what = f"values of column '{it.signal}'"
        seen = [f"min {np.nanmin(sig):g}", f"max {np.nanmax(sig):g}"]
    if (action == None).all():  # noqa: E711
        raise ConfigError(f"import config: key 'actions' matches none of the {len(df)} rows of {source} "
                          f"({what} seen: {', '.join(map(str, seen))})")
    return action


def map_surfaces(df: pd.DataFrame, cfg: ImportConfig) -> np.ndarray:
    """(N,) object array of surfaces (None = a raw value no surface lists)."""
    if isinstance(cfg.surfaces, list):
        return np.full(len(df), cfg.surfaces[0], dtype=object)
    raw = df[cfg.interactions.surface].astype(str).to_numpy()
    out = np.full(len(df), None, dtype=object)
    for name, values in cfg.surfaces.items():
        out[np.isin(raw, [str(v) for v in values]) & (out == None)] = name  # noqa: E711
    return out
