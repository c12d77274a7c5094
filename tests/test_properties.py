"""Property-based tests (hypothesis, derandomized, few examples): a random corruption of a valid data
directory, or of a valid ranker request, is either rejected with a message that names what is wrong,
or leaves the outputs unchanged.

- Data: 1-3 random corruptions (flipped bytes, truncated files, bad cell values, duplicated rows,
  dropped columns, renamed partition folders, stray files) of a small prepared directory. Either
  ``validate_dir`` reports problems, each naming a table file or folder, and the loaders refuse the
  directory with ``DataValidationError``; or validation passes and every loader returns exactly what
  it returned before the corruption (e.g. a flipped byte in unused footer metadata).
- Requests: random corruptions of a valid raw request run through ``ranker_inputs.check_request`` and
  the preprocess transforms (the very code ``ranker_preprocess`` runs in Triton): either a ValueError
  naming the input, or outputs equal to the request's with unknown sparse ids mapped to 0, finite and
  in range. tests/test_triton.py checks the same property against a running tritonserver.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components import config
from components.data.prepare import prepare
from components.data.schemas import TABLES
from components.data.validate import DataValidationError, load_events, load_table, pin_features, validate_dir
from components.models import ranker_inputs

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prop") / "data"
    prepare(config.load("synthetic_tiny", {"users": 25, "pins": 50, "boards": 6, "days": 6, "eval_days": 2}), out,
            progress=False)
    return out


def _outputs(d: Path) -> dict[str, object]:
    """What the models read from a data directory, through the loaders."""
    ids, feats = pin_features(d)
    out: dict[str, object] = {"events": load_events(d), "pin_ids": ids, "features": feats}
    for name in ("boards", "pin_boards", "users", "impressions"):
        out[name] = load_table(d, name)
    return out


def _same(a: dict[str, object], b: dict[str, object]) -> bool:
    for k, v in a.items():
        w = b[k]
        if isinstance(v, np.ndarray):
            if not np.array_equal(v, w):
                return False
        elif not v.equals(w):
            return False
    return True


def _parquet_files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*.parquet") if "ground_truth" not in p.parts)


corruption = st.tuples(st.sampled_from(["flip", "truncate", "value", "dup_row", "drop_col", "rename_partition",
                                        "stray"]), st.integers(0, 10**9), st.integers(0, 10**9))


def _corrupt(d: Path, kind: str, a: int, b: int) -> None:
    files = _parquet_files(d)
    path = files[a % len(files)]
    if path.stat().st_size == 0:
        return  # emptied by an earlier truncation
    if kind == "flip":
        data = bytearray(path.read_bytes())
        data[b % len(data)] ^= 1 << (a % 8)
        path.write_bytes(bytes(data))
        return
    if kind == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: b % len(data)])
        return
    if kind == "rename_partition":
        folders = [p for p in d.rglob("dt=*") if p.is_dir()]
        folder = folders[a % len(folders)]
        target = folder.with_name(["dt=garbage", "dt=2024-13-01", "dt=", "dt=1999-02-30", "x"][b % 5])
        if not target.exists():
            folder.rename(target)
        return
    if kind == "stray":
        folders = [p for p in d.rglob("dt=*") if p.is_dir()]
        pq.write_table(pa.table({"user_id": pa.array(["u"] * 3)}), folders[a % len(folders)] / "part-7.parquet")
        return
    try:
        t = pq.read_table(path)
    except Exception:  # noqa: BLE001 - already unreadable from an earlier corruption
        return
    if t.num_rows == 0 or t.num_columns == 0:
        return
    col = t.column_names[b % t.num_columns]
    if kind == "drop_col":  # a column the schema or meta.json requires (optional s_* columns may go)
        spec = next(s for s in TABLES.values() if s.filename in path.relative_to(d).parts[0])
        meta = json.loads((d / "meta.json").read_text())
        required = [*spec.columns, *spec.required_prefixed,
                    *(meta["dense_features"] + list(meta["sparse_features"]) if spec.name == "impressions" else [])]
        present = [c for c in required if c in t.column_names]
        if present:
            pq.write_table(t.drop_columns([present[b % len(present)]]), path)
    elif kind == "dup_row":
        pq.write_table(pa.concat_tables([t, t.slice(b % t.num_rows, 1)]), path)
    else:  # value: a value the schema forbids in one cell (an in-domain change is not a corruption)
        typ = t.schema.field(col).type
        bad_values = _forbidden(col, typ)
        if not bad_values:
            return
        values = t[col].to_pylist()
        values[a % t.num_rows] = bad_values[b % len(bad_values)]
        if pa.types.is_list(typ) and values[a % t.num_rows] is not None:
            values[a % t.num_rows] = [values[a % t.num_rows]] * len(t[col][0].as_py())
        pq.write_table(t.set_column(t.schema.get_field_index(col), col, pa.array(values, typ)), path)


def _forbidden(col: str, typ: pa.DataType) -> list[object]:
    """Values the schema rejects in ``col`` (null everywhere it is typed; NaN/inf in floats; negative and
    absurd durations, sparse ids and labels; out-of-range timestamps)."""
    out: list[object] = [None]
    if pa.types.is_floating(typ) or (pa.types.is_list(typ) and pa.types.is_floating(typ.value_type)):
        out += [float("nan"), float("inf")]
    if col == "duration_s":
        out += [-1.0, 3e38]
    if col.startswith("s_") or col.startswith("label_"):
        out.append(-3)
    if col.startswith("label_"):
        out.append(2)
    if col == "timestamp":
        out += [12, 2**62, -(2**40)]
    return out


NAMES = tuple(TABLES[n].filename for n in TABLES) + ("meta.json",)


@SETTINGS
@given(corruptions=st.lists(corruption, min_size=1, max_size=3))
def test_corrupted_data_is_rejected_with_a_message_or_reads_the_same(small_data, corruptions):
    clean = _outputs(small_data)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "d"
        shutil.copytree(small_data, d)
        for c in corruptions:
            _corrupt(d, *c)
        report = validate_dir(d, raise_on_error=False)  # never raises, whatever the files hold
        if report.errors:
            for e in report.errors:
                assert e.startswith(NAMES) or e.startswith(str(d)), e
            with pytest.raises((DataValidationError, FileNotFoundError)):
                _outputs(d)
        else:
            assert _same(clean, _outputs(d)), f"{corruptions} changed the data but passed validation"


# ---------------------------------------------------------------------------------------------
# Ranker requests
# ---------------------------------------------------------------------------------------------

SHAPES = ranker_inputs.RankerShapes(n_dense=3, n_sparse=2, d_user=4, d_pin=4, n_tasks=2)
MEAN, STD, CARDS, N_SURFACES = np.array([1.0, 0.0, 5.0]), np.array([2.0, 1.0, 0.5]), np.array([10, 3]), 3


def valid_request(rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
    return {"dense": rng.normal(MEAN, STD, (batch, 3)).astype(np.float32),
            "sparse": rng.integers(0, CARDS, (batch, 2)).astype(np.int64),
            "surface": rng.integers(0, N_SURFACES, (batch, 1)).astype(np.int64),
            "user_embedding": rng.normal(size=(batch, 4)).astype(np.float32),
            "pin_embedding": rng.normal(size=(batch, 4)).astype(np.float32)}


def corrupt_request(x: dict[str, np.ndarray], name: str, kind: str, row: int, col: int, value: float
                    ) -> dict[str, np.ndarray]:
    x = {k: v.copy() for k, v in x.items()}
    a = x[name]
    r, c = row % a.shape[0], col % a.shape[1]
    if kind == "shape":
        x[name] = a[:, :-1] if a.shape[1] > 1 and value > 0 else np.concatenate([a, a[:1]])
    elif kind == "value":
        if a.dtype == np.int64:
            a[r, c] = int(np.clip(value, -(2**62), 2**62)) if np.isfinite(value) else 2**62  # NaN: no int64; an id far out of range
        else:
            a[r, c] = np.float32(value)
    return x


def transform(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What ranker_preprocess answers for an accepted request."""
    return {"x_dense": ranker_inputs.normalize_dense(x["dense"], MEAN, STD),
            "x_sparse": ranker_inputs.clamp_sparse(x["sparse"], CARDS),
            "x_surface": ranker_inputs.clamp_surface(x["surface"], N_SURFACES),
            "x_user_embedding": x["user_embedding"], "x_pin_embedding": x["pin_embedding"]}


request_corruption = st.tuples(
    st.sampled_from(list(ranker_inputs.RAW_INPUTS)), st.sampled_from(["value", "value", "shape"]), st.integers(0, 99),
    st.integers(0, 99),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e30, -1e16, 1e12, 2.0**62, -7.0, 99.0, 1.0, 0.0]))


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 9), corruptions=st.lists(request_corruption, max_size=3))
def test_corrupted_requests_are_rejected_naming_the_input_or_scored_as_documented(seed, batch, corruptions):
    x = valid_request(np.random.default_rng(seed), batch)
    for c in corruptions:
        x = corrupt_request(x, *c)
    try:
        ranker_inputs.check_request(x, SHAPES, N_SURFACES)
    except ValueError as e:
        assert "input '" in str(e) or "empty batch" in str(e), e
        return
    out = transform(x)
    # accepted: unknown sparse ids score as the unknown id 0, dense values are clipped, everything finite
    mapped = {**x, "sparse": np.where((x["sparse"] >= 0) & (x["sparse"] < CARDS), x["sparse"], 0)}
    for k, v in transform(mapped).items():
        np.testing.assert_array_equal(out[k], v)
    assert all(np.isfinite(v).all() for v in out.values())
    assert np.abs(out["x_dense"]).max() <= ranker_inputs.DENSE_CLIP
    assert ((out["x_sparse"] >= 0) & (out["x_sparse"] < CARDS)).all()
    assert ((out["x_surface"] >= 0) & (out["x_surface"] < N_SURFACES)).all()
    assert (ranker_inputs.unknown_sparse_counts(x["sparse"], CARDS) == (x["sparse"] != mapped["sparse"]).sum(0)).all()
