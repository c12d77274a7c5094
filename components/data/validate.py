"""Validation of a data directory and the loaders that use it.

Every rejection names the file, the column, how many rows are affected (and the first bad row, or
example ids) and what was expected. Rejected: missing tables, columns or label columns, wrong types,
nulls, NaN/inf, negative durations or sparse ids, durations above ``MAX_DURATION_S`` (one day),
strings that are not UTF-8, timestamps out of range, in the future or outside their day/month
partition, partition folders that are not ``dt=YYYY-MM-DD`` / ``dt=YYYY-MM``, duplicate primary keys,
duplicate events, a request shared by two users, ids pointing at unknown pins/boards/users, empty
tables and partitions, unreadable files (every ``*.parquet`` of a partition folder is read), and a
``meta.json`` that is missing keys or disagrees with the tables (feature_dim, listed features, sparse
cardinalities). All problems are reported at once, one line per problem: the same problem in many
partition files is one line with the count of files and rows and the first example, and an error
message lists at most ``schemas.MAX_LISTED_ERRORS`` of them.

Out-of-vocabulary action types and surfaces are not fatal: the PinnerFormer paper drops those rows,
so the loaders drop and count them and the validator reports the counts.

:func:`fix_types` (``homefeed data validate --fix-types``) casts columns whose type is compatible
with the schema (list<double> -> list<float>, int32 -> int64, large_string -> string, ...).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.data import io
from components.data.schemas import (  # noqa: F401 - DataValidationError is re-exported
    FUTURE_SLACK_S,
    MAX_TIMESTAMP,
    META_KEYS,
    MIN_TIMESTAMP,
    OPTIONAL_META_KEYS,
    TABLES,
    DataValidationError,
    TableSpec,
)
from components.data.vocab import dataset_spec, vocab_of


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
            return (f"{where}: column '{self.column}': {_rows(self.rows, self.total)} {self.what}; "
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


def table_level_errors(spec: TableSpec, table: pa.Table) -> list[str]:
    """Checks that need the whole table (every partition): duplicate primary keys, duplicate rows
    (events), columns that must be constant per key (one user per impression request)."""
    errors = []
    dup, example = _duplicates(table, spec.primary_key)
    if dup:
        errors.append(f"{spec.filename}: column{'s' if len(spec.primary_key) > 1 else ''} "
                      f"{', '.join(repr(c) for c in spec.primary_key)}: {_rows(dup, table.num_rows)} "
                      f"duplicate the primary key (expected unique; e.g. {example})")
    if spec.unique_rows:
        dup, example = _duplicates(table, tuple(spec.columns))
        if dup:
            errors.append(f"{spec.filename}: {_rows(dup, table.num_rows)} repeat an earlier row in every column "
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


def _check_partition_days(table: pa.Table, key: str, source: str, table_name: str) -> list[Problem]:
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


def _files(data_dir: Path, name: str, days: list[str] | None = None
           ) -> tuple[list[tuple[Path, str | None, tuple[int, int] | None]], list[str]]:
    """The files of table ``name`` as (path, partition key, day filter) and the problems that keep
    files from being listed (bad partition folder names, missing table or partitions)."""
    spec = TABLES[name]
    if not spec.partitioned:
        path = data_dir / spec.filename
        if not path.exists():
            return [], [f"{spec.filename}: missing (table '{name}', expected columns {', '.join(spec.columns)})"]
        return [(path, None, None)], []
    errors = io.check_partition_names(data_dir, name)
    if errors:
        return [], errors
    files: list[tuple[Path, str | None, tuple[int, int] | None]] = []
    for key in io.partitions(data_dir, name) if days is None else days:
        found = io.locate(data_dir, name, key)
        if found is None:
            raise FileNotFoundError(f"{io.partition_path(data_dir, name, key).parent}: no {name} partition for "
                                    f"day {key}")
        files += [(p, found[0], found[1]) for p in io.partition_files(data_dir, name, found[0])]
    if not files:
        empty = [p.name for p in io.partition_dirs(data_dir, name)]
        errors.append(f"{spec.filename}: no day partitions (expected {spec.filename}/dt=YYYY-MM-DD/*.parquet or "
                      f"dt=YYYY-MM/*.parquet{'; folders without a .parquet file: ' + ', '.join(empty[:3]) if empty else ''}"
                      f"); table '{name}' has 0 rows")
    return files, errors


@dataclass
class _Checked:
    problems: list[Problem] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # problems that are not per-file (unreadable files)
    frames: list[pa.Table] = field(default_factory=list)
    parts: list[tuple[str, int]] = field(default_factory=list)  # (file, rows) in concatenation order
    oov: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.errors

    def table(self) -> pa.Table:
        return pa.concat_tables(self.frames, promote_options="default") if len(self.frames) > 1 else self.frames[0]


def _check_files(data_dir: Path, name: str, files: list[tuple[Path, str | None, tuple[int, int] | None]]) -> _Checked:
    """Read and check every file of one table (each partition file on its own)."""
    spec = dataset_spec(data_dir, name)  # the vocabularies meta.json declares (homefeed's by default)
    out = _Checked()
    for path, key, bounds in files:
        source = str(path.relative_to(data_dir))
        try:
            t = io.read_parquet(path)
        except Exception as e:  # noqa: BLE001 - report any unreadable file by name
            out.errors.append(f"{source}: cannot be read as Parquet: {e}")
            continue
        if bounds is not None and "timestamp" in t.column_names:  # one day of a month partition
            ts = t.column("timestamp")
            t = t.filter(pc.and_(pc.greater_equal(ts, bounds[0]), pc.less(ts, bounds[1])))
        problems, oov = table_problems(spec, t, source)
        if not problems and key is not None and "timestamp" in t.column_names:
            problems = _check_partition_days(t, key, source, spec.filename)
        out.problems += problems
        for col, k in oov.items():
            out.oov[f"{name}.{col}"] = out.oov.get(f"{name}.{col}", 0) + k
        out.frames.append(t)
        out.parts.append((source, t.num_rows))
    return out


def validate_dir(data_dir: str | Path, raise_on_error: bool = True) -> ValidationReport:
    """Validate every table of ``data_dir`` and ``meta.json``.

    Raises :class:`DataValidationError` listing all problems, grouped (or returns them in the report
    when ``raise_on_error`` is False). Out-of-vocabulary action types/surfaces are counted in
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
    for name in TABLES:
        files, errors = _files(data_dir, name)
        report.errors += errors
        if not files:
            continue
        checked = _check_files(data_dir, name, files)
        report.errors += checked.errors + group_problems(checked.problems)
        for k, v in checked.oov.items():
            report.dropped[k] = report.dropped.get(k, 0) + v
        if checked.ok and checked.frames:
            tables[name] = checked.table()
            sources[name] = checked.parts
    for name, t in tables.items():
        report.rows[name] = t.num_rows
        report.errors += table_level_errors(TABLES[name], t)
        report.errors += _check_references(data_dir, name, t, sources[name], tables)
    meta_path = data_dir / "meta.json"
    meta = None
    if not meta_path.exists():
        report.errors.append("meta.json: missing (expected the dataset's split time and feature lists)")
    else:
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as e:  # bad JSON, or bytes that are not UTF-8
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
    if not spec.partitioned and not (data_dir / spec.filename).exists():
        raise FileNotFoundError(f"{data_dir / spec.filename}: table '{name}' is missing")
    files, errors = _files(data_dir, name, None if days is None else list(days))
    if errors:
        raise DataValidationError(errors)
    checked = _check_files(data_dir, name, files)
    if not checked.ok:
        raise DataValidationError(checked.errors + group_problems(checked.problems))
    table, parts = checked.table(), checked.parts
    errors = table_level_errors(spec, table)
    refs: dict[str, pa.Table] = {}
    for target in spec.references.values():
        ref_table, ref_col = target.split(".")
        ref_path = data_dir / TABLES[ref_table].filename
        if not TABLES[ref_table].partitioned and ref_path.exists():
            try:
                refs[ref_table] = io.read_parquet(ref_path, columns=[ref_col])
            except Exception as e:  # noqa: BLE001 - an unreadable referenced table, by name
                errors.append(f"{ref_path.relative_to(data_dir)}: cannot be read as Parquet: {e}")
    errors += _check_references(data_dir, name, table, parts, refs)
    if errors:
        raise DataValidationError(errors)
    return table


def load_events(data_dir: str | Path, days: list[str] | None = None,
                counts: dict[str, int] | None = None) -> pd.DataFrame:
    """Events (all days or the listed ones) sorted by (user_id, timestamp), checked (:func:`read_checked`),
    out-of-vocabulary rows dropped and counted in ``counts``."""
    df = read_checked(data_dir, "events", days).to_pandas()
    df = drop_out_of_vocab(df, dataset_spec(data_dir, "events"), counts)
    df.attrs["vocab"] = vocab_of(data_dir)  # action types, surfaces, positive rule of this dataset
    return df.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)


def load_table(data_dir: str | Path, name: str, counts: dict[str, int] | None = None) -> pd.DataFrame:
    """A checked table as pandas (impressions: all days, OOV surfaces dropped and added to ``counts``)."""
    spec = dataset_spec(data_dir, name)
    df = read_checked(data_dir, name).to_pandas()
    df.attrs["vocab"] = vocab_of(data_dir)
    return drop_out_of_vocab(df, spec, counts) if spec.vocab else df


def pin_features(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(pin_ids (N,), features (N, F) float32) from pins.parquet, checked."""
    t = read_checked(data_dir, "pins")
    ids = t.column("pin_id").to_numpy()
    feats = np.stack(t.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
    return ids, feats


# ----------------------------------------------------------------------------------------------
# --fix-types: cast compatible column types to the schema's
# ----------------------------------------------------------------------------------------------


def _target_type(spec: TableSpec, col: str) -> pa.DataType | None:
    if col in spec.columns:
        return spec.columns[col]
    return next((t for p, t in spec.prefixed.items() if col.startswith(p)), None)


def _compatible(got: pa.DataType, want: pa.DataType) -> bool:
    """True when ``got`` converts to ``want`` without reinterpreting values (numbers stay numbers,
    text stays text, vectors stay vectors). Whether the values fit is decided by the cast itself."""
    if pa.types.is_integer(want):
        return pa.types.is_integer(got) or pa.types.is_boolean(got) or pa.types.is_timestamp(got)
    if pa.types.is_floating(want):
        return pa.types.is_integer(got) or pa.types.is_floating(got)
    if pa.types.is_string(want):
        return pa.types.is_large_string(got) or (pa.types.is_dictionary(got) and pa.types.is_string(got.value_type))
    if pa.types.is_list(want) or pa.types.is_fixed_size_list(want):
        is_list = pa.types.is_list(got) or pa.types.is_large_list(got) or pa.types.is_fixed_size_list(got)
        return is_list and (got.value_type == want.value_type or _compatible(got.value_type, want.value_type))
    return False


def _type_name(t: pa.DataType) -> str:
    """``list<double>`` rather than ``list<element: double>`` (the field name of a list is noise here)."""
    return re.sub(r"<(item|element): ", "<", str(t))


_TS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _cast(arr: pa.ChunkedArray, want: pa.DataType) -> pa.ChunkedArray:
    got = arr.type
    if pa.types.is_timestamp(got):  # an Arrow/pandas datetime -> unix seconds
        ints = pc.cast(arr, pa.int64())
        return pc.cast(pc.floor(pc.divide(pc.cast(ints, pa.float64()), float(_TS_PER_SECOND[got.unit]))), want)
    # narrowing floats (double -> float) may round; values beyond float32 become inf, which the
    # validator then reports. Integer casts are checked: a value that does not fit is an error.
    safe = not (pa.types.is_floating(want) or (pa.types.is_list(want) and pa.types.is_floating(want.value_type)))
    return pc.cast(arr, want, safe=safe)


def fix_types(data_dir: str | Path) -> list[str]:
    """Rewrite the files of ``data_dir`` whose columns have a type compatible with the schema's but not
    equal to it (list<double> -> list<float>, int32 -> int64, large_string -> string, timestamp ->
    int64 unix seconds, int64 -> int8 labels when every value fits, ...), each atomically.

    Returns one line per (table, column, from-type): what was cast and in how many files, or why a
    compatible cast failed (the validator then reports that column). Columns of incompatible types
    (text where numbers are expected) are left to the validator.
    """
    data_dir = Path(data_dir)
    done: dict[tuple[str, str, str, str], list[str]] = {}
    failed: list[str] = []
    for name, spec in TABLES.items():
        if spec.partitioned:
            if io.check_partition_names(data_dir, name):
                continue
            paths = [p for key in io.partitions(data_dir, name) for p in io.partition_files(data_dir, name, key)]
        else:
            paths = [data_dir / spec.filename] if (data_dir / spec.filename).exists() else []
        for path in paths:
            source = str(path.relative_to(data_dir))
            try:
                table = pq.read_table(path)
            except Exception:  # noqa: BLE001 - unreadable files are the validator's to report
                continue
            changed = []
            for i, col in enumerate(table.column_names):
                want, got = _target_type(spec, col), table.schema.field(col).type
                if want is None or got == want or not _compatible(got, want):
                    continue
                try:
                    table = table.set_column(i, pa.field(col, want), _cast(table.column(col), want))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    failed.append(f"{source}: column '{col}': cannot cast {_type_name(got)} to {_type_name(want)}: {e}")
                    continue
                changed.append((col, got))
            if changed:
                io.atomic_write_parquet(table, path)
                for col, got in changed:
                    done.setdefault((spec.filename, col, _type_name(got), _type_name(_target_type(spec, col))),
                                    []).append(source)
    lines = [f"{table} ({len(files)} file{'s' if len(files) > 1 else ''}, first {files[0]}): column '{col}' "
             f"cast from {got} to {want}" for (table, col, got, want), files in done.items()]
    return lines + failed
