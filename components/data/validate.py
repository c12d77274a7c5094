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

The checks of one table and of ``meta.json`` are in :mod:`components.data.checks`; ``homefeed data validate
--fix-types`` casts compatible column types first (:func:`components.data.casts.fix_types`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from components.data import durable, io
from components.data.checks import (
    Problem,
    check_meta,
    check_partition_days,
    duplicate_rows,
    examples_of,
    group_problems,
    rows_of,
    table_level_errors,
    table_problems,
)
from components.data.schemas import TABLES, DataValidationError, TableSpec  # the loaders raise DataValidationError
from components.data.summary import EventStats, summarize
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


class _References:
    """Unknown-id errors of a table's reference columns, added a partition at a time: a line per file (at most
    five per column, then one with the rest and the total)."""

    def __init__(self, name: str):
        self.spec = TABLES[name]
        self.lines: dict[str, list[str]] = {col: [] for col in self.spec.references}
        self.unknown: dict[str, int] = dict.fromkeys(self.spec.references, 0)
        self._known: dict[str, np.ndarray] = {}  # "table.column" -> its sorted ids, once (not once per partition)

    def add(self, table: pa.Table, parts: list[tuple[str, int]], tables: dict[str, pa.Table]) -> None:
        """``table``: the rows of the files ``parts`` ((file, rows) in order); ``tables``: the referenced tables."""
        for col, target in self.spec.references.items():
            ref_table, ref_col = target.split(".")
            if ref_table not in tables:
                continue
            values = table.column(col)
            if target not in self._known:
                self._known[target] = np.unique(tables[ref_table].column(ref_col).to_numpy(zero_copy_only=False))
            known, v = self._known[target], values.to_numpy(zero_copy_only=False)
            unknown = known[np.searchsorted(known, v).clip(0, len(known) - 1)] != v if len(known) else np.ones(len(v), bool)
            if not unknown.any():
                continue
            self.unknown[col] += int(unknown.sum())
            offset = 0
            for source, n in parts:
                k = int(unknown[offset:offset + n].sum())
                if k:
                    ids = np.unique(values.slice(offset, n).to_numpy(zero_copy_only=False)[unknown[offset:offset + n]])
                    self.lines[col].append(f"{source}: column '{col}': {rows_of(k, n)} point at unknown {ref_table} "
                                           f"(expected ids present in {ref_table}.{ref_col}; e.g. {examples_of(ids)})")
                offset += n

    def errors(self, rows: int) -> list[str]:
        """The lines, for a table of ``rows`` rows in all."""
        errors = []
        for col, lines in self.lines.items():
            errors += lines[:5]
            if len(lines) > 5:
                ref_table = self.spec.references[col].split(".")[0]
                errors.append(f"{self.spec.filename}: column '{col}': {len(lines) - 5} more files point at unknown "
                              f"{ref_table} ({rows_of(self.unknown[col], rows)} in all)")
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
    stored = io.partitions(data_dir, name)  # listed once, not once per key
    for key in stored if days is None else days:
        found = io.locate(data_dir, name, key, stored)
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
            t = durable.read_parquet(path)
        except Exception as e:  # noqa: BLE001 - report any unreadable file by name
            out.errors.append(f"{source}: cannot be read as Parquet: {e}")
            continue
        if bounds is not None and "timestamp" in t.column_names:  # one day of a month partition
            ts = t.column("timestamp")
            t = t.filter(pc.and_(pc.greater_equal(ts, bounds[0]), pc.less(ts, bounds[1])))
        problems, oov = table_problems(spec, t, source)
        if not problems and key is not None and "timestamp" in t.column_names:
            problems = check_partition_days(t, key, source, spec.filename)
        out.problems += problems
        for col, k in oov.items():
            out.oov[f"{name}.{col}"] = out.oov.get(f"{name}.{col}", 0) + k
        out.frames.append(t)
        out.parts.append((source, t.num_rows))
    return out


def _read_meta(data_dir: Path) -> tuple[object, list[str]]:
    """(meta.json parsed or None, the problem reading it)."""
    if not (data_dir / "meta.json").exists():
        return None, ["meta.json: missing (expected the dataset's split time and feature lists)"]
    try:
        return json.loads((data_dir / "meta.json").read_text()), []
    except ValueError as e:  # bad JSON, or bytes that are not UTF-8
        return None, [f"meta.json: not valid JSON: {e}"]


def _check_whole(data_dir: Path, name: str, files: list[tuple[Path, str | None, tuple[int, int] | None]],
                 tables: dict[str, pa.Table]) -> tuple[_Checked, pa.Table | None, int, list[str]]:
    """A table that is one file, as :func:`_check_partitioned` returns a partitioned one."""
    checked = _check_files(data_dir, name, files)
    if not checked.ok or not checked.frames:
        return checked, None, 0, []
    whole, refs = checked.table(), _References(name)
    refs.add(whole, checked.parts, tables)
    return checked, whole, whole.num_rows, table_level_errors(TABLES[name], whole) + refs.errors(whole.num_rows)


def _check_partitioned(data_dir: Path, name: str, files: list[tuple[Path, str | None, tuple[int, int] | None]],
                       tables: dict[str, pa.Table], meta: object, events: EventStats
                       ) -> tuple[_Checked, pa.Table | None, int, list[str]]:
    """A partitioned table checked one partition at a time, as :func:`validate_dir` checks a whole table.

    Returns (the per-file results, without rows; the columns the whole-table checks read -- primary key,
    one-per-key and the columns ``meta`` lists -- of every row, or None when a file failed; the row count; the
    whole-table and reference errors). Duplicate rows are counted per partition (equal rows share their
    timestamp, so they share a partition), unknown ids per file; ``events`` gathers the summary's counts.
    """
    spec = TABLES[name]
    listed = [c for key in ("dense_features", "sparse_features") if isinstance(meta, dict)
              and isinstance(meta.get(key), (list, dict)) for c in meta[key] if isinstance(c, str)]
    keep = list(dict.fromkeys([*spec.primary_key, *(c for k, cols in spec.one_per_key.items() for c in (k, *cols)),
                               *listed]))
    out, kept, dups, refs = _Checked(), [], [], _References(name)
    split = meta.get("split_timestamp") if isinstance(meta, dict) else None
    for _, group in itertools.groupby(files, key=lambda f: f[1]):
        checked = _check_files(data_dir, name, list(group))
        out.problems += checked.problems
        out.errors += checked.errors
        out.parts += checked.parts
        for k, v in checked.oov.items():
            out.oov[k] = out.oov.get(k, 0) + v
        if not out.ok or not checked.frames:
            continue  # a failed file: the whole-table checks are skipped, the per-file ones go on
        t = checked.table()
        kept.append(t.select([c for c in keep if c in t.column_names]))
        if spec.unique_rows:
            dups.append(duplicate_rows(t, tuple(spec.columns)))
        refs.add(t, checked.parts, tables)
        if name == "events":
            events.add(t, split if isinstance(split, int) else None)
    rows = sum(n for _, n in out.parts)
    if not out.ok or not kept:
        return out, None, rows, []
    whole = pa.concat_tables(kept, promote_options="default")
    errors = table_level_errors(dataclasses.replace(spec, unique_rows=False), whole) if keep else []
    if spec.unique_rows:
        errors += table_level_errors(dataclasses.replace(spec, primary_key=(), one_per_key={}),
                                     pa.concat_tables(dups, promote_options="default"), rows=rows)
    return out, whole if keep else None, rows, errors + refs.errors(rows)


def validate_dir(data_dir: str | Path, raise_on_error: bool = True) -> ValidationReport:
    """Validate every table of ``data_dir`` and ``meta.json``.

    Raises :class:`DataValidationError` listing all problems, grouped (or returns them in the report
    when ``raise_on_error`` is False). Out-of-vocabulary action types/surfaces are counted in
    ``report.dropped`` ("events.action_type" -> rows), not errors. Partitioned tables (events, impressions)
    are read a partition at a time (:func:`_check_partitioned`), so validating a log does not load it.
    """
    data_dir = Path(data_dir)
    report = ValidationReport(str(data_dir))
    if not data_dir.is_dir():
        report.errors.append(f"{data_dir}: not a directory")
        if raise_on_error:
            raise DataValidationError(report.errors)
        return report
    meta, meta_errors = _read_meta(data_dir)  # read first: the partitioned tables keep the columns it lists
    tables: dict[str, pa.Table] = {}
    later: dict[str, list[str]] = {}  # table -> its whole-table and reference errors, reported after every file's
    events = EventStats()
    for name in TABLES:
        files, errors = _files(data_dir, name)
        report.errors += errors
        if not files:
            continue
        checked, whole, rows, later_errors = (_check_partitioned(data_dir, name, files, tables, meta, events)
                                              if TABLES[name].partitioned else _check_whole(data_dir, name, files, tables))
        report.errors += checked.errors + group_problems(checked.problems)
        for k, v in checked.oov.items():
            report.dropped[k] = report.dropped.get(k, 0) + v
        if checked.ok and checked.parts:
            report.rows[name] = rows
            later[name] = later_errors
            if whole is not None:
                tables[name] = whole
    for errors in later.values():
        report.errors += errors
    report.errors += meta_errors
    if meta is not None:
        report.errors += check_meta(meta, tables)
    if not report.errors:
        report.summary = summarize(tables, meta, events)
    if report.errors and raise_on_error:
        raise DataValidationError(report.errors)
    return report


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
                refs[ref_table] = durable.read_parquet(ref_path, columns=[ref_col])
            except Exception as e:  # noqa: BLE001 - an unreadable referenced table, by name
                errors.append(f"{ref_path.relative_to(data_dir)}: cannot be read as Parquet: {e}")
    references = _References(name)
    references.add(table, parts, refs)
    errors += references.errors(table.num_rows)
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
    # read_checked found one vector length, no nulls: the flat values are the (N, F) matrix (was a stack of N
    # per-row arrays and a copy: ~4x the matrix at 1M pins)
    flat = pc.list_flatten(t.column("features")).to_numpy(zero_copy_only=False)
    return ids, flat.astype(np.float32, copy=False).reshape(t.num_rows, -1)


# ----------------------------------------------------------------------------------------------
# --fix-types: cast compatible column types to the schema's
# ----------------------------------------------------------------------------------------------
