"""Day partitions and atomic files (components/data/io.py)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.data import durable, io

DAY = 1_704_067_200  # 2024-01-01 00:00:00 UTC


def _events(ts: list[int]) -> pa.Table:
    n = len(ts)
    return pa.table({"user_id": pa.array(np.arange(n), pa.int64()), "pin_id": pa.array(np.arange(n), pa.int64()),
                     "action_type": ["repin"] * n, "surface": ["homefeed"] * n,
                     "timestamp": pa.array(ts, pa.int64()), "duration_s": pa.array(np.ones(n, np.float32))})


def test_day_helpers():
    assert io.day_of(DAY) == "2024-01-01" and io.day_of(DAY - 1) == "2023-12-31"
    assert list(io.day_of(np.array([DAY, DAY + 86_399, DAY + 86_400]))) == ["2024-01-01", "2024-01-01", "2024-01-02"]
    assert io.day_bounds("2024-01-01") == (DAY, DAY + 86_400)
    with pytest.raises(ValueError, match="date '2024/01/01' is not of the form YYYY-MM-DD"):
        io.day_bounds("2024/01/01")


def test_write_partitioned_splits_on_utc_days_and_keeps_order(tmp_path):
    ts = [DAY + 86_400 + 5, DAY + 10, DAY + 86_399, DAY - 1, DAY + 86_400 + 1]  # unsorted on purpose
    paths = io.write_partitioned(tmp_path, "events", _events(ts))
    assert [p.parent.name for p in paths] == ["dt=2023-12-31", "dt=2024-01-01", "dt=2024-01-02"]
    assert io.partitions(tmp_path, "events") == ["2023-12-31", "2024-01-01", "2024-01-02"]
    day1 = pq.read_table(io.partition_path(tmp_path, "events", "2024-01-01"))
    assert day1["timestamp"].to_pylist() == [DAY + 10, DAY + 86_399]  # stable: input order within a day
    both = io.read_partitions(tmp_path, "events", days=["2024-01-02", "2023-12-31"])
    assert both["timestamp"].to_pylist() == [DAY - 1, DAY + 86_400 + 5, DAY + 86_400 + 1]
    # rewriting one day replaces that day only
    io.write_partitioned(tmp_path, "events", _events([DAY + 7]))
    assert pq.read_table(io.partition_path(tmp_path, "events", "2024-01-01"))["timestamp"].to_pylist() == [DAY + 7]
    assert io.partitions(tmp_path, "events") == ["2023-12-31", "2024-01-01", "2024-01-02"]


def test_missing_partitions_and_tables_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="events: no day partitions"):
        io.read_partitions(tmp_path, "events")
    io.write_partitioned(tmp_path, "events", _events([DAY]))
    with pytest.raises(FileNotFoundError, match=r"no day partitions for \['2030-01-01'\]"):
        io.read_partitions(tmp_path, "events", days=["2030-01-01"])
    with pytest.raises(FileNotFoundError, match="pins.parquet: table 'pins' is missing"):
        io.read_table(tmp_path, "pins")
    with pytest.raises(FileNotFoundError, match="meta.json: missing"):
        io.read_meta(tmp_path)


def test_atomic_json_and_bytes(tmp_path):
    path = io.write_meta(tmp_path / "d", {"b": 1, "a": [1, 2]})
    assert io.read_meta(tmp_path / "d") == {"a": [1, 2], "b": 1}
    durable.atomic_write_bytes(path, b"{}")
    assert io.read_meta(tmp_path / "d") == {}
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["meta.json"]  # no temp files left


def test_month_partitions_write_and_read_by_month_or_day(tmp_path):
    feb = 1_706_745_600  # 2024-02-01
    ts = [DAY + 5, DAY + 86_400 * 20, feb + 3, DAY + 86_400 * 2]
    paths = io.write_partitioned(tmp_path, "events", _events(ts), granularity="month")
    assert [p.parent.name for p in paths] == ["dt=2024-01", "dt=2024-02"]
    assert io.partitions(tmp_path, "events") == ["2024-01", "2024-02"]
    assert io.partition_bounds("2024-01") == (DAY, feb)
    assert io.partition_bounds("2024-12")[1] == 1_735_689_600  # 2025-01-01
    assert io.read_partitions(tmp_path, "events")["timestamp"].to_pylist() == [DAY + 5, DAY + 86_400 * 20,
                                                                                DAY + 86_400 * 2, feb + 3]
    # a day inside a month partition: that month's file, filtered to the day
    one_day = io.read_partition(tmp_path, "events", "2024-01-03", columns=["user_id"])
    assert one_day.column_names == ["user_id"] and one_day.num_rows == 1
    with pytest.raises(ValueError, match="granularity 'year'"):
        io.write_partitioned(tmp_path, "events", _events(ts), granularity="year")


def test_every_parquet_file_of_a_partition_is_read_and_bad_folder_names_are_errors(tmp_path):
    io.write_partitioned(tmp_path, "events", _events([DAY + 1]))
    durable.atomic_write_parquet(_events([DAY + 2]), tmp_path / "events" / "dt=2024-01-01" / "part-1.parquet")
    (tmp_path / "events" / "dt=2024-01-01" / ".part-2.parquet.tmp").write_bytes(b"half")  # a writer's temp file
    assert [p.name for p in io.partition_files(tmp_path, "events", "2024-01-01")] == ["part-0.parquet",
                                                                                       "part-1.parquet"]
    assert io.read_partitions(tmp_path, "events")["timestamp"].to_pylist() == [DAY + 1, DAY + 2]
    (tmp_path / "events" / "dt=garbage").mkdir()
    with pytest.raises(io.DataValidationError, match=r"events/dt=garbage: partition 'dt=garbage' is not of the "
                                                     r"form dt=YYYY-MM-DD or dt=YYYY-MM"):
        io.partitions(tmp_path, "events")
    (tmp_path / "events" / "dt=garbage").rmdir()
    (tmp_path / "events" / "dt=2024-02").mkdir()
    with pytest.raises(io.DataValidationError, match="mixes day and month partitions"):
        io.partitions(tmp_path, "events")


def test_writes_fsync_the_file_and_its_folder(tmp_path, monkeypatch):
    """The bytes and the rename are made durable: fsync of the new file, then of its folder."""
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(durable.os, "fsync", spy)
    io.write_partitioned(tmp_path, "events", _events([DAY + 1]))
    part = io.partition_path(tmp_path, "events", "2024-01-01")
    assert any(".part-0.parquet." in s for s in synced)  # the temp file, before its rename
    assert str(part.parent) in synced
    synced.clear()
    src = tmp_path / "new"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("x")
    durable.replace_dir(src, tmp_path / "events")
    assert str(tmp_path) in synced and any(s.endswith("/sub/f") for s in synced)
    assert (tmp_path / "events" / "sub" / "f").read_text() == "x" and not src.exists()


def test_reading_many_partitions_lists_the_table_folder_once(tmp_path, monkeypatch):
    """A read of every day lists (and checks) the partition folders once, not once per day: the per-key listing
    was quadratic (640 listings of 213 folders for one read of ML-100k's events, 95% of Feast's write_sources)."""
    from components.data.validate import read_checked

    days = 40
    io.write_partitioned(tmp_path, "events", _events([DAY + d * 86_400 + 7 for d in range(days)]))
    listed = []
    real = io.check_partition_names
    monkeypatch.setattr(io, "check_partition_names", lambda *a: listed.append(a) or real(*a))
    assert io.read_partitions(tmp_path, "events").num_rows == days
    assert len(listed) == 1
    listed.clear()
    assert io.read_partitions(tmp_path, "events", days=[str(io.day_of(DAY + d * 86_400)) for d in (3, 1)]).num_rows == 2
    assert len(listed) == 1
    listed.clear()
    assert read_checked(tmp_path, "events").num_rows == days  # validate's file listing: once to check, once to list
    assert len(listed) == 2
