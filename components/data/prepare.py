"""``homefeed data prepare``: build a data directory from ML-100k or the synthetic generator."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from components import config as config_mod
from components.config import DataConfig
from components.data import durable, io
from components.data.schemas import TABLES, TableSpec
from components.data.validate import ValidationReport, validate_dir


def to_arrow(spec: TableSpec, df: pd.DataFrame) -> pa.Table:
    """A pandas frame -> an Arrow table with the spec's exact types (prefixed columns included)."""
    fields = []
    for col in df.columns:
        if col in spec.columns:
            t = spec.columns[col]
        else:
            t = next((pt for p, pt in spec.prefixed.items() if col.startswith(p)), None)
        if t is None:
            t = pa.array(df[col].iloc[:1]).type if len(df) else pa.string()
        fields.append(pa.field(col, t))
    arrays = []
    for f in fields:
        values = df[f.name]
        if pa.types.is_list(f.type) and len(values) == 0:
            arrays.append(pa.array([], type=f.type))
        elif pa.types.is_list(f.type):
            flat = np.stack(values.to_numpy()).astype(np.float32)
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1]).cast(f.type))
        else:
            arrays.append(pa.array(values.to_numpy(), type=f.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def write_dataset(out: str | Path, tables: dict[str, object], progress: bool | None = None) -> Path:
    """Write every table of ``tables`` under ``out`` (atomically per file) and ``meta.json`` last.

    A partitioned table is rewritten one day file at a time (each a temp file + rename); days that the
    new data no longer has are removed only after every new day is in place, so an interrupted write
    leaves each partition whole (old or new). ``progress``: a tqdm bar (None = only on a terminal).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(TABLES) + 1, desc=f"writing {out.name}", unit="table",
              disable=None if progress is None else not progress, leave=False) as bar:
        for name, spec in TABLES.items():
            bar.set_postfix_str(name)
            table = to_arrow(spec, tables[name])
            if spec.partitioned:
                old_days = set(io.partitions(out, name))
                written = io.write_partitioned(out, name, table)
                new_days = {p.parent.name[3:] for p in written}
                for day in sorted(old_days - new_days):
                    shutil.rmtree(io.partition_path(out, name, day).parent)
            else:
                io.write_table(out, name, table)
            bar.update(1)
        _write_ground_truth(out, tables.get("ground_truth") or {})
        io.write_meta(out, tables["meta"])
        bar.update(1)
    return out


def _write_ground_truth(out: Path, gt: dict[str, pd.DataFrame]) -> None:
    for name, df in gt.items():
        durable.atomic_write_parquet(pa.Table.from_pandas(df, preserve_index=False), out / "ground_truth" / f"{name}.parquet")
    # ground truth of an earlier dataset in the same folder would be taken for this one's
    for stale in sorted((out / "ground_truth").glob("*.parquet")):
        if stale.stem not in gt:
            stale.unlink()


def _by_day(table: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """(day, rows) of ``table`` per UTC day of ``timestamp``, days ascending, each day's rows in table order."""
    index = table.column("timestamp").to_numpy() // 86_400
    order = np.argsort(index, kind="stable")
    uniq, starts = np.unique(index[order], return_index=True)
    sorted_table = table.take(pa.array(order))
    for day, s, e in zip(io.day_of(uniq * 86_400), starts, [*starts[1:], len(order)]):
        yield str(day), sorted_table.slice(int(s), int(e - s))


def write_pieces(out: str | Path, pieces: Iterable[tuple[str, object]], spill_dir: str | Path,
                 progress: bool | None = None) -> Path:
    """Write a dataset given as (table, piece) pairs in row order (:func:`synthetic.pieces`) into the new folder
    ``out``, holding one piece at a time: a whole table's pieces go into one Parquet file (a row group per
    piece), a partitioned table's pieces are split by day into Arrow streams under ``spill_dir`` and each day is
    then written as one file (the file :func:`write_dataset` writes for the same rows). ``meta.json`` last.

    ``out`` is a folder nobody reads yet (prepare's temporary build), so a whole table is written in place, piece
    by piece: :func:`durable.replace_dir` fsyncs and publishes the whole folder.
    """
    out, spill_dir = Path(out), Path(spill_dir)
    out.mkdir(parents=True, exist_ok=True)
    whole: dict[str, pq.ParquetWriter] = {}
    days: dict[tuple[str, str], pa.ipc.RecordBatchStreamWriter] = {}
    sinks: list[pa.NativeFile] = []
    meta: dict | None = None
    try:
        for name, piece in tqdm(pieces, desc=f"writing {out.name}", unit="piece", leave=False,
                                disable=None if progress is None else not progress):
            if name == "meta":
                meta = piece
                continue
            if name == "ground_truth":
                _write_ground_truth(out, piece)
                continue
            spec = TABLES[name]
            table = to_arrow(spec, piece)
            if not spec.partitioned:
                if name not in whole:
                    whole[name] = pq.ParquetWriter(out / spec.filename, table.schema, write_page_checksum=True)
                whole[name].write_table(table)
                continue
            for day, rows in _by_day(table):
                if (name, day) not in days:
                    path = spill_dir / name / f"{day}.arrows"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    sinks.append(pa.OSFile(str(path), "wb"))
                    days[name, day] = pa.ipc.new_stream(sinks[-1], rows.schema)
                days[name, day].write_table(rows)
    finally:
        for writer in [*whole.values(), *days.values(), *sinks]:
            writer.close()
    for name, day in sorted(days):
        path = spill_dir / name / f"{day}.arrows"
        with pa.OSFile(str(path), "rb") as f:
            rows = pa.ipc.open_stream(f).read_all().combine_chunks()
        durable.atomic_write_parquet(rows, io.partition_path(out, name, day))
        path.unlink()
    if meta is None:
        raise ValueError("write_pieces: the pieces carry no meta (expected a ('meta', dict) pair)")
    io.write_meta(out, meta)
    return out


BUILDING = ".{name}.building-{pid}-"  # the temporary sibling a prepare builds in


def _clear_stale_builds(out: Path) -> None:
    """Remove temporary siblings of ``out`` left by a killed prepare (their process is gone)."""
    for stale in out.parent.glob(f".{out.name}.building-*"):
        try:
            pid = int(stale.name[len(f".{out.name}.building-"):].split("-")[0])
            os.kill(pid, 0)  # still running: another prepare into the same folder
        except (ValueError, ProcessLookupError):
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:
            pass  # another user's live process


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise config_mod.ConfigError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "meta.json").exists():
        raise config_mod.ConfigError(f"--out {out}: exists, is not empty and is not a homefeed data directory "
                                     "(no meta.json); prepare replaces the whole folder, so give a new or empty "
                                     "folder, or a data directory to rebuild")


def prepare(cfg: DataConfig, out: str | Path, progress: bool | None = None) -> ValidationReport:
    """Generate or map the dataset of ``cfg`` into ``out``, validate it and save the resolved config
    (``out/config.yaml``). Returns the validation report (its summary is what the CLI prints).

    The directory is built in a temporary sibling of ``out``, validated there, and only then swapped
    in whole (:func:`durable.replace_dir`): a run that fails validation (``--set feature_noise=.nan``),
    raises or is killed leaves the previous ``out`` exactly as it was.
    ``progress``: tqdm bars for the stages (None = only when stderr is a terminal).
    """
    if cfg.dataset not in ("ml-100k", "synthetic"):
        raise config_mod.ConfigError(f"key 'dataset' expects one of ml-100k, synthetic; got {cfg.dataset!r}")
    out = Path(out).absolute()
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale_builds(out)
    work = Path(tempfile.mkdtemp(prefix=BUILDING.format(name=out.name, pid=os.getpid()), dir=out.parent))
    os.chmod(work, durable.DIR_MODE)  # mkdtemp's folder is owner-only; published data is readable
    disable = None if progress is None else not progress
    try:
        with tqdm(total=3, desc=f"prepare {cfg.dataset}", unit="stage", disable=disable) as bar:
            bar.set_postfix_str("map and write ML-100k" if cfg.dataset == "ml-100k" else "generate and write")
            if cfg.dataset == "ml-100k":
                from components.data import movielens  # only this dataset needs recbole's files
                write_dataset(work, movielens.load(eval_days=cfg.eval_days, seed=cfg.seed), progress=progress)
            else:
                from components.data import synthetic  # only this dataset needs the generator
                spill = Path(tempfile.mkdtemp(prefix=BUILDING.format(name=out.name, pid=os.getpid()), dir=out.parent))
                try:  # generated and written piece by piece: bounded memory at any catalogue size
                    write_pieces(work, synthetic.pieces(cfg), spill, progress=progress)
                finally:
                    shutil.rmtree(spill, ignore_errors=True)
            config_mod.save(cfg, work / "config.yaml")
            bar.update(1)
            bar.set_postfix_str("validate")
            report = validate_dir(work)  # raises before anything is published
            report.data_dir = str(out)
            bar.update(1)
            bar.set_postfix_str("publish")
            durable.replace_dir(work, out)
            bar.update(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def format_summary(report: ValidationReport) -> str:
    s = report.summary
    lines = [f"data directory: {report.data_dir}", "", "| table | rows |", "|---|---:|"]
    lines += [f"| {k} | {v:,} |" for k, v in report.rows.items()]
    lines += ["", "| | |", "|---|---|",
              f"| users | {s.get('users', 0):,} |", f"| pins | {s.get('pins', 0):,} |",
              f"| boards | {s.get('boards', 0):,} |",
              f"| date range | {s.get('first_day')} .. {s.get('last_day')} |",
              f"| eval split | from {s.get('split_day')} ({s.get('eval_events', 0):,} events) |",
              "| action mix | " + ", ".join(f"{k} {v:.1%}" for k, v in s.get("action_mix", {}).items()) + " |",
              "| surface mix | " + ", ".join(f"{k} {v:.1%}" for k, v in s.get("surface_mix", {}).items()) + " |"]
    if report.dropped:
        lines += ["", "dropped (out of vocabulary): "
                  + ", ".join(f"{k}: {v} rows" for k, v in sorted(report.dropped.items()))]
    return "\n".join(lines)
