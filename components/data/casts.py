"""``homefeed data validate --fix-types``: cast the columns of a data directory whose type is compatible with
the schema (list<double> -> list<float>, int32 -> int64, large_string -> string, timestamps -> int64
seconds, ...), rewriting each file atomically; an incompatible column is left for the validator to
reject.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.data import durable, io
from components.data.schemas import TABLES, TableSpec


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
                durable.atomic_write_parquet(table, path)
                for col, got in changed:
                    done.setdefault((spec.filename, col, _type_name(got), _type_name(_target_type(spec, col))),
                                    []).append(source)
    lines = [f"{table} ({len(files)} file{'s' if len(files) > 1 else ''}, first {files[0]}): column '{col}' "
             f"cast from {got} to {want}" for (table, col, got, want), files in done.items()]
    return lines + failed
