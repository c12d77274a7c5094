"""Validation of a data directory and the loaders that use it.

Every rejection names the file, the column, how many rows are affected (and the first bad row, or
example ids) and what was expected. Rejected: missing tables, columns or label columns, wrong types,
nulls, NaN/inf, negative durations or sparse ids, timestamps out of range or outside their day
partition, duplicate primary keys, ids pointing at unknown pins/boards/users, empty tables and
partitions, unreadable files, and a ``meta.json`` that is missing keys or disagrees with the tables
(feature_dim, listed features, sparse cardinalities). All problems are reported at once.

Out-of-vocabulary action types and surfaces are not fatal: the PinnerFormer paper drops those rows,
so the loaders drop and count them and the validator reports the counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.data import io
from components.data.schemas import (  # noqa: F401 - DataValidationError is re-exported
    MAX_TIMESTAMP,
    META_KEYS,
    MIN_TIMESTAMP,
    TABLES,
    DataValidationError,
    TableSpec,
)


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
        return [f"{source}: table '{spec.name}' is empty: 0 rows (expected at least one row)"], oov
    names = set(table.column_names)
    for col, expected in spec.columns.items():
        if col not in names:
            errors.append(f"{source}: missing column '{col}' (expected {expected}); all {n} rows lack it")
            continue
        got = table.schema.field(col).type
        if got != expected:
            errors.append(f"{source}: column '{col}' has type {got}, expected {expected} (all {n} rows)")
    for col in spec.required_prefixed:
        if col not in names:
            expected = next(t for p, t in spec.prefixed.items() if col.startswith(p))
            errors.append(f"{source}: missing column '{col}' (expected {expected}); all {n} rows lack it")
    for col in table.column_names:
        for prefix, expected in spec.prefixed.items():
            if col.startswith(prefix) and col not in spec.columns:
                got = table.schema.field(col).type
                if got != expected:
                    errors.append(f"{source}: column '{col}' has type {got}, expected {expected} "
                                  f"(columns starting with '{prefix}'; all {n} rows)")
    if errors:
        return errors, oov  # value checks below assume the types are right

    def bad_rows(col: str, mask: np.ndarray, what: str) -> None:
        k = int(mask.sum())
        if k:
            errors.append(f"{source}: column '{col}': {_rows(k, n)} {what}; first at row {int(np.argmax(mask))}")

    for col in table.column_names:
        arr = table.column(col)
        t = arr.type
        if pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
            if arr.null_count:
                bad_rows(col, arr.is_null().to_numpy(zero_copy_only=False), "are null (expected a vector)")
                continue
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
            if len(set(lengths.tolist())) > 1:
                common = int(np.bincount(lengths).argmax())
                bad_rows(col, lengths != common, f"have a vector length other than {common} (expected one "
                         f"fixed length; lengths seen {sorted(set(lengths.tolist()))[:5]})")
            elif _is_float(t.value_type):
                flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False)
                bad = ~np.isfinite(flat.reshape(n, -1)).all(axis=1) if flat.size else np.zeros(n, bool)
                bad_rows(col, bad, "hold NaN or infinite values (expected finite numbers)")
            continue
        typed = col in spec.columns or any(col.startswith(prefix) for prefix in spec.prefixed)
        if arr.null_count and typed:
            bad_rows(col, arr.is_null().to_numpy(zero_copy_only=False), "are null")
            continue
        vals = arr.to_numpy(zero_copy_only=False)
        if _is_float(t):
            bad = ~np.isfinite(vals.astype(np.float64))
            if bad.any():
                bad_rows(col, bad, "are NaN or infinite (expected finite numbers)")
                continue
        if col in spec.non_negative:
            bad_rows(col, vals < 0, "are negative (expected >= 0)")
        if col in spec.timestamps:
            bad_rows(col, (vals < MIN_TIMESTAMP) | (vals >= MAX_TIMESTAMP),
                     f"are out of range (expected unix seconds in [{MIN_TIMESTAMP}, {MAX_TIMESTAMP}), "
                     f"1990-01-01 to 2100-01-01)")
        if col in spec.vocab:
            allowed = pa.array(spec.vocab[col])
            unknown = int(pc.sum(pc.invert(pc.is_in(arr, value_set=allowed))).as_py() or 0)
            if unknown:
                oov[col] = unknown
        if col.startswith("label_"):
            bad_rows(col, (vals != 0) & (vals != 1), "are not 0 or 1 (expected binary labels)")
        if col.startswith("s_") and col not in spec.columns:
            bad_rows(col, vals < 0, "are negative (expected sparse ids >= 0)")
    return errors, oov


def _examples(values: np.ndarray, k: int = 3) -> str:
    return ", ".join(str(v) for v in values[:k].tolist())


def _duplicates(table: pa.Table, key: tuple[str, ...]) -> tuple[int, str]:
    """(number of rows that repeat an earlier row's key, an example key)."""
    if not key:
        return 0, ""
    df = table.select(list(key)).to_pandas()
    dup = df.duplicated()
    n = int(dup.sum())
    if not n:
        return 0, ""
    first = df[dup].iloc[0]
    return n, "(" + ", ".join(f"{c}={first[c]}" for c in key) + ")"


def _check_partition_days(table: pa.Table, day: str, source: str) -> list[str]:
    lo, hi = io.partition_bounds(day)
    ts = table.column("timestamp").to_numpy(zero_copy_only=False)
    bad = int(((ts < lo) | (ts >= hi)).sum())
    return [f"{source}: column 'timestamp': {_rows(bad, len(ts))} fall outside the partition's "
            f"{io.partition_granularity(day)} {day}"] if bad else []


def check_meta(meta: object, tables: dict[str, pa.Table], source: str = "meta.json") -> list[str]:
    """Check ``meta.json`` against ``schemas.META_KEYS`` and the tables it describes."""
    if not isinstance(meta, dict):
        return [f"{source}: expected a JSON object, got {type(meta).__name__}"]
    errors = []
    for key, tp in META_KEYS.items():
        if key not in meta:
            errors.append(f"{source}: missing key '{key}' (expected {getattr(tp, '__name__', tp)})")
        elif not isinstance(meta[key], tp) or isinstance(meta[key], bool):
            errors.append(f"{source}: key '{key}' is {meta[key]!r}, expected {getattr(tp, '__name__', tp)}")
    if errors:
        return errors
    split = meta["split_timestamp"]
    if not MIN_TIMESTAMP <= split < MAX_TIMESTAMP:
        errors.append(f"{source}: key 'split_timestamp' is {split}, expected unix seconds in "
                      f"[{MIN_TIMESTAMP}, {MAX_TIMESTAMP})")
    if "pins" in tables:
        feats = tables["pins"].column("features")
        lengths = set(pc.list_value_length(feats).to_numpy(zero_copy_only=False).tolist())
        if lengths and lengths != {meta["feature_dim"]}:
            errors.append(f"pins.parquet: column 'features': vectors of length {sorted(lengths)[:3]} in all "
                          f"{feats.length()} rows, expected feature_dim = {meta['feature_dim']} from {source}")
    if "impressions" in tables:
        imp = tables["impressions"]
        cols = set(imp.column_names)
        for name in meta["dense_features"]:
            if name not in cols:
                errors.append(f"impressions: missing column '{name}' (listed in {source} dense_features); "
                              f"all {imp.num_rows} rows lack it")
        for name, card in meta["sparse_features"].items():
            if name not in cols:
                errors.append(f"impressions: missing column '{name}' (listed in {source} sparse_features); "
                              f"all {imp.num_rows} rows lack it")
                continue
            if not isinstance(card, int) or card <= 0:
                errors.append(f"{source}: sparse_features['{name}'] is {card!r}, expected a positive int cardinality")
                continue
            vals = imp.column(name).to_numpy(zero_copy_only=False)
            bad = int(((vals < 0) | (vals >= card)).sum())
            if bad:
                errors.append(f"impressions: column '{name}': {_rows(bad, len(vals))} are outside [0, {card}) "
                              f"(the cardinality in {source} sparse_features)")
    return errors


def _check_references(data_dir: Path, name: str, table: pa.Table, parts: list[tuple[str, int]],
                      tables: dict[str, pa.Table]) -> list[str]:
    """Unknown-id errors for ``table``'s reference columns, per file (each partition of a partitioned table)."""
    spec = TABLES[name]
    errors = []
    for col, target in spec.references.items():
        ref_table, ref_col = target.split(".")
        if ref_table not in tables:
            continue
        values = table.column(col)
        unknown = pc.invert(pc.is_in(values, value_set=tables[ref_table].column(ref_col))).to_numpy(
            zero_copy_only=False)
        if not unknown.any():
            continue
        offset = 0
        bad_files = []
        for source, n in parts:
            k = int(unknown[offset:offset + n].sum())
            if k:
                ids = np.unique(values.slice(offset, n).to_numpy(zero_copy_only=False)[unknown[offset:offset + n]])
                bad_files.append(f"{source}: column '{col}': {_rows(k, n)} point at unknown {ref_table} "
                                 f"(expected ids present in {ref_table}.{ref_col}; e.g. {_examples(ids)})")
            offset += n
        errors += bad_files[:5]
        if len(bad_files) > 5:
            errors.append(f"{spec.filename}: column '{col}': {len(bad_files) - 5} more files point at unknown "
                          f"{ref_table} ({_rows(int(unknown.sum()), table.num_rows)} in all)")
    return errors


def validate_dir(data_dir: str | Path, raise_on_error: bool = True) -> ValidationReport:
    """Validate every table of ``data_dir`` and ``meta.json``.

    Raises :class:`DataValidationError` listing all problems (or returns them in the report when
    ``raise_on_error`` is False). Out-of-vocabulary action types/surfaces are counted in
    ``report.dropped`` ("events.action_type" -> rows), not errors.
    """
    data_dir = Path(data_dir)
    report = ValidationReport(str(data_dir))
    if not data_dir.is_dir():
        report.errors.append(f"{data_dir}: not a directory")
        if raise_on_error:
            raise DataValidationError(report.errors)
        return report
    tables: dict[str, pa.Table] = {}
    sources: dict[str, list[tuple[str, int]]] = {}  # table -> [(file, rows)] in concatenation order
    for name, spec in TABLES.items():
        if spec.partitioned:
            name_errors = io.check_partition_names(data_dir, name)
            report.errors += name_errors
            days = [] if name_errors else io.partitions(data_dir, name)
            if not days:
                if not name_errors:
                    report.errors.append(f"{spec.filename}: no day partitions (expected {spec.filename}/dt=YYYY-MM-DD/"
                                         f"*.parquet or dt=YYYY-MM/*.parquet); table '{name}' has 0 rows")
                continue
            parts = []
            ok = True
            for day in days:
                for path in io.partition_files(data_dir, name, day):
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
                    sources.setdefault(name, []).append((source, t.num_rows))
            if ok and parts:
                tables[name] = pa.concat_tables(parts, promote_options="default")
        else:
            path = data_dir / spec.filename
            if not path.exists():
                report.errors.append(f"{spec.filename}: missing (table '{name}', expected columns "
                                     f"{', '.join(spec.columns)})")
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
                sources[name] = [(spec.filename, t.num_rows)]
    for name, t in tables.items():
        spec = TABLES[name]
        report.rows[name] = t.num_rows
        dup, example = _duplicates(t, spec.primary_key)
        if dup:
            report.errors.append(f"{spec.filename}: column{'s' if len(spec.primary_key) > 1 else ''} "
                                 f"{', '.join(repr(c) for c in spec.primary_key)}: {_rows(dup, t.num_rows)} "
                                 f"duplicate the primary key (expected unique; e.g. {example})")
        report.errors += _check_references(data_dir, name, t, sources[name], tables)
    meta_path = data_dir / "meta.json"
    meta = None
    if not meta_path.exists():
        report.errors.append("meta.json: missing (expected the dataset's split time and feature lists)")
    else:
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as e:
            report.errors.append(f"meta.json: not valid JSON: {e}")
        else:
            report.errors += check_meta(meta, tables)
    if not report.errors:
        report.summary = summarize(tables, meta)
    if report.errors and raise_on_error:
        raise DataValidationError(report.errors)
    return report


def summarize(tables: dict[str, pa.Table], meta: dict | None = None) -> dict[str, object]:
    """Counts, date range, split and the action/surface mix of a validated directory."""
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
        **({"dataset": meta["dataset"], "split_day": str(io.day_of(meta["split_timestamp"])),
            "eval_events": int((ts >= meta["split_timestamp"]).sum())} if meta else {}),
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


def read_checked(data_dir: str | Path, name: str, days: list[str] | None = None) -> pa.Table:
    """Table ``name`` (all days or the listed ones of a partitioned table) after the same checks as
    :func:`validate_dir` makes of it: per-file schema and values, duplicate primary keys and ids that
    point at unknown rows of the referenced tables (when those tables exist). Raises
    :class:`DataValidationError` naming the file, column and rows."""
    data_dir = Path(data_dir)
    spec = TABLES[name]
    if spec.partitioned:
        wanted = io.partitions(data_dir, name) if days is None else list(days)
        paths = []
        for day in wanted:
            found = io.locate(data_dir, name, day)
            if found is None:
                raise FileNotFoundError(f"{io.partition_path(data_dir, name, day).parent}: no {name} partition "
                                        f"for day {day}")
            paths += [(p, found[1]) for p in io.partition_files(data_dir, name, found[0])]
        if not paths:
            raise DataValidationError([f"{data_dir / spec.filename}: no day partitions to load"])
    else:
        paths = [(data_dir / spec.filename, None)]
        if not paths[0][0].exists():
            raise FileNotFoundError(f"{paths[0][0]}: table '{name}' is missing")
    errors: list[str] = []
    frames, parts = [], []
    for path, bounds in paths:
        source = str(path.relative_to(data_dir))
        try:
            t = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported by name
            raise DataValidationError([f"{source}: cannot be read as Parquet: {e}"]) from e
        if bounds is not None and "timestamp" in t.column_names:  # one day of a month partition
            ts = t.column("timestamp")
            t = t.filter(pc.and_(pc.greater_equal(ts, bounds[0]), pc.less(ts, bounds[1])))
        errs, _ = check_table(spec, t, source)
        errors += errs
        frames.append(t)
        parts.append((source, t.num_rows))
    if errors:
        raise DataValidationError(errors)
    table = pa.concat_tables(frames, promote_options="default") if len(frames) > 1 else frames[0]
    dup, example = _duplicates(table, spec.primary_key)
    if dup:
        errors.append(f"{spec.filename}: column{'s' if len(spec.primary_key) > 1 else ''} "
                      f"{', '.join(repr(c) for c in spec.primary_key)}: {_rows(dup, table.num_rows)} "
                      f"duplicate the primary key (expected unique; e.g. {example})")
    refs: dict[str, pa.Table] = {}
    for target in spec.references.values():
        ref_table, ref_col = target.split(".")
        ref_path = data_dir / TABLES[ref_table].filename
        if not TABLES[ref_table].partitioned and ref_path.exists():
            refs[ref_table] = pq.read_table(ref_path, columns=[ref_col])
    errors += _check_references(data_dir, name, table, parts, refs)
    if errors:
        raise DataValidationError(errors)
    return table


def load_events(data_dir: str | Path, days: list[str] | None = None,
                counts: dict[str, int] | None = None) -> pd.DataFrame:
    """Events (all days or the listed ones) sorted by (user_id, timestamp), checked (:func:`read_checked`),
    out-of-vocabulary rows dropped and counted in ``counts``."""
    df = read_checked(data_dir, "events", days).to_pandas()
    df = drop_out_of_vocab(df, TABLES["events"], counts)
    return df.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)


def load_table(data_dir: str | Path, name: str, counts: dict[str, int] | None = None) -> pd.DataFrame:
    """A checked table as pandas (impressions: all days, OOV surfaces dropped and added to ``counts``)."""
    spec = TABLES[name]
    df = read_checked(data_dir, name).to_pandas()
    return drop_out_of_vocab(df, spec, counts) if spec.vocab else df


def pin_features(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(pin_ids (N,), features (N, F) float32) from pins.parquet, checked."""
    t = read_checked(data_dir, "pins")
    ids = t.column("pin_id").to_numpy()
    feats = np.stack(t.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
    return ids, feats
