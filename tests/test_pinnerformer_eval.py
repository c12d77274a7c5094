"""``eval pinnerformer``'s harness: variants x seeds on the same held-out users, the popularity baseline,
paired orderings, one EvalResult, no step checkpoints kept."""

from __future__ import annotations

from components.evaluation.pinnerformer_harness import POPULARITY, run_eval, variant_name
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
