"""``homefeed eval merge``: one-seed results of one model, dataset and protocol merge into the result one
``--seeds`` command would have written; mismatched inputs are refused with a clear error (exit 2)."""

from __future__ import annotations

import json

import pytest

from components.cli import main as cli_main
from components.config import ConfigError
from components.evaluation.merge import merge_results
from components.evaluation.result import EvalResult, read_result, write_result

MRR = {"A": [0.30, 0.32, 0.31], "B": [0.20, 0.21, 0.25]}  # per seed 0, 1, 2


def _one(seeds: list[int], variants=("A", "B"), protocol: dict | None = None, baseline: bool = True) -> EvalResult:
    r = EvalResult(model="toy", dataset="hand", command=f"homefeed eval toy --seeds {','.join(map(str, seeds))}",
                   protocol={"split": "period 'test'", "pool": 100, "seeds": seeds,
                             "early stopping": {v: "patience 3" for v in variants}, **(protocol or {})},
                   metrics={"mrr": "higher", "train_seconds": "lower"})
    for seed in seeds:
        if baseline:
            r.add("popularity", seed, details={"baseline": True}, mrr=0.1, train_seconds=0.0)
        for v in variants:
            r.add(v, seed, mrr=MRR[v][seed], train_seconds=1.0 + seed)
    return r


def test_merge_equals_one_run_over_all_seeds():
    whole = _one([0, 1, 2])
    whole.compare("A", "B", "mrr")
    parts = [_one([0]), _one([1, 2], variants=("B", "A"))]
    parts[1].compare("A", "B", "mrr")
    merged = merge_results(parts, names=["s0.json", "s12.json"], command="homefeed eval merge s0.json s12.json --out o",
                           orderings=[("A", "popularity", "mrr")])
    assert merged.seeds() == [0, 1, 2] and merged.protocol["seeds"] == [0, 1, 2]
    assert merged.variants == ["popularity", "A", "B"]  # the first input's order
    for v in whole.variants:
        assert merged.stat(v, "mrr") == whole.stat(v, "mrr")
    c = {(x.better, x.worse): x for x in merged.comparisons}
    assert c[("A", "B")] == whole.comparisons[0] and c[("A", "B")].n == 3 and c[("A", "B")].verdict == "holds"
    assert c[("A", "popularity")].verdict == "holds"  # an ordering no input had, recomputed over the union
    assert merged.command.endswith("--seeds 0 ; homefeed eval toy --seeds 1,2 ; homefeed eval merge s0.json s12.json --out o")
    assert [m["file"] for m in merged.details["merged_from"]] == ["s0.json", "s12.json"]
    assert merged.protocol["early stopping"] == {"A": "patience 3", "B": "patience 3"}
    # merging a result into itself changes nothing but provenance: the same (variant, seed) kept once
    again = merge_results([merged, parts[1]], command="homefeed eval merge s0.json s12.json --out o")
    assert len(again.runs) == len(merged.runs) and again.command == merged.command


def test_new_variants_keep_their_place_and_protocol_dicts_join():
    a = _one([0, 1], variants=("A",))
    b = _one([0, 1], variants=("B",), baseline=False)
    merged = merge_results([a, b])
    assert merged.variants == ["B", "popularity", "A"]  # B leads its own input
    assert merged.protocol["early stopping"] == {"A": "patience 3", "B": "patience 3"}
    assert merged.stat("B", "mrr").n == 2


@pytest.mark.parametrize("change, match", [
    (lambda r: setattr(r, "dataset", "other"), "dataset 'other'"),
    (lambda r: setattr(r, "model", "m2"), "model 'm2'"),
    (lambda r: r.protocol.update(split="period 'val'"), "protocol 'split' differs"),
    (lambda r: r.protocol.update(overrides=["epochs=5"]), "different protocol fields \\['overrides'\\]"),
    (lambda r: r.protocol["early stopping"].update(A="patience 1"), "protocol 'early stopping' differs for \\['A'\\]"),
    (lambda r: r.metrics.update(auc="higher"), "declares metrics"),
    (lambda r: r.runs[1].metrics.update(mrr=0.9), "'A' seed 0 is in a.json and b.json with different values"),
])
def test_mismatched_inputs_are_refused(change, match):
    a, b = _one([0]), _one([0])
    change(b)
    with pytest.raises(ConfigError, match=match):
        merge_results([a, b], names=["a.json", "b.json"])


def test_cli_merge_writes_the_result_and_exits_2_on_bad_input(tmp_path, capsys):
    paths = []
    for seeds in ([0], [1], [2]):
        d = tmp_path / f"s{seeds[0]}"
        paths.append(str(write_result(_one(seeds), d)))
    out = tmp_path / "merged"
    assert cli_main(["eval", "merge", *paths, "--out", str(out), "--ordering", "A>B:mrr",
                     "--ordering", "B>popularity:mrr"]) == 0
    merged = read_result(out / "toy_hand.json")
    assert merged.seeds() == [0, 1, 2] and merged.stat("A", "mrr").n == 3
    verdicts = {(c.better, c.worse): c.verdict for c in merged.comparisons}
    assert verdicts == {("A", "B"): "holds", ("B", "popularity"): "holds"}
    md = (out / "toy_hand.md").read_text()
    assert "| A > B | mrr |" in md and "merged from 3 results" in md
    # a protocol mismatch, a missing file, a bad ordering and an unknown variant: exit 2, no traceback
    other = _one([2], protocol={"pool": 5000})
    bad = str(write_result(other, tmp_path / "bad"))
    for argv, msg in [([*paths, bad], "protocol 'pool' differs"), ([paths[0], str(tmp_path / "nope.json")], "no such result file"),
                      ([*paths, "--ordering", "A:mrr"], "expected 'BETTER>WORSE:METRIC'"),
                      ([*paths, "--ordering", "A>C:mrr"], "no such variant or metric")]:
        assert cli_main(["eval", "merge", *argv, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err
    (tmp_path / "junk.json").write_text(json.dumps({"schema_version": 1}))
    assert cli_main(["eval", "merge", str(tmp_path / "junk.json"), "--out", str(tmp_path / "x")]) == 2
    assert "not an EvalResult file" in capsys.readouterr().err
