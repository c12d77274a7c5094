"""``homefeed data import``: ML-100k's raw ratings as a generic table (every model trains on the result), the
same log from CSV and Parquet, a basket-style log, splits, partitions, the negative-sampling rule, and bad
import configs rejected by the CLI with exit code 2 and a message naming the key or column."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from components import config
from components.cli import main as cli_main
from components.data import io
from components.data.import_config import from_dict, load_import_config
from components.data.importer import import_data
from components.data.movielens import find_ml100k_dir
from components.data.validate import load_events, load_table, validate_dir
from components.data.vocab import vocab_of

REPO = Path(__file__).resolve().parents[1]
ML_CONFIG = REPO / "components" / "configs" / "import" / "ml100k_ratings.yaml"


# ---------------------------------------------------------------------------------------------
# ML-100k's raw ratings file as a generic interactions table
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ml_import(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("import") / "ml"
    cfg = load_import_config(ML_CONFIG, {"partition": "month"})  # 8 month folders instead of 215 day folders
    cfg.interactions.path = str(find_ml100k_dir() / "ml-100k.inter")
    cfg.items.path = str(find_ml100k_dir() / "ml-100k.item")
    import_data(cfg, out)
    return out


def test_ml100k_ratings_import_is_valid_with_declared_vocabulary(ml_import):
    report = validate_dir(ml_import)
    assert report.rows["events"] == 100_000 and report.rows["users"] == 943 and report.rows["pins"] == 1682
    assert not report.dropped  # every action type and surface is in the declared vocabulary
    meta = io.read_meta(ml_import)
    assert meta["action_types"] == ["love", "like", "watch", "dislike"] and meta["surfaces"] == ["web"]
    assert meta["positive"] == {"actions": ["love", "like"], "min_duration_s": {}}
    assert meta["partition"] == "month"
    assert all(p.name.startswith("dt=") and len(p.name) == len("dt=1998-01")
               for p in (ml_import / "events").iterdir())
    ev = load_events(ml_import)
    raw = pd.read_csv(find_ml100k_dir() / "ml-100k.inter", sep="\t")
    assert (ev["action_type"] == "love").sum() == (raw["rating:float"] == 5).sum()
    assert (ev["action_type"] == "dislike").sum() == (raw["rating:float"] <= 2).sum()
    positive = vocab_of(ml_import).is_positive(ev["action_type"].to_numpy(), ev["duration_s"].to_numpy())
    assert positive.sum() == (raw["rating:float"] >= 4).sum()
    # split by fraction on a day boundary: about 90% of events train
    split = meta["split_timestamp"]
    assert split % 86_400 == 0 and 0.85 < (ev["timestamp"] < split).mean() < 0.95
    # user_positives boards hold only training-period positives
    pb = load_table(ml_import, "pin_boards")
    train_pos = ev[(ev["timestamp"] < split) & positive]
    assert set(pb["pin_id"]) <= set(train_pos["pin_id"])
    # content features: the genres (multi-valued) and the year; Toy Story and Aladdin share Animation/Children's
    pins = load_table(ml_import, "pins").set_index("pin_id")
    assert "Toy Story" in pins.loc[1, "title"]
    assert meta["feature_dim"] == 1 + 32 + 8


def test_every_model_trains_on_the_ml100k_import(ml_import, tmp_path):
    from components.inference.pinsage import embed_pins
    from components.training import pinnerformer, pinsage, ranker

    m = pinsage.train(config.load("pinsage_tiny", {"max_steps": 2}, model="pinsage"), ml_import, tmp_path / "ps")
    assert np.isfinite(m["final_loss"])
    table = embed_pins(tmp_path / "ps", ml_import, tmp_path / "emb")
    m = pinnerformer.train(config.load("pinnerformer_tiny", {"max_steps": 2}, model="pinnerformer"), ml_import,
                           table, tmp_path / "pf")
    assert np.isfinite(m["final_loss"]) and m["train_users"] > 500
    m = ranker.train(config.load("ranker_tiny", {"max_steps": 2}, model="ranker"), ml_import, tmp_path / "rk")
    assert np.isfinite(m["final_loss"]) and 0.0 <= m["auc_save"] <= 1.0


# ---------------------------------------------------------------------------------------------
# A shop log built here: CSV and Parquet give the same directory
# ---------------------------------------------------------------------------------------------


def _shop_log(seed: int = 0, users: int = 30, items: int = 40, days: int = 30) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    n = users * 20
    start = pd.Timestamp("2023-05-01", tz="UTC")
    events = pd.DataFrame({
        "visitor": [f"u{u:03d}" for u in rng.integers(0, users, n)],
        "sku": [f"sku-{i}" for i in rng.integers(0, items, n)],
        "when": [(start + pd.Timedelta(seconds=int(s))).isoformat() for s in rng.integers(0, days * 86_400, n)],
        "kind": rng.choice(["view", "addtocart", "transaction", "wishlist"], n, p=[0.6, 0.2, 0.15, 0.05]),
        "channel": rng.choice(["desktop", "ios", "android"], n),
    })
    catalogue = pd.DataFrame({
        "sku": [f"sku-{i}" for i in range(items - 5)],  # the last 5 items have no row: default features
        "price": rng.uniform(1, 100, items - 5).round(2),
        "brand": rng.choice(["acme", "globex", "initech"], items - 5),
        "tags": ["|".join(rng.choice(["red", "blue", "tea", "mug", "gift"], 2, replace=False)) for _ in range(items - 5)],
    })
    return events, catalogue


SHOP = {
    "name": "shop",
    "interactions": {"user": "visitor", "item": "sku", "timestamp": "when", "event": "kind", "surface": "channel"},
    "actions": {"view": ["view"], "cart": ["addtocart"], "purchase": ["transaction"]},  # wishlist: dropped
    "positive": ["cart", "purchase"],
    "surfaces": {"web": ["desktop"], "app": ["ios", "android"]},
    "labels": {"save": ["purchase"], "hide": []},
    "items": {"id": "sku", "numeric": ["price"], "categorical": ["brand"], "multi": ["tags"]},
    "collections": {"source": "user_positives"},
    "split": {"date": "2023-05-25"},
}


def _shop_config(folder: Path, suffix: str, **changes) -> dict:
    d = json.loads(json.dumps(SHOP))
    d["interactions"]["path"] = f"events.{suffix}"
    d["items"]["path"] = f"items.{suffix}"
    for k, v in changes.items():
        d[k] = v
    return d


@pytest.fixture(scope="module")
def shop_dirs(tmp_path_factory) -> dict[str, Path]:
    src = tmp_path_factory.mktemp("shop_src")
    events, catalogue = _shop_log()
    events.to_csv(src / "events.csv", index=False)
    catalogue.to_csv(src / "items.csv", index=False)
    events.to_parquet(src / "events.parquet")
    catalogue.to_parquet(src / "items.parquet")
    out = {}
    for suffix in ("csv", "parquet"):
        out[suffix] = tmp_path_factory.mktemp("shop") / suffix
        import_data(from_dict(_shop_config(src, suffix), src), out[suffix])
    out["src"] = src
    return out


def test_csv_and_parquet_sources_give_the_same_directory(shop_dirs):
    a, b = shop_dirs["csv"], shop_dirs["parquet"]
    for d in (a, b):
        validate_dir(d)
    for name in ("pins", "boards", "pin_boards", "users", "events", "impressions"):
        ta, tb = io.read_table(a, name).to_pandas(), io.read_table(b, name).to_pandas()
        pd.testing.assert_frame_equal(ta, tb, check_like=False)
    ma, mb = io.read_meta(a), io.read_meta(b)
    assert ma == mb


def test_shop_import_rules(shop_dirs):
    d = shop_dirs["csv"]
    events, catalogue = _shop_log()
    meta = io.read_meta(d)
    assert meta["action_types"] == ["view", "cart", "purchase"] and meta["surfaces"] == ["web", "app"]
    assert meta["split_timestamp"] == io.day_bounds("2023-05-25")[0]
    ev = load_events(d)
    assert len(ev) == (events["kind"] != "wishlist").sum()  # wishlist rows dropped
    assert set(ev["surface"]) == {"web", "app"}
    assert (ev.loc[ev["surface"] == "web"].shape[0]
            == ((events["channel"] == "desktop") & (events["kind"] != "wishlist")).sum())
    # string ids -> 1..N with the originals in id_maps/
    umap = pd.read_parquet(d / "id_maps" / "users.parquet")
    assert set(umap["original"]) == set(events["visitor"]) and set(ev["user_id"]) <= set(umap["user_id"])
    imap = pd.read_parquet(d / "id_maps" / "items.parquet")
    pins = load_table(d, "pins").merge(imap, on="pin_id")
    feats = np.stack(pins["features"].to_numpy())
    # feature layout: price (1) | hashed brand/tags (32) | id block (8); items without a catalogue row get
    # price 0 (the mean), no hashed tokens, and their id block
    no_row = pins["original"].isin([f"sku-{i}" for i in range(35, 40)]).to_numpy()
    assert no_row.sum() == 5
    assert np.allclose(feats[no_row, :33], 0) and np.allclose(np.linalg.norm(feats[no_row, 33:], axis=1), 1, atol=1e-5)
    assert (np.linalg.norm(feats[~no_row, 1:33], axis=1) > 0.99).all()
    assert "s_pin_brand" in meta["sparse_features"] and "d_pin_price" in meta["dense_features"]
    # labels from the action mapping: save = purchase; hide has no action -> all 0 (and a note)
    imp = load_table(d, "impressions")
    assert imp["label_hide"].sum() == 0 and imp["label_save"].sum() > 0
    assert (imp["label_save"] <= imp["label_click"]).all()


def test_sampled_negatives_follow_the_rule(shop_dirs):
    d = shop_dirs["csv"]
    ev = load_events(d)
    imp = load_table(d, "impressions")
    engaged = imp[imp[[c for c in imp.columns if c.startswith("label_")]].sum(axis=1) > 0]
    negatives = imp[imp[[c for c in imp.columns if c.startswith("label_")]].sum(axis=1) == 0]
    assert len(negatives) > 0
    seen = set(zip(ev["user_id"], ev["pin_id"]))
    # never an item the user interacted with; at most one negative per engaged item of the request
    assert not any((u, p) in seen for u, p in zip(negatives["user_id"], negatives["pin_id"]))
    per_req = negatives.groupby("request_id").size()
    cap = engaged.groupby("request_id").size().reindex(per_req.index, fill_value=0)
    assert (per_req <= cap).all()
    # requests are (user, day, surface): one user and one surface per request
    assert (imp.groupby("request_id")[["user_id", "surface"]].nunique() == 1).all().all()


def test_leave_last_out_split_and_explicit_impressions(shop_dirs, tmp_path):
    src = shop_dirs["src"]
    out = tmp_path / "llo"
    import_data(from_dict(_shop_config(src, "csv", split={"leave_last": 2}), src), out)
    users = load_table(out, "users")
    ev = load_events(out)
    merged = ev.merge(users, on="user_id")
    n_eval = (merged["timestamp"] >= merged["split_timestamp"]).groupby(merged["user_id"]).sum()
    counts = ev.groupby("user_id").size()
    assert ((n_eval >= 2) | (counts <= 2)).all()
    assert io.read_meta(out)["split"] == {"rule": "leave_last", "n": 2}

    # logged impressions instead of sampled negatives
    events, _ = _shop_log()
    shown = events.head(200).assign(clicked=(np.arange(200) % 3 == 0).astype(int))
    shown["rid"] = pd.factorize(shown["visitor"])[0] + 7  # one request per user (a request has one user)
    shown.to_csv(src / "shown.csv", index=False)
    out2 = tmp_path / "logged"
    cfg = _shop_config(src, "csv", impressions={"path": "shown.csv", "request": "rid", "user": "visitor",
                                                "item": "sku", "timestamp": "when",
                                                "labels": {"click": "clicked"}})
    import_data(from_dict(cfg, src), out2)
    imp = load_table(out2, "impressions")
    assert imp["request_id"].nunique() == shown["visitor"].nunique() and imp["label_click"].sum() == shown.drop_duplicates(
        ["rid", "sku"]).loc[lambda x: x["clicked"] == 1].shape[0]


# ---------------------------------------------------------------------------------------------
# A basket log: collections from the basket column, positives from a reorder flag
# ---------------------------------------------------------------------------------------------


def test_basket_log_collections_from_a_column_and_reorder_positives(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for order in range(120):
        user = int(rng.integers(1, 25))
        t = 1_600_000_000 + order * 6 * 3600
        for product in rng.choice(np.arange(100, 160), int(rng.integers(2, 7)), replace=False):
            rows.append({"order_id": order, "user_id": user, "product_id": int(product), "ts_ms": t * 1000,
                         "reordered": int(rng.random() < 0.4)})
    orders = pd.DataFrame(rows)
    orders.to_parquet(tmp_path / "orders.parquet")
    cfg = {
        "name": "baskets",
        "interactions": {"path": "orders.parquet", "user": "user_id", "item": "product_id", "timestamp": "ts_ms",
                         "timestamp_unit": "ms", "event": "reordered", "collection": "order_id"},
        "actions": {"buy": [0], "rebuy": [1]},
        "positive": ["rebuy"],
        "collections": {"source": "column", "column": "order_id"},
        "split": {"fraction": 0.8},
    }
    out = tmp_path / "out"
    import_data(from_dict(cfg, tmp_path), out)
    validate_dir(out)
    meta = io.read_meta(out)
    ev = load_events(out)
    assert len(ev) == len(orders)
    assert (ev["action_type"] == "rebuy").sum() == orders["reordered"].sum()
    # one board per training-period basket of 2+ products, holding exactly that basket's products
    boards = load_table(out, "boards")
    pb = load_table(out, "pin_boards").merge(boards, on="board_id")
    train_orders = orders[orders["ts_ms"] // 1000 < meta["split_timestamp"]]
    assert len(boards) == train_orders["order_id"].nunique()
    for name, grp in pb.groupby("name"):
        order = int(name.split(":")[1])
        assert set(grp["pin_id"]) == set(orders.loc[orders["order_id"] == order, "product_id"])
    assert (boards["kind"] == "order_id").all()
    imp = load_table(out, "impressions")
    assert imp["label_save"].sum() > 0
    assert set(imp.loc[imp["label_save"] == 1, "pin_id"]) <= set(ev.loc[ev["action_type"] == "rebuy", "pin_id"])


def test_long_sparse_log_gets_month_partitions(tmp_path):
    n = 1_200  # one event every ~2 days for 6.5 years: 1,200 day folders -> month folders
    ts = 1_400_000_000 + np.arange(n) * 2 * 86_400
    pd.DataFrame({"u": np.arange(n) % 7, "i": np.arange(n) % 13, "t": ts, "r": np.arange(n) % 5 + 1}).to_csv(
        tmp_path / "log.csv", index=False)
    cfg = {"interactions": {"path": "log.csv", "user": "u", "item": "i", "timestamp": "t", "signal": "r"},
           "actions": {"good": {"min": 4}, "meh": {"max": 4}}, "positive": ["good"],
           "split": {"fraction": 0.9}}
    out = tmp_path / "out"
    import_data(from_dict(cfg, tmp_path), out)
    meta = io.read_meta(out)
    assert meta["partition"] == "month"
    folders = sorted(p.name for p in (out / "events").iterdir())
    assert 70 <= len(folders) <= 85 and all(len(f) == len("dt=2014-05") for f in folders)
    assert len(load_events(out)) == n


# ---------------------------------------------------------------------------------------------
# Bad import configs: exit code 2, the key or column named, nothing published
# ---------------------------------------------------------------------------------------------


def _write_case(tmp_path: Path, **changes) -> Path:
    events, _ = _shop_log(users=10, items=12, days=10)
    events.to_csv(tmp_path / "events.csv", index=False)
    d = {k: v for k, v in json.loads(json.dumps(SHOP)).items() if k != "items"}
    d["interactions"]["path"] = "events.csv"
    d["split"] = {"fraction": 0.8}
    for k, v in changes.items():
        if "." in k:
            a, b = k.split(".")
            d[a][b] = v
        else:
            d[k] = v
    path = tmp_path / "import.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.mark.parametrize("changes, message", [
    ({"interactions.user": "uid"}, r"key 'interactions.user' names column 'uid', which events.csv does not have"),
    ({"actions": {"view": ["view"], "cart": ["nope"]}, "positive": ["cart"], "labels": {}},
     r"key 'positive' \(\['cart'\]\) leaves no positive event"),
    ({"actions": {"view": ["nope"]}, "positive": ["view"], "labels": {}}, r"key 'actions' matches none of the .* rows"),
    ({"interactions.timestamp": "kind"}, r"column 'kind' \(key 'interactions.timestamp'.*not dates; first at row 0"),
    ({"interactions.timestamp_unit": "s"}, r"column 'when' .*not numbers"),
    ({"interactions.path": "missing.csv"}, r"missing.csv: file not found \(import config key 'interactions.path'\)"),
    ({"colections": {"source": "column"}}, r"unknown key 'colections'"),
    ({"positive": ["buy"]}, r"key 'positive' names action 'buy', which is not declared"),
    ({"actions": {"a": ["view"], "b": ["x"], "c": ["y"], "d": ["z"], "e": ["w"]}, "positive": ["a"]},
     r"declares 5 action types .* at most 4"),
    ({"split": {"date": "2030-01-01"}}, r"key 'split' .* leaves \d+ training and 0 evaluation"),
])
def test_bad_import_configs_are_rejected_by_the_cli(tmp_path, capsys, changes, message):
    path = _write_case(tmp_path, **changes)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous output")
    assert cli_main(["data", "import", "--config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(message, err), err
    assert (out / "keep.txt").read_text() == "previous output"  # nothing replaced
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.import-")]  # no temp folder left


def test_cli_import_success_then_a_failed_import_leaves_it(tmp_path, capsys):
    good = _write_case(tmp_path)
    assert cli_main(["data", "import", "--config", str(good), "--out", str(tmp_path / "d")]) == 0
    printed = capsys.readouterr().out
    assert "| events |" in printed and "note: surfaces" not in printed and "note: labels: task 'hide'" in printed
    before = sorted(p.name for p in (tmp_path / "d").rglob("*"))
    bad = _write_case(tmp_path, **{"interactions.item": "product"})
    proc = subprocess.run([sys.executable, "-m", "components.cli", "data", "import", "--config", str(bad),
                           "--out", str(tmp_path / "d")], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "HOMEFEED_QUIET": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "key 'interactions.item' names column 'product'" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "d").rglob("*")) == before
    validate_dir(tmp_path / "d")


# ---------------------------------------------------------------------------------------------
# The vocabulary contract (meta.json) the trainers read
# ---------------------------------------------------------------------------------------------


def test_vocab_defaults_and_declared_rules():
    from components.data.vocab import DEFAULT, vocab_from_meta

    assert vocab_from_meta(None) == DEFAULT == vocab_from_meta({"dataset": "ml-100k"})
    acts = np.array(["repin", "closeup", "closeup", "click", "hide"])
    assert DEFAULT.is_positive(acts, np.array([0, 5, 11, 12, 99])).tolist() == [True, False, True, True, False]
    v = vocab_from_meta({"action_types": ["view", "cart", "purchase"], "surfaces": ["web", "app"],
                         "positive": {"actions": ["purchase"], "min_duration_s": {"view": 30}}})
    assert v.is_positive(np.array(["view", "view", "cart", "purchase"]),
                         np.array([10, 31, 0, 0])).tolist() == [False, True, False, True]
    assert v.action_codes(np.array(["purchase", "repin"])).tolist() == [2, -1]
    assert v.surface_codes(np.array(["app"])).tolist() == [1]
    with pytest.raises(ValueError, match="key 'action_types'.*expected 1 to 4"):
        vocab_from_meta({"action_types": list("abcde")})
    with pytest.raises(ValueError, match=r"key 'positive' names \['buy'\]"):
        vocab_from_meta({"action_types": ["view"], "positive": {"actions": ["buy"]}})


def test_meta_without_eval_days_and_domain_feature_is_valid(shop_dirs, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(shop_dirs["csv"], d)
    meta = io.read_meta(d)
    del meta["eval_days"], meta["domain_feature"]
    io.write_meta(d, meta)
    validate_dir(d)
    meta["eval_days"] = "two weeks"
    io.write_meta(d, meta)
    with pytest.raises(ValueError, match="key 'eval_days' is 'two weeks', expected int"):
        validate_dir(d)


def test_daily_user_embedding_reads_the_imported_vocabulary(shop_dirs, tmp_path):
    """embed_users loads events itself (not through load_events): it must keep the dataset's action types."""
    from components.data.baseline import content_embeddings
    from components.data.tables import write_table
    from components.inference.users import embed_users
    from components.training import pinnerformer

    d = shop_dirs["csv"]
    pins, _ = content_embeddings(d)
    pin_path = write_table(pins, tmp_path / "pins.parquet")
    pinnerformer.train(config.load("pinnerformer_tiny", {"max_steps": 2, "pin_dim": pins.dim}, model="pinnerformer"),
                       d, pin_path, tmp_path / "pf")
    last_day = io.partitions(d, "events")[-1]
    ev = load_events(d)
    active = ev.loc[io.day_of(ev["timestamp"].to_numpy()) == last_day, "user_id"].unique()
    out = embed_users(tmp_path / "pf", d, pin_path, tmp_path / "emb", last_day)
    users = pd.read_parquet(out)
    assert len(active) > 0 and set(users["user_id"]) == set(active)
