"""``homefeed data prepare``: build a data directory from ML-100k or the synthetic generator."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from components import config as config_mod
from components.config import DataConfig
from components.data import io
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
        if pa.types.is_list(f.type):
            flat = np.stack(values.to_numpy()).astype(np.float32) if len(values) else np.zeros((0, 0), np.float32)
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1]).cast(f.type))
        else:
            arrays.append(pa.array(values.to_numpy(), type=f.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def write_dataset(out: str | Path, tables: dict[str, object]) -> Path:
    """Write every table of ``tables`` under ``out`` (atomically per file) and ``meta.json`` last."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, spec in TABLES.items():
        table = to_arrow(spec, tables[name])
        if spec.partitioned:
            old = out / spec.filename
            if old.exists():  # a re-prepare replaces the whole table; days no longer present go
                shutil.rmtree(old)
            io.write_partitioned(out, name, table)
        else:
            io.write_table(out, name, table)
    gt = tables.get("ground_truth")
    if gt:
        for name, df in gt.items():
            io.atomic_write_parquet(pa.Table.from_pandas(df, preserve_index=False), out / "ground_truth" / f"{name}.parquet")
    io.write_meta(out, tables["meta"])
    return out


def prepare(cfg: DataConfig, out: str | Path) -> ValidationReport:
    """Generate or map the dataset of ``cfg`` into ``out``, validate it and save the resolved config."""
    if cfg.dataset == "ml-100k":
        from components.data import movielens
        tables = movielens.load(eval_days=cfg.eval_days, seed=cfg.seed)
    elif cfg.dataset == "synthetic":
        from components.data import synthetic
        tables = synthetic.generate(cfg)
    else:
        raise config_mod.ConfigError(f"key 'dataset' expects one of ml-100k, synthetic; got {cfg.dataset!r}")
    write_dataset(out, tables)
    config_mod.save(cfg, Path(out) / "config.yaml")
    return validate_dir(out)


def format_summary(report: ValidationReport) -> str:
    s = report.summary
    lines = [f"data directory: {report.data_dir}", "", "| table | rows |", "|---|---:|"]
    lines += [f"| {k} | {v:,} |" for k, v in report.rows.items()]
    lines += ["", "| | |", "|---|---|",
              f"| users | {s.get('users', 0):,} |", f"| pins | {s.get('pins', 0):,} |",
              f"| boards | {s.get('boards', 0):,} |",
              f"| date range | {s.get('first_day')} .. {s.get('last_day')} |",
              "| action mix | " + ", ".join(f"{k} {v:.1%}" for k, v in s.get("action_mix", {}).items()) + " |",
              "| surface mix | " + ", ".join(f"{k} {v:.1%}" for k, v in s.get("surface_mix", {}).items()) + " |"]
    if report.dropped:
        lines += ["", "dropped (out of vocabulary): "
                  + ", ".join(f"{k}: {v} rows" for k, v in sorted(report.dropped.items()))]
    return "\n".join(lines)
