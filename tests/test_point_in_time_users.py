"""Learned user tables joined per row: given the daily ``embed_users`` store (one table per date), each
impression reads the newest table dated strictly before its own UTC day (never its own day's or a later one),
a user absent there gets the zero-vector fallback and is counted; one table file stays one table for every row;
what a row of day D+1 reads is what the daily Feast source of day D serves."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import torch

from components import config
from components.cli import main as cli_main
from components.data import io
from components.data.baseline import content_embeddings
from components.data.point_in_time import DAY, DailyUserTables, user_history
from components.data.schemas import DataValidationError
from components.data.tables import EmbeddingTable, VersionedStore, write_table
from components.serving import feast_store
from components.training import ranker as ranker_training


def _cfg(**overrides):
    return config.load("ranker_dcnv2_baseline_tiny", overrides, model="ranker")


def _day(version: str) -> int:
    return int(dt.datetime.fromisoformat(version).replace(tzinfo=dt.UTC).timestamp())


def _marked(version: str, users: list[int], dim: int = 4, model: str = "pinnerformer-test") -> EmbeddingTable:
    """A table whose rows say which version and user they are: [day ordinal, user id, 0, ...]."""
    emb = np.zeros((len(users), dim), np.float32)
    emb[:, 0] = dt.date.fromisoformat(version).toordinal()
    emb[:, 1] = users
    return EmbeddingTable(np.array(users, np.int64), emb, model, dt.datetime.fromisoformat(version).replace(tzinfo=dt.UTC),
                          "user_id")


def test_a_row_of_day_d_reads_the_newest_table_before_d(tmp_path):
    store = VersionedStore(tmp_path / "users")
    store.publish(_marked("2024-01-10", [1, 2, 3, 4]), "2024-01-10")
    store.publish(_marked("2024-01-11", [1, 2, 3]), "2024-01-11")  # user 4 absent that day
    store.publish(_marked("2024-01-13", [1, 2, 3, 4]), "2024-01-13")  # no table of the 12th
    tables = DailyUserTables.open(store.root)
    rows = [  # (timestamp, user, the version it must read or None)
        (_day("2024-01-10") + 43_200, 1, None),  # the first table's own day: nothing before it
        (_day("2024-01-11"), 1, "2024-01-10"),  # midnight of the 11th: the 10th, never the 11th
        (_day("2024-01-11") + DAY - 1, 2, "2024-01-10"),  # last second of the 11th
        (_day("2024-01-12"), 3, "2024-01-11"),
        (_day("2024-01-12") + 5, 4, None),  # user 4 is absent from the 11th's table
        (_day("2024-01-13") + 36_000, 2, "2024-01-11"),  # the 12th has no table: the newest before the 13th
        (_day("2024-01-14"), 4, "2024-01-13"),
        (_day("2024-02-01"), 3, "2024-01-13"),  # later days keep reading the latest published table
    ]
    ts = np.array([r[0] for r in rows], np.int64)
    users = np.array([r[1] for r in rows], np.int64)
    got, found = tables.at(users, ts)
    for (t, u, want), vec, ok in zip(rows, got, found):
        if want is None:
            assert not ok and not vec.any(), (t, u)
        else:
            assert ok and vec[0] == dt.date.fromisoformat(want).toordinal() and vec[1] == u, (t, u, want)
    assert list(tables.table_index(ts)) == [-1, 0, 0, 1, 1, 1, 2, 2]
    assert tables.model_version == "pinnerformer-test" and tables.dim == 4
    # a rollback: CURRENT back at the 11th, so the 13th (rolled back) is never read
    store.set_current("2024-01-11")
    rolled = DailyUserTables.open(store.root)
    assert rolled.versions == ["2024-01-10", "2024-01-11"]
    vec, ok = rolled.at(np.array([1]), np.array([_day("2024-01-14")]))
    assert ok[0] and vec[0, 0] == dt.date(2024, 1, 11).toordinal()


def test_stores_the_per_row_join_cannot_use_are_refused(tmp_path):
    named = VersionedStore(tmp_path / "named")
    named.publish(_marked("2024-01-10", [1]), "v1")
    with pytest.raises(DataValidationError, match=r"not dates.*pass its file"):
        DailyUserTables.open(named.root)
    mixed = VersionedStore(tmp_path / "mixed")
    mixed.publish(_marked("2024-01-10", [1], model="pinnerformer-old"), "2024-01-10")
    mixed.publish(_marked("2024-01-11", [1], model="pinnerformer-new"), "2024-01-11")
    with pytest.raises(DataValidationError, match="different models"):
        DailyUserTables.open(mixed.root)
    wide = VersionedStore(tmp_path / "wide")
    wide.publish(_marked("2024-01-10", [1], dim=4), "2024-01-10")
    wide.publish(_marked("2024-01-11", [1], dim=8), "2024-01-11")
    with pytest.raises(DataValidationError, match="4 dims.*8 dims"):
        DailyUserTables.open(wide.root)


def test_cli_names_a_store_it_cannot_join(tiny_data, tmp_path, capsys):
    named = VersionedStore(tmp_path / "named")
    named.publish(_marked("2024-01-10", [1]), "latest")
    rc = cli_main(["train", "ranker", "--experiment", "ranker_tiny", "--data", str(tiny_data), "--out",
                   str(tmp_path / "model"), "--user-embeddings", str(named.root), "--set", "max_steps=1"])
    assert rc == 2
    assert "versions ['latest'] are not dates" in capsys.readouterr().err


@pytest.fixture(scope="module")
def daily_store(tiny_data, tmp_path_factory):
    """embed_users' layout over tiny_data: version D = the content baseline from every action up to the end of D
    (what a daily job run after D sees), published for every other day of the data; each version leaves out
    the users with ``user_id % 4 == ordinal % 4`` (absent that day). Returns (store root, {version: table})."""
    root = tmp_path_factory.mktemp("daily") / "users"
    store = VersionedStore(root)
    days = io.partitions(tiny_data, "impressions")
    tables = {}
    for version in days[2:-1:2]:
        _, users = content_embeddings(tiny_data, until=io.day_bounds(version)[1])
        keep = users.ids % 4 != dt.date.fromisoformat(version).toordinal() % 4
        table = EmbeddingTable(users.ids[keep], users.embeddings[keep], users.model_version, users.created_at, "user_id")
        store.publish(table, version, keep=0)
        tables[version] = table
    return root, tables


def _naive(tables: dict[str, EmbeddingTable], users: np.ndarray, ts: np.ndarray, dim: int):
    """Row by row: the newest version whose date is before the row's date (string compare), then a dict lookup."""
    out, found, before_first = np.zeros((len(users), dim), np.float32), np.zeros(len(users), bool), 0
    rows = {v: dict(zip(t.ids.tolist(), t.embeddings)) for v, t in tables.items()}
    for i, (u, t) in enumerate(zip(users.tolist(), ts.tolist())):
        day = dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d")
        earlier = [v for v in tables if v < day]
        if not earlier:
            before_first += 1
            continue
        vec = rows[max(earlier)].get(u)
        if vec is not None:
            out[i], found[i] = vec, True
    return out, found, before_first


def test_prepare_data_joins_the_store_per_row_and_counts_missing_users(tiny_data, daily_store):
    root, tables = daily_store
    train, evaluation, extra = ranker_training.prepare_data(_cfg(), tiny_data, root)
    assert extra["user_tables"]["versions"] == sorted(tables)
    assert extra["user_embeddings_path"] == str(root.resolve()) and extra["user_embeddings"] == "content-v1"
    for part, data in (("train", train), ("eval", evaluation)):
        want, found, before_first = _naive(tables, _row_users(tiny_data, data), data.timestamp, data.user.shape[1])
        np.testing.assert_array_equal(data.user, want)
        counts = extra["missing"][part]
        assert counts["missing_user_embeddings"] == int((~found).sum()) > 0
        assert counts["rows_before_first_user_table"] == before_first
        assert counts["missing_user_embeddings"] > before_first  # absent users on later days counted too
    assert extra["missing"]["train"]["rows_before_first_user_table"] > 0
    assert extra["missing"]["eval"]["rows_before_first_user_table"] == 0


def _row_users(data_dir, data) -> np.ndarray:
    """The user of each prepared row, by its request (a request is one user's)."""
    df = io.read_table(data_dir, "impressions").select(["request_id", "user_id"]).to_pandas()
    by_request = df.drop_duplicates("request_id").set_index("request_id")["user_id"]
    assert len(by_request) == df["request_id"].nunique() == len(df.drop_duplicates())
    return by_request.loc[data.request_id].to_numpy()


def test_the_join_sees_no_action_of_the_rows_own_day(tiny_data, tmp_path):
    """With a table every day, each row's vector is the content history as of the start of its own day: none of
    that day's actions (its own among them) reach it."""
    store = VersionedStore(tmp_path / "users")
    days = io.partitions(tiny_data, "impressions")
    for version in days[:-1]:
        store.publish(content_embeddings(tiny_data, until=io.day_bounds(version)[1])[1], version, keep=0)
    train, _, _ = ranker_training.prepare_data(_cfg(), tiny_data, store.root)
    users = _row_users(tiny_data, train)
    later = train.timestamp >= io.day_bounds(days[1])[0]  # rows with a table the day before
    want, _ = user_history(tiny_data).at(users[later], train.timestamp[later] // DAY * DAY)
    np.testing.assert_allclose(train.user[later], want, atol=1e-5)
    own_day, _ = user_history(tiny_data).at(users[later], train.timestamp[later])
    assert np.abs(own_day - want).max() > 0.01  # the same day's earlier actions would have changed them


def test_a_table_file_is_still_one_table_for_every_row(tiny_data, daily_store):
    root, tables = daily_store
    current = VersionedStore(root).current()
    train, _, extra = ranker_training.prepare_data(_cfg(), tiny_data, VersionedStore(root).path(current))
    want, found = tables[current].lookup(_row_users(tiny_data, train))
    np.testing.assert_array_equal(train.user, want)
    assert extra["missing"]["train"] == {"missing_user_embeddings": int((~found).sum()), "missing_pin_embeddings": 0}
    assert "user_tables" not in extra


def test_a_row_of_the_next_day_reads_what_feast_serves(tiny_data, daily_store, tmp_path):
    """The daily run of day D publishes table D and materialises it (write_sources(date=D), the store's CURRENT):
    serving reads it on D+1, and so does every training row of D+1."""
    root, tables = daily_store
    current = VersionedStore(root).current()
    repo = feast_store.init_repo(tmp_path / "repo")
    write_table(content_embeddings(tiny_data)[0], tmp_path / "pins.parquet")
    feast_store.write_sources(repo, tiny_data, current, root, tmp_path / "pins.parquet")
    src = pd.read_parquet(repo / "sources" / "user_embedding.parquet").set_index("user_id")
    _, evaluation, _ = ranker_training.prepare_data(_cfg(), tiny_data, root)
    start = io.day_bounds(current)[1]
    nxt = (evaluation.timestamp >= start) & (evaluation.timestamp < start + DAY)
    users = _row_users(tiny_data, evaluation)[nxt]
    known = np.isin(users, src.index)
    assert nxt.sum() > 0 and known.sum() > 0 and (~known).sum() > 0
    served = np.stack(src.loc[users[known], "embedding"].to_numpy()).astype(np.float32)
    np.testing.assert_array_equal(evaluation.user[nxt][known], served)
    assert not evaluation.user[nxt][~known].any()  # absent in Feast (serving: unknown_user), zero in training


def test_tiny_end_to_end_trains_on_the_daily_store(tiny_data, daily_store, tmp_path):
    from components.models.ranker import load_model
    from components.serving.export import real_inputs

    root, tables = daily_store
    metrics = ranker_training.train(_cfg(max_steps=4), tiny_data, tmp_path / "model", user_embeddings=root)
    assert metrics["steps"] == 4 and np.isfinite(metrics["final_loss"]) and 0 <= metrics["auc_save"] <= 1
    model, _, extra = load_model(tmp_path / "model")
    assert extra["user_tables"]["versions"] == sorted(tables) and extra["user_embeddings"] == "content-v1"
    x = real_inputs(extra, tiny_data, 16)  # the export's parity batch is built the same way
    with torch.no_grad():
        out = model(*(torch.from_numpy(x[n]) for n in x))
    assert out.shape[0] == 16 and torch.isfinite(out).all()


@pytest.mark.parametrize("source", ["content history", "table file", "daily store"])
def test_embeddings_are_gathered_per_batch_exactly_as_joined_eagerly(tiny_data, daily_store, source):
    """The prepared rows hold each row's position, not its vector (train_ranker's memory); any batch of rows gathers
    byte for byte what joining every row at once gives, and numpy sees the full arrays when asked."""
    root, _ = daily_store
    arg = {"content history": None, "table file": VersionedStore(root).path(), "daily store": root}[source]
    train, evaluation, _ = ranker_training.prepare_data(_cfg(), tiny_data, arg)
    users, pins = ranker_training.embedding_tables(tiny_data, arg)
    assert isinstance(train.user, ranker_training.EmbeddingRows) and isinstance(train.pin, ranker_training.EmbeddingRows)
    ids = _row_users(tiny_data, train)
    every_user = users.lookup(ids)[0] if source == "table file" else users.at(ids, train.timestamp)[0]
    rows = np.random.default_rng(0).permutation(len(train))[:300]
    batch = train.inputs(rows)
    assert np.array_equal(batch[3].numpy(), every_user[rows]) and batch[3].dtype == torch.float32
    assert np.array_equal(batch[4].numpy(), np.asarray(train.pin)[rows])
    sub = train.subset(rows[:50])
    assert isinstance(sub.user, ranker_training.EmbeddingRows) and np.array_equal(np.asarray(sub.user), every_user[rows[:50]])
    assert np.array_equal(train.user * train.pin, every_user * np.asarray(train.pin))  # what LR/LightGBM read
    assert train.user.shape == every_user.shape and np.array_equal(np.asarray(evaluation.user)[:5], evaluation.user[:5])
