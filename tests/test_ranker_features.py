"""The ranker's inputs carry no label: point-in-time user features (each row's user vector only from the
user's actions strictly before the row), and PEPNet starting as the model without gates."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from components import config
from components.data import io
from components.data.baseline import content_embeddings
from components.data.point_in_time import user_history
from components.evaluation.ranker_baselines import leak_check
from components.models.ranker import Ranker
from components.training import ranker as ranker_training


def _tiny(**overrides):
    return config.load("ranker_dcnv2_baseline_tiny", overrides, model="ranker")


def test_history_at_one_time_is_the_content_baseline_table(tiny_data):
    """At one time t for every user, the history equals content_embeddings(until=t): the same rule."""
    history = user_history(tiny_data)
    split = int(io.read_meta(tiny_data)["split_timestamp"])
    for t in (split - 5 * 86_400, split):
        _, table = content_embeddings(tiny_data, until=t)
        got, found = history.at(table.ids, np.full(len(table.ids), t))
        want, _ = table.lookup(table.ids)
        assert np.allclose(got, want, atol=1e-5)
        assert found.sum() == int((np.linalg.norm(want, axis=1) > 0).sum()) > 0
    assert history.model_version == table.model_version  # serving's content-v1 table passes the version check


def _add_events(data_dir: Path, rows: list[dict]) -> None:
    """Append events to the day partitions they fall in (schema and dtypes of the existing part)."""
    for r in rows:
        day = pd.Timestamp(r["timestamp"], unit="s").strftime("%Y-%m-%d")
        path = data_dir / "events" / f"dt={day}" / "part-0.parquet"
        table = pq.read_table(path)
        df = pd.concat([table.to_pandas(), pd.DataFrame([r])], ignore_index=True)
        pq.write_table(pa.Table.from_pandas(df[table.column_names], schema=table.schema, preserve_index=False), path)


def _impressions(data_dir: Path) -> pd.DataFrame:
    """Every impression in prepare_data's order (load_impressions with no feature columns required)."""
    spec = ranker_training.FeatureSpec(dense=[], sparse=[], cardinalities=[], user_dim=0, pin_dim=0,
                                       user_features=[], pin_features=[])
    return ranker_training.load_impressions(data_dir, spec, ["save"])


def _user_rows(data_dir: Path, user: int, train_rows: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps, user vectors) of the user's training rows: as prepare_data builds them (``train_rows``),
    or straight from the point-in-time history it reads."""
    df = _impressions(data_dir)
    df = df[df["timestamp"] < int(io.read_meta(data_dir)["split_timestamp"])]
    mine = (df["user_id"] == user).to_numpy()
    ts = df["timestamp"].to_numpy()[mine]
    if train_rows:
        train, _, _ = ranker_training.prepare_data(_tiny(), data_dir)
        return ts, train.user[mine]
    return ts, user_history(data_dir).at(np.full(len(ts), user), ts)[0]


def test_no_training_row_sees_its_own_action_or_later_ones(tiny_data, tmp_path):
    """A training impression's own action (a save of its pin at its own time), with its label flipped or not,
    and any later action leave that row's user features unchanged; rows after them do see them."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    imp = _impressions(data)
    split = int(io.read_meta(data)["split_timestamp"])
    train = imp[imp["timestamp"] < split]
    counts = train.groupby("user_id")["timestamp"].nunique()
    user = int(counts.index[counts.to_numpy().argmax()])  # a user with many training requests
    times = np.sort(train.loc[train["user_id"] == user, "timestamp"].unique())
    row = train[(train["user_id"] == user) & (train["timestamp"] == times[len(times) // 2])].iloc[0]
    t, pin = int(row["timestamp"]), int(row["pin_id"])
    before_ts, before = _user_rows(data, user, train_rows=True)
    assert np.array_equal(before, _user_rows(data, user)[1])  # the training path reads the history as of each row

    own = {"user_id": user, "pin_id": pin, "action_type": "repin", "surface": row["surface"], "timestamp": t,
           "duration_s": np.float32(30.0)}
    _add_events(data, [own, {**own, "timestamp": t + 1}])  # its own save, and a save one second later
    after_ts, after = _user_rows(data, user)
    assert np.array_equal(before_ts, after_ts)
    upto = before_ts <= t
    assert upto.any() and (~upto).any()
    assert np.array_equal(before[upto], after[upto])  # the row itself and every earlier row: unchanged
    assert not np.allclose(before[~upto], after[~upto])  # later rows see the new actions

    shutil.rmtree(data)  # the same with the row's own action flipped to a hide (its label flipped)
    shutil.copytree(tiny_data, data)
    _add_events(data, [{**own, "action_type": "hide", "duration_s": np.float32(1.0)}])
    _, flipped = _user_rows(data, user)
    assert np.array_equal(before[upto], flipped[upto])


def test_leak_probe_scores_training_and_evaluation_rows(tiny_data):
    """The probe behind the README's train/eval AUC figures runs on the ranker's own arrays (on ML-100k it
    shows the gap: static table 0.79 / 0.61, point-in-time 0.72 / 0.67; synthetic labels do not come from
    events, so no gap is expected here)."""
    m = leak_check(_tiny(max_train_rows=1000), str(tiny_data))
    assert 0.0 < m["auc_train"] < 1.0 and 0.0 < m["auc_eval"] < 1.0 and m["rows_train"] == 1000


@pytest.mark.parametrize("arch", ["mlp", "masknet_dcnv2"])
def test_pepnet_at_init_equals_the_model_with_gates_at_one(arch):
    """Every Gate NU starts at exactly 1, so at initialisation EPNet returns x_0 unchanged and every PPNet
    gate is 1: the gated model starts as its own ungated towers, on every seed."""
    spec = ranker_training.FeatureSpec(dense=["d_a", "d_u"], sparse=["s_u", "s_h"], cardinalities=[5, 24],
                                       user_dim=12, pin_dim=10, user_features=["d_u", "s_u"], pin_features=[])
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(7, 2, generator=g), torch.randint(0, 5, (7, 2), generator=g),
         torch.randint(0, 3, (7, 1), generator=g), torch.randn(7, 12, generator=g), torch.randn(7, 10, generator=g))
    for seed in range(3):
        torch.manual_seed(seed)
        model = Ranker(config.load(f"ranker_{arch}_pepnet_tiny", model="ranker"), spec)
        x0 = model.embed(*x)
        assert torch.equal(model.epnet(x0, model.domain_table(x[2][:, 0])), x0)
        personal = torch.cat([x0[:, model.user_idx], x0[:, model.pin_idx]], -1)
        assert all(torch.equal(gv, torch.ones_like(gv)) for gv in model.towers.gate_values(personal, x0))
