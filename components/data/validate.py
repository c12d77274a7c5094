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
    examples_of,
    group_problems,
    rows_of,
    table_level_errors,
    table_problems,
)
from components.data.schemas import TABLES, DataValidationError, TableSpec  # the loaders raise DataValidationError
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
                bad_files.append(f"{source}: column '{col}': {rows_of(k, n)} point at unknown {ref_table} "
                                 f"(expected ids present in {ref_table}.{ref_col}; e.g. {examples_of(ids)})")
            offset += n
        errors += bad_files[:5]
        if len(bad_files) > 5:
            errors.append(f"{spec.filename}: column '{col}': {len(bad_files) - 5} more files point at unknown "
                          f"{ref_table} ({rows_of(int(unknown.sum()), table.num_rows)} in all)")
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
                refs[ref_table] = durable.read_parquet(ref_path, columns=[ref_col])
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
