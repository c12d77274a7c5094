"""``homefeed eval pinsage``: variants x seeds plus baselines on one fixed set of held-out pairs, one
EvalResult, no checkpoint files kept."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components import config
from components.cli import main as cli_main
from components.evaluation import pinsage as pinsage_eval
from components.evaluation.result import read_results
from components.graph.graph import build_graph
from components.training.loop import Validation
from components.training.pinsage import train
from components.training.pinsage_data import PairBatches


def test_eval_pinsage_variants_seeds_and_baselines(tiny_data, tmp_path, capsys):
    out = tmp_path / "eval"
    assert cli_main(["eval", "pinsage", "--experiment", "pinsage_tiny", "--data", str(tiny_data), "--out", str(out),
                     "--seeds", "0,1", "--set", "max_steps=3", "--set", "log_every=1000", "--set", "epochs=2",
                     "--set", "walks_per_node=10"]) == 0
    [result] = read_results(out)
    assert result.model == "pinsage" and result.seeds() == [0, 1]
    assert result.variants == list(pinsage_eval.BASELINES) + list(pinsage_eval.VARIANTS)
    assert result.metrics["mrr"] == "higher" and result.metrics["train_seconds"] == "lower"
    for v in result.variants:
        for seed in (0, 1):
            m = result.values(v, "hit@10")[seed], result.values(v, "hit@50")[seed], result.values(v, "mrr")[seed]
            assert 0.0 <= m[0] <= m[1] <= 1.0 and 0.0 < m[2] <= 1.0
        s = result.stat(v, "mrr")
        assert s.n == 2 and s.ci_low <= s.mean <= s.ci_high
    # 3 steps of 2 curriculum stages: the full model's last step used a hard negative (not the no-hard run)
    assert result.values("PinSage (full)", "mrr") != result.values("PinSage, no hard negatives", "mrr")
    # trained variants differ by seed (two real trainings); popularity does not depend on the seed
    full = result.values("PinSage (full)", "mrr")
    assert full[0] != full[1]
    pop = result.values("popularity", "mrr")
    assert pop[0] == pop[1]
    assert {c.verdict for c in result.comparisons} <= {"holds", "reversed", "not significant"}
    assert len(result.comparisons) == 6
    # evaluation runs keep model.pt only
    models = list((out / "models").rglob("model.pt"))
    assert len(models) == 8 and not list((out / "models").rglob("step-*.pt"))
    md = (out / "pinsage_synthetic.md").read_text()
    assert "| PinSage (full) |" in md and "topic@10" in md and "popularity" in md
    assert "| PinSage (full) |" in capsys.readouterr().out
    d = json.loads((out / "pinsage_synthetic.json").read_text())
    assert d["protocol"]["seeds"] == [0, 1] and "SPLIT_SEED" in d["protocol"]["queries"]


def test_heldout_pairs_do_not_depend_on_the_training_seed(tiny_data):
    graph = build_graph(tiny_data)
    a = pinsage_eval.heldout_pairs(tiny_data, graph.pin_ids, config.load("pinsage_tiny", {"seed": 0, "eval_max_queries": 50}))
    b = pinsage_eval.heldout_pairs(tiny_data, graph.pin_ids, config.load("pinsage_tiny", {"seed": 7, "eval_max_queries": 50}))
    assert len(a) == 50 and np.array_equal(a, b)


def test_ranks_from_scores_with_and_without_a_pool():
    scores = np.array([[9.0, 5.0, 7.0, 1.0, 6.0]])  # query pin 0; positive pin 1 (score 5)
    pairs = np.array([[0, 1]])
    # every other pin: 2 (7) and 4 (6) beat it; the query itself does not count
    assert pinsage_eval.ranks_from_scores(scores, pairs, None).tolist() == [3]
    # a pool {1, 3, 4}: only 4 beats it; the positive inside the pool is not its own competitor
    assert pinsage_eval.ranks_from_scores(scores, pairs, np.array([1, 3, 4])).tolist() == [2]
    with pytest.raises(ValueError, match="no queries"):
        pinsage_eval.rank_metrics(np.array([]))


def test_curriculum_scaled_to_a_run_shorter_than_one_epoch():
    # 40 pairs, batch 4: 10 batches per epoch; a 6-step run of 3 "epochs" has stages of 2 steps
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, 30, (40, 2))
    feats = rng.normal(size=(30, 4)).astype(np.float32)
    nbr = rng.integers(0, 30, (30, 3))
    w = np.full((30, 3), 1 / 3, np.float32)
    hard = rng.integers(0, 30, (30, 5))
    ds = PairBatches(pairs, feats, nbr, w, 1, 4, 6, hard, 2, 0, 0, 0, stage_len=2)
    assert [ds[i]["hard"].shape[1] for i in range(6)] == [0, 0, 1, 1, 2, 2]
    # resuming mid-epoch keeps the stage of the global step
    assert PairBatches(pairs, feats, nbr, w, 1, 4, 6, hard, 2, 0, 0, 0, start=3, stage_len=2)[0]["hard"].shape[1] == 1
    # without stage_len the whole epoch uses hard_per_positive (the per-epoch curriculum)
    assert PairBatches(pairs, feats, nbr, w, 1, 4, 6, hard, 1, 0, 0, 1)[0]["hard"].shape[1] == 1


def test_a_curriculum_that_never_activates_warns(tiny_data, tmp_path):
    cfg = config.load("pinsage_tiny", {"epochs": 1, "max_steps": 2, "hard_negatives": True, "checkpoint_every": 0,
                                       "walks_per_node": 10})
    with pytest.warns(UserWarning, match="hard negatives never activate"):
        train(cfg, tiny_data, tmp_path / "m")


def test_early_stopping_before_the_second_curriculum_stage_warns(tiny_data, tmp_path):
    # 2 epochs: hard negatives start with the second epoch (>= 2 steps of 64 on this data); a metric that never
    # improves stops the run after step 2 (patience 1, validated every step), before any minibatch had a hard
    # negative: the run must say so
    cfg = config.load("pinsage_tiny", {"epochs": 2, "epoch_pairs": 640, "batch_size": 64, "hard_negatives": True,
                                       "checkpoint_every": 0, "walks_per_node": 10, "log_every": 1000})
    stop = Validation(lambda model: 0.5, metric="val_mrr", every=1, patience=1)
    with pytest.warns(UserWarning, match="no minibatch of this run had a hard negative"):
        metrics = train(cfg, tiny_data, tmp_path / "m", validation=stop)
    assert metrics["stopped_early"] and metrics["steps"] == 2 and metrics["hard_per_positive_max"] == 0


def test_the_harness_notes_a_run_whose_curriculum_never_activated(tiny_data, tmp_path):
    cfg = config.load("pinsage_tiny", {"epochs": 2, "max_steps": 1, "walks_per_node": 10, "log_every": 1000})
    with pytest.warns(UserWarning, match="hard negatives never activate"):
        result = pinsage_eval.compare(cfg, tiny_data, tmp_path, variants={"PinSage (full)": {}}, seeds=[0],
                                      baselines=False)
    [run] = result.runs
    assert run.details["hard_per_positive_max"] == 0 and run.details["steps"] == 1
    assert any("never activated" in n and "equals 'no hard negatives'" in n for n in result.notes)
    assert "never activated" in (tmp_path / "pinsage_synthetic.md").read_text()
