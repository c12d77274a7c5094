"""The pin-board graph, random walks, importance neighbourhoods, PPR hard negatives, computation graphs."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components import config
from components.data import io
from components.graph import sampling
from components.graph.graph import PinBoardGraph, build_graph


def two_component_graph() -> PinBoardGraph:
    """Pins 0-3 on boards 0/1 (pin 0 on both), pins 4-5 on board 2: nothing connects {0..3} and {4, 5}."""
    edge_pin = np.array([0, 1, 2, 0, 3, 4, 5])
    edge_coll = np.array([0, 0, 0, 1, 1, 2, 2])
    return PinBoardGraph.from_edges(np.arange(10, 16), np.array([100, 101, 102]), edge_pin, edge_coll)


def cfg(**kw):
    return config.load("pinsage_tiny", kw)


def test_csr_matches_the_membership_table(tiny_data):
    g = build_graph(tiny_data)
    pb = pd.read_parquet(tiny_data / "pin_boards.parquet")
    assert g.num_edges == len(pb)
    assert (np.diff(g.pin_ids) > 0).all() and g.num_collections == pb["board_id"].nunique()
    pins, colls = g.edges()
    got = set(zip(g.pin_ids[pins].tolist(), g.coll_ids[colls].tolist()))
    assert got == set(zip(pb["pin_id"].tolist(), pb["board_id"].tolist()))
    # the reverse CSR holds the same edges
    rev = set()
    for c in range(g.num_collections):
        rev |= {(int(g.pin_ids[p]), int(g.coll_ids[c])) for p in g.coll_nbrs[g.coll_ptr[c]:g.coll_ptr[c + 1]]}
    assert rev == got
    assert np.array_equal(g.pin_index(g.pin_ids[[5, 0, 7]]), [5, 0, 7])
    with pytest.raises(KeyError, match="not a pin of the graph"):
        g.pin_index(np.array([-3]))


def test_engagement_edges_add_one_collection_per_user_before_the_split(tiny_data):
    g = build_graph(tiny_data, use_engagement_edges=True)
    base = build_graph(tiny_data)
    split = io.read_meta(tiny_data)["split_timestamp"]
    ev = pd.concat(pd.read_parquet(p) for p in sorted((tiny_data / "events").glob("dt=*/part-0.parquet")))
    ev = ev[(ev["timestamp"] < split) & (ev["action_type"] != "hide")]
    assert g.num_boards == base.num_collections
    assert g.num_collections == base.num_collections + ev["user_id"].nunique()
    assert g.num_edges == base.num_edges + len(ev[["user_id", "pin_id"]].drop_duplicates())


def test_bad_membership_row_names_the_file_and_column(tiny_data, tmp_path):
    bad = tmp_path / "data"
    shutil.copytree(tiny_data, bad)
    t = pq.read_table(bad / "pin_boards.parquet")
    extra = pa.table({"board_id": pa.array([t.column("board_id")[0].as_py()], pa.int64()),
                      "pin_id": pa.array([999_999_999], pa.int64())})
    pq.write_table(pa.concat_tables([t, extra]), bad / "pin_boards.parquet")
    with pytest.raises(ValueError, match=r"pin_boards\.parquet.*pin_id.*999999999"):
        build_graph(bad)


def test_walks_stay_in_the_component_and_are_seeded():
    g = two_component_graph()
    src, visited = sampling.random_walks(g, np.array([0, 4]), 100, 3, 0.3, np.random.default_rng(0))
    assert set(visited[src == 0].tolist()) <= {0, 1, 2, 3} and set(visited[src == 1].tolist()) <= {4, 5}
    again = sampling.random_walks(g, np.array([0, 4]), 100, 3, 0.3, np.random.default_rng(0))
    assert np.array_equal(visited, again[1]) and np.array_equal(src, again[0])
    # restart: walks of one hop only when restart_prob = 1
    src1, _ = sampling.random_walks(g, np.array([0]), 50, 4, 1.0, np.random.default_rng(1))
    assert len(src1) == 50


def test_visit_frequencies_follow_the_transition_probabilities():
    g = two_component_graph()
    src, visited = sampling.random_walks(g, np.array([1]), 20_000, 1, 0.0, np.random.default_rng(3))
    freq = np.bincount(visited, minlength=g.num_pins) / len(visited)
    # from pin 1 (only on board 0 = {0, 1, 2}): each of 0, 1, 2 with probability 1/3, never 3
    assert np.allclose(freq[:3], 1 / 3, atol=0.02) and freq[3] == 0


def test_top_visited_matches_a_naive_count(tiny_data):
    g = build_graph(tiny_data)
    c = cfg()
    sources = np.arange(0, g.num_pins, 37)
    src, visited = sampling.random_walks(g, sources, c.walks_per_node, c.walk_length, c.restart_prob,
                                         np.random.default_rng(5))
    nbr, w = sampling.top_visited(src, visited, sources, g.num_pins, c.num_neighbors)
    for i, s in enumerate(sources):
        counts = Counter(int(v) for v in visited[src == i] if v != s)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:c.num_neighbors]
        real = w[i] > 0
        assert nbr[i][real].tolist() == [p for p, _ in ranked]
        top = np.array([n for _, n in ranked], float)
        assert np.allclose(w[i][real], top / top.sum(), atol=1e-6)
        assert s not in nbr[i][real]
        assert (nbr[i][~real] == s).all()


def test_neighbourhoods_reproducible_and_seed_dependent(tiny_data):
    g = build_graph(tiny_data)
    a = sampling.build_neighbourhoods(g, cfg())
    b = sampling.build_neighbourhoods(g, cfg())
    c = sampling.build_neighbourhoods(g, cfg(seed=1))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (g.num_pins, cfg().num_neighbors)
    assert np.allclose(a[1].sum(1)[a[1].sum(1) > 0], 1.0, atol=1e-5)
    assert (a[0] != np.arange(g.num_pins)[:, None])[a[1] > 0].all()  # never itself


def test_ppr_is_a_distribution_and_hard_negatives_sit_in_the_band(tiny_data):
    g = build_graph(tiny_data)
    queries = np.array([0, 10, 200])
    r = sampling.personalized_pagerank(g, queries)
    assert r.shape == (3, g.num_pins) and np.allclose(r.sum(1).numpy(), 1.0, atol=1e-4)
    assert (r.argmax(1).numpy() == queries).all()  # the restart mass keeps the query first
    band = [0.05, 0.1]
    lo, hi = sampling.band_ranks(g.num_pins, band)
    hard = sampling.hard_negative_candidates(g, queries, band, 16, seed=0)
    for qi, q in enumerate(queries):
        scores = r[qi].numpy().copy()
        scores[q] = np.inf
        order = np.argsort(-scores, kind="stable")
        rank = np.empty(g.num_pins, int)
        rank[order] = np.arange(g.num_pins)
        # ties at the band edges may be ordered differently by topk: compare scores, not positions
        lo_s, hi_s = scores[order[lo]], scores[order[hi - 1]]
        assert ((scores[hard[qi]] <= lo_s + 1e-7) & (scores[hard[qi]] >= hi_s - 1e-7)).all()
    with pytest.raises(ValueError, match="hard_negative_band"):
        sampling.band_ranks(100, [0.5, 0.1])


def test_computation_graph_reindexes_every_layer():
    g = two_component_graph()
    nbr, w = sampling.build_neighbourhoods(g, cfg(num_neighbors=2, walks_per_node=40))
    targets = np.array([3, 0, 3, 5])
    nodes, blocks, pos = sampling.computation_graph(targets, nbr, w, num_layers=2)
    layers = [nodes]
    for b in blocks:  # walk up: layer k's nodes are layer k-1's rows at self_idx
        layers.append(layers[-1][b.self_idx])
        assert np.array_equal(layers[-2][b.nbr_idx], nbr[layers[-1]])
        assert np.array_equal(b.nbr_w, w[layers[-1]])
    assert np.array_equal(layers[-1][pos], targets)
    assert len(layers[0]) >= len(layers[1]) >= len(layers[2])


def test_neighbourhoods_round_trip_through_a_file(tiny_data, tmp_path):
    g = build_graph(tiny_data)
    nbr, w = sampling.build_neighbourhoods(g, cfg())
    path = sampling.save_neighbourhoods(tmp_path / "nbrs.npz", g.pin_ids, nbr, w)
    ids, nbr2, w2 = sampling.load_neighbourhoods(path, g)
    assert np.array_equal(ids, g.pin_ids) and np.array_equal(nbr2, nbr) and np.array_equal(w2, w)
    other = PinBoardGraph.from_edges(g.pin_ids[:10], np.array([1]), np.arange(10), np.zeros(10, int))
    with pytest.raises(ValueError, match="nbrs.npz: sampled for"):
        sampling.load_neighbourhoods(path, other)
