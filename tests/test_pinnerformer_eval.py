"""``eval pinnerformer``'s harness: variants x seeds on the same held-out users, the popularity baseline,
paired orderings, one EvalResult, no step checkpoints kept."""

from __future__ import annotations

import pytest
import yaml

from components.cli import main
from components.config import ConfigError
from components.evaluation.pinnerformer_harness import POPULARITY, parse_row_experiments, run_eval, variant_name
from components.evaluation.result import read_results

ROWS = [("next_action", "mixed", True), ("dense_all_action", "mixed", True)]


def test_eval_pinnerformer_seeds_baseline_and_result(tiny_data, tmp_path):
    out = tmp_path / "eval"
    result = run_eval(tiny_data, out, experiment="pinnerformer_tiny", overrides=["max_steps=4", "log_every=1000"],
                      rows=ROWS, seeds="0,1", command="test")
    [back] = read_results(out)
    assert back.to_dict() == result.to_dict()
    names = [variant_name(*r) for r in ROWS]
    assert result.variants == names + [POPULARITY] and result.seeds() == [0, 1]
    for v in names:
        runs = [r for r in result.runs if r.variant == v]
        # the same held-out users are scored whatever the seed
        assert len({r.details["eval_users_scored"] for r in runs}) == 1 and runs[0].details["eval_users_scored"] > 0
        assert all(0.0 <= x <= 1.0 for x in result.values(v, "recall@10").values())
        assert all(x is not None for x in result.values(v, "recall@10_daily").values())
    seeds = result.values(names[1], "recall@10")
    assert seeds[0] != seeds[1]  # two real trainings
    pop = result.values(POPULARITY, "recall@10")
    assert pop[0] == pop[1] and 0.0 <= pop[0] <= 1.0
    assert {(c.better, c.worse) for c in result.comparisons} == {(names[1], names[0]), (names[1], POPULARITY),
                                                                  (names[0], POPULARITY)}  # ROWS[0] is next_action
    assert result.protocol["candidate pool"] > 0 and result.details["eval_users"] > 0
    assert not list(out.rglob("step-*.pt")) and len(list(out.rglob("model.pt"))) == 4
    assert "SASRec" in (out / "pinnerformer_synthetic.md").read_text()


def test_a_row_trains_with_its_own_experiment_and_the_protocol_says_so(tiny_data, tmp_path):
    """--row-experiment: next_action trains with `pinnerformer`'s sizes (d_model 64), the other row with the base
    experiment's (pinnerformer_tiny: 32); both are measured the same way."""
    out = tmp_path / "eval"
    result = run_eval(tiny_data, out, experiment="pinnerformer_tiny", overrides=["max_steps=2", "log_every=1000"],
                      rows=ROWS, seeds="0", command="test", baselines=False,
                      row_experiments=parse_row_experiments(["next_action/mixed/logq=pinnerformer"]))
    assert result.protocol["row experiments"] == {variant_name(*ROWS[0]): "pinnerformer"}
    runs = out / "pinnerformer_synthetic_runs"
    saved = {d: yaml.safe_load((runs / d / "seed-0" / "config.yaml").read_text())
             for d in ("next_action-mixed-logq", "dense_all_action-mixed-logq")}
    assert saved["next_action-mixed-logq"]["d_model"] == 64 and saved["next_action-mixed-logq"]["experiment"] == "pinnerformer"
    assert saved["dense_all_action-mixed-logq"]["d_model"] == 32
    assert saved["next_action-mixed-logq"]["objective"] == "next_action"  # the row decides the objective
    assert all(0.0 <= v <= 1.0 for v in result.values(variant_name(*ROWS[0]), "recall@10").values())


def test_row_experiments_that_measure_differently_or_name_no_row_are_refused(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match=r"eval_user_fraction \(0.2 vs 0.1\).*patience \(3 vs 0\)"):
        run_eval(tiny_data, tmp_path, experiment="pinnerformer_tiny", rows=ROWS, seeds="0",
                 row_experiments=parse_row_experiments(["next_action/mixed/logq=pinnerformer_eval"]))
    with pytest.raises(ConfigError, match="not evaluated: all_action/mixed/logq"):
        run_eval(tiny_data, tmp_path, experiment="pinnerformer_tiny", rows=ROWS, seeds="0",
                 row_experiments=parse_row_experiments(["all_action/mixed/logq=pinnerformer"]))
    for bad, msg in [("next_action/mixed/logq", "expected ROW=EXPERIMENT"), ("next/mixed/logq=x", "is not one of")]:
        with pytest.raises(ConfigError, match=msg):
            parse_row_experiments([bad])
    with pytest.raises(ConfigError, match="given twice"):
        parse_row_experiments(["next_action/mixed/logq=a", "next_action/mixed/logq=b"])


def test_cli_bad_row_experiment_exits_2_naming_it(tiny_data, tmp_path, capsys):
    code = main(["eval", "pinnerformer", "--data", str(tiny_data), "--out", str(tmp_path), "--experiment",
                 "pinnerformer_tiny", "--rows", "next_action/mixed/logq",
                 "--row-experiment", "next_action/mixed/logq=no_such_experiment"])
    err = capsys.readouterr().err
    assert code == 2 and "no_such_experiment" in err and "Traceback" not in err
