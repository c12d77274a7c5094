"""Validation of a data directory and the loaders that use it.

Every rejection names the file, the column, how many rows are affected and what was expected.
Out-of-vocabulary action types and surfaces are not fatal: the PinnerFormer paper drops those rows,
so the loaders drop and count them and the validator reports the counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.data import io
from components.data.schemas import MAX_TIMESTAMP, MIN_TIMESTAMP, TABLES, TableSpec


class DataValidationError(ValueError):
    """Bad input data; ``errors`` holds one message per problem."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("invalid data:\n  " + "\n  ".join(self.errors))


@dataclass
class ValidationReport:
    data_dir: str
    rows: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)  # "events.action_type" -> rows dropped
    errors: list[str] = field(default_factory=list)
    summary: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def _rows(n: int, total: int) -> str:
    return f"{n} of {total} row{'s' if total != 1 else ''}"


def _is_float(t: pa.DataType) -> bool:
    return pa.types.is_floating(t)


def check_table(spec: TableSpec, table: pa.Table, source: str) -> tuple[list[str], dict[str, int]]:
    """Check one table (or one partition file) against ``spec``.

    Returns (errors, out-of-vocabulary counts per column).
    """
    errors: list[str] = []
    oov: dict[str, int] = {}
    n = table.num_rows
    if n == 0:
        return [f"{source}: table '{spec.name}' is empty (expected at least one row)"], oov
    names = set(table.column_names)
    for col, expected in spec.columns.items():
        if col not in names:
            errors.append(f"{source}: missing column '{col}' (expected {expected})")
            continue
        got = table.schema.field(col).type
        if got != expected:
            errors.append(f"{source}: column '{col}' has type {got}, expected {expected}")
    for col in table.column_names:
        for prefix, expected in spec.prefixed.items():
            if col.startswith(prefix) and col not in spec.columns:
                got = table.schema.field(col).type
                if got != expected:
                    errors.append(f"{source}: column '{col}' has type {got}, expected {expected} "
                                  f"(columns starting with '{prefix}')")
    if errors:
        return errors, oov  # value checks below assume the types are right

    for col in table.column_names:
        arr = table.column(col)
        t = arr.type
        if pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
            nulls = int(arr.null_count)
            if nulls:
                errors.append(f"{source}: column '{col}': {_rows(nulls, n)} are null (expected a vector)")
                continue
            if len(set(lengths.tolist())) > 1:
                errors.append(f"{source}: column '{col}': vectors have lengths {sorted(set(lengths.tolist()))[:5]}"
                              f" (expected one fixed length)")
            if _is_float(t.value_type):
                flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False)
                bad = ~np.isfinite(flat.reshape(n, -1)).all(axis=1) if flat.size else np.zeros(n, bool)
                if bad.any():
                    errors.append(f"{source}: column '{col}': {_rows(int(bad.sum()), n)} hold NaN or infinite "
                                  f"values (expected finite numbers)")
            continue
        if arr.null_count and col in spec.columns:
            errors.append(f"{source}: column '{col}': {_rows(arr.null_count, n)} are null")
            continue
        if _is_float(t):
            vals = arr.to_numpy(zero_copy_only=False)
            bad = int((~np.isfinite(vals)).sum())
            if bad:
                errors.append(f"{source}: column '{col}': {_rows(bad, n)} are NaN or infinite "
                              f"(expected finite numbers)")
                continue
        if col in spec.non_negative:
            neg = int(pc.sum(pc.less(arr, 0)).as_py() or 0)
            if neg:
                errors.append(f"{source}: column '{col}': {_rows(neg, n)} are negative (expected >= 0)")
        if col in spec.timestamps:
            vals = arr.to_numpy(zero_copy_only=False)
            bad = int(((vals < MIN_TIMESTAMP) | (vals >= MAX_TIMESTAMP)).sum())
            if bad:
                errors.append(f"{source}: column '{col}': {_rows(bad, n)} are out of range (expected unix "
                              f"seconds in [{MIN_TIMESTAMP}, {MAX_TIMESTAMP}), 1990-01-01 to 2100-01-01)")
        if col in spec.vocab:
            allowed = pa.array(spec.vocab[col])
            unknown = int(pc.sum(pc.invert(pc.is_in(arr, value_set=allowed))).as_py() or 0)
            if unknown:
                oov[col] = unknown
        if col.startswith("label_"):
            vals = arr.to_numpy(zero_copy_only=False)
            bad = int(((vals != 0) & (vals != 1)).sum())
            if bad:
                errors.append(f"{source}: column '{col}': {_rows(bad, n)} are not 0 or 1 (expected binary labels)")
        if col.startswith("s_") and col not in spec.columns:
            neg = int(pc.sum(pc.less(arr, 0)).as_py() or 0)
            if neg:
                errors.append(f"{source}: column '{col}': {_rows(neg, n)} are negative "
                              f"(expected sparse ids >= 0)")
    return errors, oov


def _duplicates(table: pa.Table, key: tuple[str, ...]) -> int:
    if not key:
        return 0
    df = table.select(list(key)).to_pandas()
    return int(df.duplicated().sum())


def _check_partition_days(table: pa.Table, day: str, source: str) -> list[str]:
    lo, hi = io.day_bounds(day)
    ts = table.column("timestamp").to_numpy(zero_copy_only=False)
    bad = int(((ts < lo) | (ts >= hi)).sum())
    return [f"{source}: column 'timestamp': {_rows(bad, len(ts))} fall outside the partition's day {day}"] if bad else []


def validate_dir(data_dir: str | Path, raise_on_error: bool = True) -> ValidationReport:
    """Validate every table of ``data_dir``; raise :class:`DataValidationError` listing all problems."""
    data_dir = Path(data_dir)
    report = ValidationReport(str(data_dir))
    if not data_dir.is_dir():
        report.errors.append(f"{data_dir}: not a directory")
        if raise_on_error:
            raise DataValidationError(report.errors)
        return report
    tables: dict[str, pa.Table] = {}
    for name, spec in TABLES.items():
        if spec.partitioned:
            days = io.partitions(data_dir, name)
            if not days:
                report.errors.append(f"{data_dir / spec.filename}: no day partitions (dt=YYYY-MM-DD/{io.PART_FILE})")
                continue
            parts = []
            ok = True
            for day in days:
                path = io.partition_path(data_dir, name, day)
                source = str(path.relative_to(data_dir))
                try:
                    t = pq.read_table(path)
                except Exception as e:  # noqa: BLE001 - report any unreadable file by name
                    report.errors.append(f"{source}: cannot be read as Parquet: {e}")
                    ok = False
                    continue
                errs, oov = check_table(spec, t, source)
                if not errs and "timestamp" in t.column_names:
                    errs = _check_partition_days(t, day, source)
                report.errors += errs
                ok &= not errs
                for col, k in oov.items():
                    report.dropped[f"{name}.{col}"] = report.dropped.get(f"{name}.{col}", 0) + k
                parts.append(t)
            if ok and parts:
                tables[name] = pa.concat_tables(parts, promote_options="default")
        else:
            path = data_dir / spec.filename
            if not path.exists():
                report.errors.append(f"{path}: missing (table '{name}')")
                continue
            try:
                t = pq.read_table(path)
            except Exception as e:  # noqa: BLE001
                report.errors.append(f"{spec.filename}: cannot be read as Parquet: {e}")
                continue
            errs, oov = check_table(spec, t, spec.filename)
            report.errors += errs
            for col, k in oov.items():
                report.dropped[f"{name}.{col}"] = k
            if not errs:
                tables[name] = t
    for name, t in tables.items():
        spec = TABLES[name]
        report.rows[name] = t.num_rows
        dup = _duplicates(t, spec.primary_key)
        if dup:
            report.errors.append(f"{spec.filename}: {_rows(dup, t.num_rows)} duplicate the primary key "
                                 f"({', '.join(spec.primary_key)}) (expected unique)")
        for col, target in spec.references.items():
            ref_table, ref_col = target.split(".")
            if ref_table not in tables:
                continue
            known = tables[ref_table].column(ref_col)
            unknown = int(pc.sum(pc.invert(pc.is_in(t.column(col), value_set=known))).as_py() or 0)
            if unknown:
                report.errors.append(f"{spec.filename}: column '{col}': {_rows(unknown, t.num_rows)} point at "
                                     f"unknown {ref_table} (expected ids present in {ref_table}.{ref_col})")
    if not report.errors:
        report.summary = summarize(tables)
    if report.errors and raise_on_error:
        raise DataValidationError(report.errors)
    return report


def summarize(tables: dict[str, pa.Table]) -> dict[str, object]:
    ev = tables["events"]
    ts = ev.column("timestamp").to_numpy()
    mix = pd.Series(ev.column("action_type").to_numpy(zero_copy_only=False)).value_counts()
    surf = pd.Series(ev.column("surface").to_numpy(zero_copy_only=False)).value_counts()
    return {
        "users": int(tables["users"].num_rows),
        "pins": int(tables["pins"].num_rows),
        "boards": int(tables["boards"].num_rows),
        "events": int(ev.num_rows),
        "impressions": int(tables["impressions"].num_rows),
        "first_day": str(io.day_of(ts.min())),
        "last_day": str(io.day_of(ts.max())),
        "action_mix": {k: round(float(v) / len(ts), 4) for k, v in mix.items()},
        "surface_mix": {k: round(float(v) / len(ts), 4) for k, v in surf.items()},
    }


# ----------------------------------------------------------------------------------------------
# Loaders used by the models: validated, vocabulary-filtered pandas frames.
# ----------------------------------------------------------------------------------------------


def drop_out_of_vocab(df: pd.DataFrame, spec: TableSpec, counts: dict[str, int] | None = None) -> pd.DataFrame:
    """Drop rows whose vocabulary columns hold unknown values; add the counts to ``counts``."""
    keep = np.ones(len(df), bool)
    for col, allowed in spec.vocab.items():
        if col in df.columns:
            bad = ~df[col].isin(allowed).to_numpy()
            if counts is not None and bad.any():
                counts[f"{spec.name}.{col}"] = counts.get(f"{spec.name}.{col}", 0) + int(bad.sum())
            keep &= ~bad
    return df[keep].reset_index(drop=True)


def load_events(data_dir: str | Path, days: list[str] | None = None,
                counts: dict[str, int] | None = None) -> pd.DataFrame:
    """Events (all days or the listed ones) sorted by (user_id, timestamp), OOV rows dropped."""
    spec = TABLES["events"]
    parts = io.partitions(data_dir, "events") if days is None else days
    errors: list[str] = []
    frames = []
    for day in parts:
        path = io.partition_path(data_dir, "events", day)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no events partition for day {day}")
        t = pq.read_table(path)
        errs, _ = check_table(spec, t, str(path))
        errors += errs
        frames.append(t)
    if errors:
        raise DataValidationError(errors)
    if not frames:
        raise DataValidationError([f"{Path(data_dir) / 'events'}: no day partitions to load"])
    df = pa.concat_tables(frames).to_pandas()
    df = drop_out_of_vocab(df, spec, counts)
    return df.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)


def load_table(data_dir: str | Path, name: str) -> pd.DataFrame:
    """A validated non-event table as pandas (impressions: all days, OOV surfaces dropped)."""
    spec = TABLES[name]
    table = io.read_table(data_dir, name)
    errs, _ = check_table(spec, table, str(Path(data_dir) / spec.filename))
    if errs:
        raise DataValidationError(errs)
    df = table.to_pandas()
    return drop_out_of_vocab(df, spec) if spec.vocab else df


def pin_features(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(pin_ids (N,), features (N, F) float32) from pins.parquet."""
    t = io.read_table(data_dir, "pins")
    errs, _ = check_table(TABLES["pins"], t, str(Path(data_dir) / "pins.parquet"))
    if errs:
        raise DataValidationError(errs)
    ids = t.column("pin_id").to_numpy()
    feats = np.stack(t.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
    return ids, feats
