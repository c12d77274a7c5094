"""Checks of one table and of meta.json: what ``components.data.validate.validate_dir`` runs on every file of a data
directory, and what the loaders run on what they read.

Each problem names the file, the column, how many rows are affected and the first bad row or example ids
(:class:`Problem`); :func:`group_problems` merges the same problem found in many partition files into
one line. The rules are listed in :mod:`components.data.validate`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.data import io
from components.data.schemas import (
    FUTURE_SLACK_S,
    MAX_TIMESTAMP,
    META_KEYS,
    MIN_TIMESTAMP,
    OPTIONAL_META_KEYS,
    TableSpec,
)


def rows_of(n: int, total: int) -> str:
    return f"{n} of {total} row{'s' if total != 1 else ''}"


def _is_float(t: pa.DataType) -> bool:
    return pa.types.is_floating(t)


@dataclass
class Problem:
    """One problem found in one file; the same problem in several files of a table merges into one.

    ``style`` says how ``what`` reads with the counts: "rows" -> "column 'c': k of n rows <what>; first
    at row r", "lack" -> "<what>; all n rows lack it", "all" -> "<what> (all n rows)", "plain" -> what.
    """

    table: str  # the table's file or folder name (pins.parquet, events)
    source: str  # the (first) file
    what: str
    style: str = "plain"
    column: str = ""
    rows: int = 0
    total: int = 0
    first_row: int = 0
    files: int = 1

    def key(self) -> tuple[str, str, str, str]:
        return self.table, self.style, self.column, self.what

    def render(self) -> str:
        where = self.source if self.files == 1 else f"{self.table} ({self.files} files, first {self.source})"
        if self.style == "rows":
            return (f"{where}: column '{self.column}': {rows_of(self.rows, self.total)} {self.what}; "
                    f"first at row {self.first_row}")
        if self.style == "lack":
            return f"{where}: {self.what}; all {self.total} rows lack it"
        if self.style == "all":
            return f"{where}: {self.what} (all {self.total} rows)"
        return f"{where}: {self.what}"


def group_problems(problems: list[Problem]) -> list[str]:
    """One line per distinct problem: files and rows summed, the first file and row kept."""
    merged: dict[tuple[str, str, str, str], Problem] = {}
    for p in problems:
        m = merged.get(p.key())
        if m is None:
            merged[p.key()] = Problem(**p.__dict__)
        else:
            m.files += p.files
            m.rows += p.rows
            m.total += p.total
    return [p.render() for p in merged.values()]


def _invalid_utf8(arr: pa.ChunkedArray) -> np.ndarray:
    """Mask of the strings that are not valid UTF-8 (only called once Arrow's validation failed)."""
    mask = np.zeros(len(arr), bool)
    for i, v in enumerate(pc.cast(arr, pa.binary()).to_pylist()):
        if v is not None:
            try:
                v.decode("utf-8")
            except UnicodeDecodeError:
                mask[i] = True
    return mask


def future_limit(now: float | None = None) -> int:
    """Unix seconds from which a timestamp is "in the future" (the clock plus ``FUTURE_SLACK_S``)."""
    return int(time.time() if now is None else now) + FUTURE_SLACK_S


def table_problems(spec: TableSpec, table: pa.Table, source: str) -> tuple[list[Problem], dict[str, int]]:
    """Check one table (or one partition file) against ``spec``: (problems, out-of-vocabulary counts)."""
    problems: list[Problem] = []
    oov: dict[str, int] = {}
    n = table.num_rows
    tname = spec.filename

    def add(what: str, style: str = "plain", column: str = "", rows: int = 0, first: int = 0) -> None:
        problems.append(Problem(tname, source, what, style, column, rows, n, first))

    if n == 0:
        add(f"table '{spec.name}' is empty: 0 rows (expected at least one row)")
        return problems, oov
    names = set(table.column_names)
    for col, expected in spec.columns.items():
        if col not in names:
            add(f"missing column '{col}' (expected {expected})", "lack", col)
            continue
        got = table.schema.field(col).type
        if got != expected:
            add(f"column '{col}' has type {got}, expected {expected}", "all", col)
    for col in spec.required_prefixed:
        if col not in names:
            expected = next(t for p, t in spec.prefixed.items() if col.startswith(p))
            add(f"missing column '{col}' (expected {expected})", "lack", col)
    for col in table.column_names:
        for prefix, expected in spec.prefixed.items():
            if col.startswith(prefix) and col not in spec.columns:
                got = table.schema.field(col).type
                if got != expected:
                    add(f"column '{col}' has type {got}, expected {expected} (columns starting with '{prefix}')",
                        "all", col)
    if problems:
        return problems, oov  # value checks below assume the types are right

    def bad_rows(col: str, mask: np.ndarray, what: str) -> None:
        k = int(mask.sum())
        if k:
            add(what, "rows", col, k, int(np.argmax(mask)))

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
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            try:
                arr.validate(full=True)
            except pa.ArrowInvalid:
                bad_rows(col, _invalid_utf8(arr), "hold strings that are not valid UTF-8 (expected UTF-8 text)")
                continue
        vals = arr.to_numpy(zero_copy_only=False)
        if _is_float(t):
            bad = ~np.isfinite(vals.astype(np.float64))
            if bad.any():
                bad_rows(col, bad, "are NaN or infinite (expected finite numbers)")
                continue
        if col in spec.non_negative:
            bad_rows(col, vals < 0, "are negative (expected >= 0)")
        if col in spec.maximum:
            top = spec.maximum[col]
            bad_rows(col, vals > top, f"are above the maximum {top:g} (expected at most {top:g}; "
                     "see schemas.MAX_DURATION_S)" if col == "duration_s" else f"are above the maximum {top:g}")
        if col in spec.timestamps:
            out = (vals < MIN_TIMESTAMP) | (vals >= MAX_TIMESTAMP)
            bad_rows(col, out, f"are out of range (expected unix seconds in [{MIN_TIMESTAMP}, {MAX_TIMESTAMP}), "
                     f"1990-01-01 to 2100-01-01)")
            limit = future_limit()
            bad_rows(col, ~out & (vals >= limit), f"are in the future (at or after {io.day_of(limit)}; expected "
                     "logged times no later than today)")
        if col in spec.vocab:
            allowed = pa.array(spec.vocab[col])
            unknown = int(pc.sum(pc.invert(pc.is_in(arr, value_set=allowed))).as_py() or 0)
            if unknown:
                oov[col] = unknown
        if col.startswith("label_"):
            bad_rows(col, (vals != 0) & (vals != 1), "are not 0 or 1 (expected binary labels)")
        if col.startswith("s_") and col not in spec.columns:
            bad_rows(col, vals < 0, "are negative (expected sparse ids >= 0)")
    return problems, oov


def check_table(spec: TableSpec, table: pa.Table, source: str) -> tuple[list[str], dict[str, int]]:
    """Check one table (or one partition file) against ``spec``.

    Returns (errors, out-of-vocabulary counts per column).
    """
    problems, oov = table_problems(spec, table, source)
    return [p.render() for p in problems], oov


def examples_of(values: np.ndarray, k: int = 3) -> str:
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


def duplicate_rows(table: pa.Table, columns: tuple[str, ...]) -> pa.Table:
    """The rows of ``table`` (``columns`` only) whose values repeat in another row, every occurrence, in order."""
    t = table.select(list(columns))
    return t.filter(pa.array(t.to_pandas().duplicated(keep=False).to_numpy()))


def table_level_errors(spec: TableSpec, table: pa.Table, rows: int | None = None) -> list[str]:
    """Checks that need the whole table (every partition): duplicate primary keys, duplicate rows
    (events), columns that must be constant per key (one user per impression request). ``rows``: the table's
    row count when ``table`` holds only the rows that repeat within their partition (:func:`duplicate_rows`;
    equal events share a timestamp, hence a partition), for the duplicate-rows check."""
    errors = []
    dup, example = _duplicates(table, spec.primary_key)
    if dup:
        errors.append(f"{spec.filename}: column{'s' if len(spec.primary_key) > 1 else ''} "
                      f"{', '.join(repr(c) for c in spec.primary_key)}: {rows_of(dup, table.num_rows)} "
                      f"duplicate the primary key (expected unique; e.g. {example})")
    if spec.unique_rows:
        dup, example = _duplicates(table, tuple(spec.columns))
        if dup:
            errors.append(f"{spec.filename}: {rows_of(dup, rows or table.num_rows)} repeat an earlier row in every column "
                          f"(duplicate events; expected each event once; e.g. {example})")
    for key, cols in spec.one_per_key.items():
        df = table.select([key, *cols]).to_pandas()
        for col in cols:
            per_key = df.groupby(key, sort=False)[col].nunique()
            shared = per_key[per_key > 1]
            if len(shared):
                k = shared.index[0]
                seen = sorted(df.loc[df[key] == k, col].unique().tolist())[:3]
                errors.append(f"{spec.filename}: column '{key}': {len(shared)} of {len(per_key)} {key} values have "
                              f"more than one {col} (expected one {col} per {key}; e.g. {key}={k}: {col} "
                              f"{', '.join(map(str, seen))})")
    return errors


def check_partition_days(table: pa.Table, key: str, source: str, table_name: str) -> list[Problem]:
    lo, hi = io.partition_bounds(key)
    ts = table.column("timestamp").to_numpy(zero_copy_only=False)
    bad = (ts < lo) | (ts >= hi)
    if not bad.any():
        return []
    return [Problem(table_name, source, f"fall outside the partition's {io.partition_granularity(key)} {key}",
                    "rows", "timestamp", int(bad.sum()), len(ts), int(np.argmax(bad)))]


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
    for key, tp in OPTIONAL_META_KEYS.items():
        if key in meta and (not isinstance(meta[key], tp) or isinstance(meta[key], bool)):
            errors.append(f"{source}: key '{key}' is {meta[key]!r}, expected {tp.__name__} (or leave it out)")
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
                errors.append(f"impressions: column '{name}': {rows_of(bad, len(vals))} are outside [0, {card}) "
                              f"(the cardinality in {source} sparse_features)")
    return errors
