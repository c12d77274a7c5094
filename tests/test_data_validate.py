"""The validator and the loaders: one test per rejection class, out-of-vocabulary counting, and
hypothesis property tests (random valid tables pass; any single corruption is caught, naming the column).

The data directories here are small hand-built ones written with the same writer as `data prepare`,
plus the session's synthetic and ML-100k directories.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.data import durable, io
from components.data.checks import check_table
from components.data.prepare import to_arrow, write_dataset
from components.data.schemas import ACTION_TYPES, SURFACES, TABLES, TASKS
from components.data.validate import DataValidationError, load_events, load_table, pin_features, validate_dir

START = 1_700_000_000 - 1_700_000_000 % 86_400  # a day boundary (2023-11-14)


def valid_tables(seed: int = 0, pins: int = 6, users: int = 3, events: int = 12, days: int = 2,
                 requests: int = 3, feature_dim: int = 4) -> dict[str, object]:
    """A small, valid data directory's tables (the same dict shape the generators return)."""
    rng = np.random.default_rng(seed)
    pin_ids = np.arange(1, pins + 1, dtype=np.int64) * 10
    user_ids = np.arange(1, users + 1, dtype=np.int64)
    tables: dict[str, object] = {
        "pins": pd.DataFrame({"pin_id": pin_ids,
                              "features": list(rng.normal(size=(pins, feature_dim)).astype(np.float32)),
                              "s_category": rng.integers(0, 3, pins).astype(np.int64)}),
        "boards": pd.DataFrame({"board_id": np.array([1, 2], np.int64), "name": ["a", "b"], "kind": "user"}),
        "pin_boards": pd.DataFrame({"board_id": (np.arange(pins) % 2 + 1).astype(np.int64), "pin_id": pin_ids}),
        "users": pd.DataFrame({"user_id": user_ids, "s_segment": rng.integers(0, 4, users).astype(np.int64)}),
        "events": pd.DataFrame({
            "user_id": rng.choice(user_ids, events),
            "pin_id": rng.choice(pin_ids, events),
            "action_type": rng.choice(ACTION_TYPES, events),
            "surface": rng.choice(SURFACES, events),
            "timestamp": START + np.sort(rng.integers(0, days * 86_400, events)),
            "duration_s": rng.exponential(10.0, events).astype(np.float32),
        }),
    }
    k = min(3, pins)
    imp_pins = np.concatenate([rng.choice(pin_ids, k, replace=False) for _ in range(requests)])
    n = len(imp_pins)
    tables["impressions"] = pd.DataFrame({
        "request_id": np.repeat(np.arange(1, requests + 1, dtype=np.int64), k),
        "user_id": np.repeat(rng.choice(user_ids, requests), k),  # a request is one user's
        "pin_id": imp_pins,
        "surface": rng.choice(SURFACES, n),
        "timestamp": START + rng.integers(0, days * 86_400, n),
        "d_score": rng.normal(size=n).astype(np.float32),
        "s_hour": rng.integers(0, 24, n).astype(np.int64),
        **{f"label_{t}": rng.integers(0, 2, n).astype(np.int8) for t in TASKS},
    })
    tables["meta"] = {"dataset": "handmade", "split_timestamp": START + 86_400, "eval_days": 1,
                      "feature_dim": feature_dim, "dense_features": ["d_score"], "sparse_features": {"s_hour": 24},
                      "user_features": [], "pin_features": [], "domain_feature": "surface"}
    return tables


def write(tmp: Path, tables: dict[str, object]) -> Path:
    return write_dataset(tmp, tables, progress=False)


def errors_of(data_dir: Path) -> list[str]:
    report = validate_dir(data_dir, raise_on_error=False)
    assert not report.ok, "expected the validator to reject this directory"
    return report.errors


def rewrite(path: Path, fn) -> None:
    """Rewrite one Parquet file with ``fn(table) -> table`` (to plant wrong types or missing columns)."""
    pq.write_table(fn(pq.read_table(path)), path)


def first_partition(data_dir: Path, name: str = "events") -> Path:
    return io.partition_path(data_dir, name, io.partitions(data_dir, name)[0])


# ---------------------------------------------------------------------------------------------
# The valid cases
# ---------------------------------------------------------------------------------------------


def test_handmade_directory_is_valid(tmp_path):
    d = write(tmp_path, valid_tables())
    report = validate_dir(d)
    assert report.ok and report.rows["events"] == 12 and report.rows["pins"] == 6
    assert report.summary["users"] == 3 and report.summary["split_day"] == "2023-11-15"
    assert abs(sum(report.summary["action_mix"].values()) - 1.0) < 1e-3


def test_prepared_directories_are_valid(tiny_data, ml100k_data):
    for d in (tiny_data, ml100k_data):
        report = validate_dir(d)
        assert report.ok and not report.dropped
        assert report.rows["events"] == sum(pq.read_metadata(io.partition_path(d, "events", day)).num_rows
                                            for day in io.partitions(d, "events"))


# ---------------------------------------------------------------------------------------------
# One test per rejection class: the message names the file, the column and how many rows
# ---------------------------------------------------------------------------------------------


def test_missing_column(tmp_path):
    d = write(tmp_path, valid_tables())
    part = first_partition(d)
    n = pq.read_metadata(part).num_rows
    rewrite(part, lambda t: t.drop_columns(["duration_s"]))
    errs = errors_of(d)
    rel = str(part.relative_to(d))
    assert any(rel in e and "missing column 'duration_s'" in e and f"all {n} rows" in e for e in errs), errs


def test_missing_label_column(tmp_path):
    d = write(tmp_path, valid_tables())
    part = first_partition(d, "impressions")
    rewrite(part, lambda t: t.drop_columns(["label_hide"]))
    errs = errors_of(d)
    assert any("impressions/dt=" in e and "missing column 'label_hide'" in e for e in errs), errs


def test_wrong_dtype(tmp_path):
    d = write(tmp_path, valid_tables())
    rewrite(d / "pins.parquet", lambda t: t.set_column(0, "pin_id", pc.cast(t["pin_id"], pa.float64())))
    errs = errors_of(d)
    assert any(e.startswith("pins.parquet: column 'pin_id' has type double, expected int64 (all 6 rows)")
               for e in errs), errs


def test_wrong_dtype_of_prefixed_column(tmp_path):
    d = write(tmp_path, valid_tables())
    part = first_partition(d, "impressions")
    i = pq.read_schema(part).get_field_index("s_hour")
    rewrite(part, lambda t: t.set_column(i, "s_hour", pc.cast(t["s_hour"], pa.int32())))
    errs = errors_of(d)
    assert any("column 's_hour' has type int32, expected int64" in e for e in errs), errs


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_values(tmp_path, bad):
    tables = valid_tables()
    ev = tables["events"]
    ev.loc[[0, 1], "duration_s"] = bad
    d = write(tmp_path, tables)
    errs = errors_of(d)
    # rows 0 and 1 are the earliest events, so both sit in the first day's partition
    rel = str(first_partition(d).relative_to(d))
    n = pq.read_metadata(first_partition(d)).num_rows
    assert any(e.startswith(f"{rel}: column 'duration_s': 2 of {n} rows are NaN or infinite")
               and e.endswith("first at row 0") for e in errs), errs


def test_nan_in_feature_vectors(tmp_path):
    tables = valid_tables()
    tables["pins"].at[3, "features"] = np.array([0.0, np.nan, 1.0, 2.0], np.float32)
    d = write(tmp_path, tables)
    errs = errors_of(d)
    assert any(e.startswith("pins.parquet: column 'features': 1 of 6 rows hold NaN or infinite") for e in errs), errs


def test_negative_durations(tmp_path):
    tables = valid_tables()
    tables["events"].loc[0, "duration_s"] = -3.0
    d = write(tmp_path, tables)
    errs = errors_of(d)
    assert any("column 'duration_s': 1 of" in e and "are negative (expected >= 0)" in e for e in errs), errs


@pytest.mark.parametrize("ts, day", [(0, "1970-01-01"), (5_000_000_000, "2128-06-11")])
def test_timestamps_out_of_range(tmp_path, ts, day):
    tables = valid_tables()
    tables["events"].loc[0, "timestamp"] = ts
    d = write(tmp_path, tables)
    errs = errors_of(d)
    assert any(e.startswith(f"events/dt={day}/part-0.parquet: column 'timestamp': 1 of 1 row are out of range")
               for e in errs), errs


def test_timestamp_in_the_wrong_partition(tmp_path):
    d = write(tmp_path, valid_tables())
    part = first_partition(d)
    i = pq.read_schema(part).get_field_index("timestamp")
    rewrite(part, lambda t: t.set_column(i, "timestamp", pc.add(t["timestamp"], 3 * 86_400)))
    errs = errors_of(d)
    assert any("column 'timestamp'" in e and "fall outside the partition's day" in e for e in errs), errs


def test_duplicate_primary_keys(tmp_path):
    tables = valid_tables()
    pins = tables["pins"]
    tables["pins"] = pd.concat([pins, pins.iloc[[2]]], ignore_index=True)
    d = write(tmp_path, tables)
    errs = errors_of(d)
    assert any(e.startswith("pins.parquet: column 'pin_id': 1 of 7 rows duplicate the primary key")
               and "pin_id=30" in e for e in errs), errs


def test_duplicate_composite_key(tmp_path):
    tables = valid_tables()
    edges = tables["pin_boards"]
    tables["pin_boards"] = pd.concat([edges, edges.iloc[[0, 1]]], ignore_index=True)
    d = write(tmp_path, tables)
    errs = errors_of(d)
    assert any(e.startswith("pin_boards.parquet: columns 'board_id', 'pin_id': 2 of 8 rows duplicate") for e in errs)


def test_edges_pointing_at_unknown_pins(tmp_path):
    tables = valid_tables()
    tables["pin_boards"].loc[[0, 1], "pin_id"] = [999, 998]
    d = write(tmp_path, tables)
    errs = errors_of(d)
    assert any(e.startswith("pin_boards.parquet: column 'pin_id': 2 of 6 rows point at unknown pins")
               and "998, 999" in e for e in errs), errs


def test_events_pointing_at_unknown_pins_name_the_partition(tmp_path):
    tables = valid_tables()
    tables["events"].loc[0, "pin_id"] = 12345
    d = write(tmp_path, tables)
    errs = errors_of(d)
    rel = str(first_partition(d).relative_to(d))
    assert any(e.startswith(f"{rel}: column 'pin_id': 1 of") and "unknown pins" in e and "12345" in e
               for e in errs), errs


@pytest.mark.parametrize("name", ["boards", "pins", "users"])
def test_empty_tables(tmp_path, name):
    tables = valid_tables()
    tables[name] = tables[name].iloc[:0]
    d = write(tmp_path, tables)
    errs = errors_of(d)
    assert any(e.startswith(f"{name}.parquet: table '{name}' is empty: 0 rows") for e in errs), errs


def test_empty_partition(tmp_path):
    d = write(tmp_path, valid_tables())
    part = first_partition(d)
    rewrite(part, lambda t: t.slice(0, 0))
    errs = errors_of(d)
    assert any(e.startswith(f"{part.relative_to(d)}: table 'events' is empty: 0 rows") for e in errs), errs


def test_missing_table_and_no_partitions(tmp_path):
    d = write(tmp_path, valid_tables())
    (d / "boards.parquet").unlink()
    shutil.rmtree(d / "impressions")
    errs = errors_of(d)
    assert any(e.startswith("boards.parquet: missing (table 'boards'") for e in errs), errs
    assert any(e.startswith("impressions: no day partitions") for e in errs), errs


def test_unreadable_partition(tmp_path):
    d = write(tmp_path, valid_tables())
    part = first_partition(d)
    part.write_bytes(b"not a parquet file")
    errs = errors_of(d)
    assert any(e.startswith(f"{part.relative_to(d)}: cannot be read as Parquet") for e in errs), errs


def test_meta_problems(tmp_path):
    tables = valid_tables()
    tables["impressions"].loc[0, "s_hour"] = 30  # cardinality 24 in meta
    del tables["meta"]["split_timestamp"]
    d = write(tmp_path, tables)
    errs = errors_of(d)
    assert "meta.json: missing key 'split_timestamp' (expected int)" in errs
    tables["meta"]["split_timestamp"] = START
    write(d, tables)
    errs = errors_of(d)
    assert any(e.startswith("impressions: column 's_hour': 1 of 9 rows are outside [0, 24)") for e in errs), errs
    tables["impressions"].loc[0, "s_hour"] = 3
    tables["meta"]["feature_dim"] = 8
    write(d, tables)
    errs = errors_of(d)
    assert any(e.startswith("pins.parquet: column 'features': vectors of length [4]") and "feature_dim = 8" in e
               for e in errs), errs


def test_all_problems_are_reported_at_once(tmp_path):
    tables = valid_tables()
    tables["events"].loc[0, "duration_s"] = -1.0
    tables["pin_boards"].loc[0, "pin_id"] = 999
    d = write(tmp_path, tables)
    with pytest.raises(DataValidationError) as exc:
        validate_dir(d)
    assert len(exc.value.errors) == 2
    assert "duration_s" in str(exc.value) and "unknown pins" in str(exc.value)


def test_loaders_reject_bad_data(tmp_path):
    tables = valid_tables()
    tables["events"].loc[0, "duration_s"] = np.nan
    tables["pins"].at[0, "features"] = np.array([np.inf, 0, 0, 0], np.float32)
    d = write(tmp_path, tables)
    with pytest.raises(DataValidationError, match="column 'duration_s': 1 of .* NaN or infinite"):
        load_events(d)
    with pytest.raises(DataValidationError, match="pins.parquet: column 'features': 1 of 6 rows"):
        pin_features(d)


def test_loaders_reject_duplicates_unknown_ids_and_empty_tables(tmp_path):
    tables = valid_tables()
    tables["pin_boards"].loc[0, "pin_id"] = 999
    tables["users"] = pd.concat([tables["users"], tables["users"].iloc[[0]]], ignore_index=True)
    tables["events"].loc[0, "pin_id"] = 555
    d = write(tmp_path, tables)
    with pytest.raises(DataValidationError, match="pin_boards.parquet: column 'pin_id': 1 of 6 rows point at "
                                                  "unknown pins .*e.g. 999"):
        load_table(d, "pin_boards")
    with pytest.raises(DataValidationError, match="users.parquet: column 'user_id': 1 of 4 rows duplicate"):
        load_table(d, "users")
    with pytest.raises(DataValidationError, match="events/dt=.*column 'pin_id': 1 of .* unknown pins .*555"):
        load_events(d)
    tables = valid_tables()
    tables["boards"] = tables["boards"].iloc[:0]
    write(d, tables)
    with pytest.raises(DataValidationError, match="boards.parquet: table 'boards' is empty: 0 rows"):
        load_table(d, "boards")
    with pytest.raises(DataValidationError, match="pin_boards.parquet: column 'board_id': 6 of 6 rows point at "
                                                  "unknown boards"):
        load_table(d, "pin_boards")


# ---------------------------------------------------------------------------------------------
# Out-of-vocabulary action types and surfaces: dropped and counted, not fatal
# ---------------------------------------------------------------------------------------------


def test_out_of_vocabulary_rows_are_dropped_and_counted(tmp_path):
    tables = valid_tables(events=20)
    ev = tables["events"]
    ev.loc[[0, 5], "action_type"] = "like"
    ev.loc[[5, 7, 9], "surface"] = "email"
    tables["impressions"].loc[[1, 2], "surface"] = "notifications"
    d = write(tmp_path, tables)
    report = validate_dir(d)
    assert report.ok
    assert report.dropped == {"events.action_type": 2, "events.surface": 3, "impressions.surface": 2}
    counts: dict[str, int] = {}
    loaded = load_events(d, counts=counts)
    assert counts == {"events.action_type": 2, "events.surface": 3}
    assert len(loaded) == 20 - 4  # row 5 has both an unknown action and surface
    assert set(loaded["action_type"]) <= set(ACTION_TYPES) and set(loaded["surface"]) <= set(SURFACES)
    imp_counts: dict[str, int] = {}
    imp = load_table(d, "impressions", counts=imp_counts)
    assert imp_counts == {"impressions.surface": 2} and len(imp) == 9 - 2
    from components.data.prepare import format_summary
    assert "events.action_type: 2 rows" in format_summary(report)


def test_load_events_is_sorted_and_filters_days(tmp_path):
    d = write(tmp_path, valid_tables(events=30, days=3))
    days = io.partitions(d, "events")
    ev = load_events(d)
    assert len(ev) == 30
    assert (ev.sort_values(["user_id", "timestamp"], kind="stable").index == ev.index).all()
    one = load_events(d, days=days[:1])
    lo, hi = io.day_bounds(days[0])
    assert len(one) > 0 and one["timestamp"].between(lo, hi - 1).all()


# ---------------------------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------------------------

sizes = st.fixed_dictionaries({
    "seed": st.integers(0, 2**31 - 1),
    "pins": st.integers(3, 20),
    "users": st.integers(1, 6),
    "events": st.integers(1, 40),
    "days": st.integers(1, 3),
    "requests": st.integers(1, 4),
    "feature_dim": st.integers(1, 8),
})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes)
def test_random_valid_directories_pass(kw):
    with tempfile.TemporaryDirectory() as tmp:
        report = validate_dir(write(Path(tmp), valid_tables(**kw)))
    assert report.ok and report.rows["events"] == kw["events"] and report.rows["pins"] == kw["pins"]
    assert report.dropped == {}


def _corruptions(spec, table: pa.Table) -> list[tuple[str, str]]:
    """(column, kind) pairs that apply to ``table``."""
    out = []
    for col in table.column_names:
        t = table.schema.field(col).type
        if col in spec.columns or any(col == c for c in spec.required_prefixed):
            out += [(col, "drop"), (col, "retype")]
        if col in spec.columns or any(col.startswith(p) for p in spec.prefixed):
            out.append((col, "null"))
        if pa.types.is_floating(t):
            out += [(col, "nan"), (col, "inf")]
        if pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
            out.append((col, "nan_in_vector"))
        if col in spec.non_negative or (col.startswith("s_") and col not in spec.columns):
            out.append((col, "negative"))
        if col in spec.timestamps:
            out.append((col, "out_of_range"))
        if col.startswith("label_"):
            out.append((col, "not_binary"))
    return out


def _corrupt(table: pa.Table, col: str, kind: str, row: int) -> pa.Table:
    i = table.schema.get_field_index(col)
    if kind == "drop":
        return table.drop_columns([col])
    if kind == "retype":
        t = table.schema.field(col).type
        new = pa.string() if not pa.types.is_string(t) else pa.int64()
        values = pa.array([str(v) for v in table[col].to_pylist()]) if new == pa.string() else \
            pa.array(range(table.num_rows), pa.int64())
        return table.set_column(i, col, values)
    values = table[col].to_pylist()
    if kind == "null":
        values[row] = None
        return table.set_column(i, col, pa.array(values, table.schema.field(col).type))
    if kind == "nan_in_vector":
        values[row] = [float("nan")] + list(values[row][1:])
        return table.set_column(i, col, pa.array(values, table.schema.field(col).type))
    values[row] = {"nan": float("nan"), "inf": float("inf"), "negative": -1, "out_of_range": 12,
                   "not_binary": 3}[kind]
    if kind == "negative" and pa.types.is_floating(table.schema.field(col).type):
        values[row] = -0.5
    return table.set_column(i, col, pa.array(values, table.schema.field(col).type))


def _all_corruptions() -> list[tuple[str, str, str]]:
    tables = valid_tables()
    return [(name, col, kind) for name, spec in TABLES.items()
            for col, kind in _corruptions(spec, to_arrow(spec, tables[name]))]


@pytest.mark.parametrize("table_name, col, kind", _all_corruptions())
@settings(max_examples=6, deadline=None)
@given(kw=sizes, data=st.data())
def test_any_single_corruption_is_caught_naming_the_column(table_name, col, kind, kw, data):
    tables = valid_tables(**kw)
    spec = TABLES[table_name]
    table = to_arrow(spec, tables[table_name])
    assert check_table(spec, table, "t.parquet") == ([], {})
    row = data.draw(st.integers(0, table.num_rows - 1), label="row")
    errors, _ = check_table(spec, _corrupt(table, col, kind, row), "t.parquet")
    assert errors, f"{kind} of {table_name}.{col} at row {row} was not caught"
    assert any(e.startswith("t.parquet: ") and f"'{col}'" in e for e in errors), errors
    if kind not in ("drop", "retype"):  # value errors say how many rows and which
        assert any(f"1 of {table.num_rows} row" in e and e.endswith(f"first at row {row}") for e in errors), errors


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kw=sizes, kind=st.sampled_from(["duplicate_pin", "unknown_edge_pin", "unknown_event_user"]), data=st.data())
def test_cross_table_corruption_is_caught(kw, kind, data):
    tables = valid_tables(**kw)
    if kind == "duplicate_pin":
        row = data.draw(st.integers(0, kw["pins"] - 1))
        tables["pins"] = pd.concat([tables["pins"], tables["pins"].iloc[[row]]], ignore_index=True)
        expect = ("pins.parquet: column 'pin_id': 1 of", "duplicate the primary key")
    elif kind == "unknown_edge_pin":
        row = data.draw(st.integers(0, len(tables["pin_boards"]) - 1))
        tables["pin_boards"].loc[row, "pin_id"] = 7  # pin ids are multiples of 10
        expect = ("pin_boards.parquet: column 'pin_id': 1 of", "unknown pins")
    else:
        row = data.draw(st.integers(0, kw["events"] - 1))
        tables["events"].loc[row, "user_id"] = 10_000
        expect = ("events/dt=", "column 'user_id': 1 of", "unknown users")
    with tempfile.TemporaryDirectory() as tmp:
        report = validate_dir(write(Path(tmp), tables), raise_on_error=False)
    assert any(all(x in e for x in expect) for e in report.errors), report.errors


# ---------------------------------------------------------------------------------------------
# Issue #15 classes: duplicates, future partitions, absurd durations, stray files, bad folder
# names, non-UTF-8, shared requests; #17: grouped and capped errors, month partitions, --fix-types
# ---------------------------------------------------------------------------------------------


def test_duplicate_events(tmp_path):
    tables = valid_tables(events=20)
    ev = tables["events"]
    tables["events"] = pd.concat([ev, ev.iloc[[4] * 5]], ignore_index=True).sort_values("timestamp", kind="stable")
    errs = errors_of(write(tmp_path, tables))
    assert any(e.startswith("events: 5 of 25 rows repeat an earlier row in every column (duplicate events")
               and f"user_id={ev['user_id'][4]}" in e for e in errs), errs


def test_future_partition(tmp_path):
    d = write(tmp_path, valid_tables())
    t = pq.read_table(first_partition(d))
    future = 4_070_908_800  # 2099-01-01
    durable.atomic_write_parquet(t.set_column(t.schema.get_field_index("timestamp"), "timestamp",
                                         pa.array([future + 5] * t.num_rows, pa.int64())),
                            d / "events" / "dt=2099-01-01" / "part-0.parquet")
    errs = errors_of(d)
    assert any(e.startswith("events/dt=2099-01-01/part-0.parquet: column 'timestamp':") and "in the future" in e
               for e in errs), errs


def test_absurd_durations(tmp_path):
    tables = valid_tables()
    tables["events"].loc[0, "duration_s"] = 3e38
    errs = errors_of(write(tmp_path, tables))
    assert any("column 'duration_s': 1 of" in e and "above the maximum 86400" in e and "MAX_DURATION_S" in e
               for e in errs), errs


def test_stray_parquet_file_in_a_partition_is_read_and_checked(tmp_path):
    d = write(tmp_path, valid_tables())
    stray = first_partition(d).parent / "part-1.parquet"
    pq.write_table(pa.table({"garbage": ["x", "y"]}), stray)
    errs = errors_of(d)
    rel = str(stray.relative_to(d))
    assert any(e.startswith(f"{rel}: missing column 'user_id'") for e in errs), errs
    # a well-formed second file is simply part of the partition
    part0 = pq.read_table(first_partition(d))
    pq.write_table(part0.slice(0, 1).set_column(1, "pin_id", part0["pin_id"].slice(1, 1)), stray)
    assert validate_dir(d).rows["events"] == 13


def test_garbage_partition_name_is_an_error_not_a_traceback(tmp_path):
    d = write(tmp_path, valid_tables())
    shutil.copytree(first_partition(d).parent, d / "events" / "dt=garbage")
    errs = errors_of(d)
    assert "events/dt=garbage: partition 'dt=garbage' is not of the form dt=YYYY-MM-DD or dt=YYYY-MM" in errs
    with pytest.raises(DataValidationError, match="dt=garbage"):
        load_events(d)


def test_non_utf8_strings(tmp_path):
    d = write(tmp_path, valid_tables())
    part = first_partition(d)
    t = pq.read_table(part)
    i = t.schema.get_field_index("surface")
    raw = [b"homefeed"] * t.num_rows
    raw[1] = b"home\xff\xfefeed"
    rewrite(part, lambda t: t.set_column(i, "surface", pa.array(raw, pa.binary()).view(pa.string())))
    errs = errors_of(d)
    rel = str(part.relative_to(d))
    assert any(e.startswith(f"{rel}: column 'surface': 1 of {t.num_rows} rows hold strings that are not valid UTF-8")
               and e.endswith("first at row 1") for e in errs), errs


def test_request_shared_by_two_users(tmp_path):
    tables = valid_tables()
    tables["impressions"].loc[1, "user_id"] = 3 if tables["impressions"]["user_id"][0] != 3 else 2
    errs = errors_of(write(tmp_path, tables))
    assert any(e.startswith("impressions: column 'request_id': 1 of 3 request_id values have more than one user_id")
               and "request_id=1" in e for e in errs), errs


def test_the_same_problem_in_many_files_is_one_line_and_output_is_capped(tmp_path):
    tables = valid_tables(events=200, days=30)
    d = write(tmp_path, tables)
    files = [io.partition_path(d, "events", day) for day in io.partitions(d, "events")]
    for f in files:
        rewrite(f, lambda t: t.set_column(5, "duration_s", pc.cast(t["duration_s"], pa.float64())))
    errs = errors_of(d)
    line = [e for e in errs if "duration_s" in e]
    assert len(line) == 1 and line[0].startswith(f"events ({len(files)} files, first {files[0].relative_to(d)}): "
                                                 "column 'duration_s' has type double, expected float (all 200 rows)")
    many = DataValidationError([f"problem {i}" for i in range(500)])
    assert str(many).count("\n") == 41 and "... and 460 more problems (500 in all)" in str(many)
    assert len(many.errors) == 500


def test_month_partitions_validate_and_load_by_day(tmp_path):
    tables = valid_tables(events=40, days=3)
    d = write(tmp_path, tables)
    ev = io.read_table(d, "events")
    shutil.rmtree(d / "events")
    io.write_partitioned(d, "events", ev, granularity="month")
    assert io.partitions(d, "events") == ["2023-11"]
    report = validate_dir(d)
    assert report.rows["events"] == 40
    one = load_events(d, days=["2023-11-15"])
    lo, hi = io.day_bounds("2023-11-15")
    assert len(one) == int(((ev["timestamp"].to_numpy() >= lo) & (ev["timestamp"].to_numpy() < hi)).sum()) > 0
    t = pq.read_table(d / "events" / "dt=2023-11" / "part-0.parquet")
    durable.atomic_write_parquet(t, d / "events" / "dt=2023-12" / "part-0.parquet")  # November rows in December
    assert any("fall outside the partition's month 2023-12" in e for e in errors_of(d))


def test_fix_types_casts_compatible_dtypes_and_says_what(tmp_path):
    from components.data.casts import fix_types

    d = write(tmp_path, valid_tables())
    rewrite(d / "pins.parquet", lambda t: t.set_column(1, "features", pc.cast(t["features"], pa.list_(pa.float64()))))
    for day in io.partitions(d, "events"):
        rewrite(io.partition_path(d, "events", day),
                lambda t: t.set_column(0, "user_id", pc.cast(t["user_id"], pa.int32())))
    part = first_partition(d, "impressions")
    i = pq.read_schema(part).get_field_index("label_save")
    rewrite(part, lambda t: t.set_column(i, "label_save", pc.cast(t["label_save"], pa.int64())))
    before = validate_dir(d, raise_on_error=False)
    assert len(before.errors) == 3, before.errors
    cast = fix_types(d)
    assert "pins.parquet (1 file, first pins.parquet): column 'features' cast from list<double> to list<float>" in cast
    assert any(c.startswith("events (2 files") and "'user_id' cast from int32 to int64" in c for c in cast), cast
    assert any("'label_save' cast from int64 to int8" in c for c in cast), cast
    assert validate_dir(d).ok
    assert fix_types(d) == []  # nothing left to cast
    # incompatible: text where numbers are expected is left to the validator
    rewrite(d / "users.parquet", lambda t: t.set_column(0, "user_id", pc.cast(t["user_id"], pa.string())))
    assert fix_types(d) == [] and any("'user_id' has type string" in e for e in errors_of(d))
