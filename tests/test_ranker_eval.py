"""``homefeed eval ranker``: trains each experiment once per seed in fresh processes, scores the baselines
(popularity, logistic regression, LightGBM) on the same split, and writes one EvalResult (JSON, Markdown)
plus a PNG, with HIT@3/save, AUC per task, memory, latency, parameters and a 95% interval over seeds."""

from __future__ import annotations

import json

import pytest

from components import config
from components.cli import main as cli_main
from components.config import ConfigError
from components.evaluation import ranker as ranker_eval
from components.evaluation.protocol import period_bounds
from components.evaluation.result import read_results
from components.training.ranker import prepare_data, train


def test_eval_ranker_cli_writes_result_markdown_and_png(tiny_data, tmp_path, capsys):
    out = tmp_path / "eval"
    exps = ["ranker_mlp_tiny", "ranker_dcnv2_lowrank_pepnet_tiny"]
    rc = cli_main(["eval", "ranker", "--experiments", ",".join(exps),
                   "--seeds", "0,1", "--data", str(tiny_data), "--out", str(out), "--set", "max_steps=4",
                   "--no-baselines"])
    assert rc == 0
    [result] = read_results(out)
    assert result.model == "ranker" and result.dataset == "synthetic" and result.seeds() == [0, 1]
    assert "--experiments ranker_mlp_tiny,ranker_dcnv2_lowrank_pepnet_tiny" in result.command
    assert result.variants == exps and len(result.runs) == 2 * 2
    for v in result.variants:
        for key in ("auc_save", "auc_closeup", "auc_click", "auc_hide"):
            assert all(0.0 <= x <= 1.0 for x in result.values(v, key).values())
        hit = result.stat(v, "hit3_save")
        assert hit.n == 2 and hit.mean > 0 and hit.std >= 0
    for exp in exps:
        assert result.values(exp, "latency_ms_b512")[0] > 0 and result.values(exp, "latency_ms_b1")[0] > 0
        assert result.values(exp, "peak_rss_mb")[0] > 50 and result.values(exp, "parameters")[0] > 0
    # the two seeds are real, different trainings
    mlp = result.values("ranker_mlp_tiny", "auc_save")
    assert mlp[0] != mlp[1]
    # the pepnet variant has more parameters than the plain MLP
    assert result.values(exps[1], "parameters")[0] > result.values(exps[0], "parameters")[0]
    assert result.comparisons == []  # no PEPNet twin, no baselines: nothing to pair
    # keep-last: one checkpoint file per run at most
    assert all(len(list(d.glob("checkpoints/step-*.pt"))) <= 1 for d in (out / "runs" / "ranker_synthetic").glob("*/seed-*"))
    md = (out / "ranker_synthetic.md").read_text()
    assert "| ranker_mlp_tiny |" in md and "hit3_save" in md
    assert (out / "ranker_synthetic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ranker_dcnv2_lowrank_pepnet_tiny" in capsys.readouterr().out
    assert json.loads((out / "ranker_synthetic.json").read_text())["metrics"]["latency_ms_b1"] == "lower"


def test_ranker_baselines_on_the_rankers_split(tiny_data):
    cfg = config.load("ranker_mlp_tiny", {"max_train_rows": 3000})
    _, evaluation, extra = prepare_data(cfg, tiny_data)
    val, test = (ranker_eval.period_rows(tiny_data, cfg, extra, p) for p in ("val", "test"))
    assert len(val) and len(test) and sorted([*val, *test]) == list(range(len(evaluation)))  # a partition
    runs = ranker_eval.baseline_runs(cfg, tiny_data, [0], None, None, gbdt_rounds=20, period="val")
    assert [name for name, _, _ in runs] == list(ranker_eval.BASELINES)
    m = {name: metrics for name, _, metrics in runs}
    for name, metrics in m.items():
        assert 0.0 <= metrics["auc_save"] <= 1.0 and metrics["hit3_save"] > 0, name
    # the synthetic labels depend on the features: the learned baselines beat per-pin popularity on AUC
    assert m["GBDT (LightGBM)"]["auc_save"] > m["popularity (per-pin rate)"]["auc_save"]
    assert m["logistic regression"]["auc_save"] > m["popularity (per-pin rate)"]["auc_save"]


def test_eval_ranker_rejects_unknown_experiments_before_training(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="unknown experiment 'ranker_nope'"):
        ranker_eval.evaluate(["ranker_mlp_tiny", "ranker_nope"], tiny_data, tmp_path)
    with pytest.raises(ConfigError, match="is a pinsage experiment"):
        ranker_eval.evaluate(["pinsage_tiny"], tiny_data, tmp_path)
    with pytest.raises(ConfigError, match="--seeds"):
        ranker_eval.evaluate(["ranker_mlp_tiny"], tiny_data, tmp_path, seeds="two")
    assert not (tmp_path / "runs").exists()


def test_a_child_that_dies_without_reporting_is_an_error_not_a_hang():
    """train_isolated's wait: a spawned child that exits before reporting (here os._exit(3), as a SIGKILL or an
    out-of-memory kill would) raises naming the exit code instead of blocking on the queue forever."""
    import multiprocessing as mp
    import os

    from components.evaluation.ranker import wait_for_child

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=os._exit, args=(3,))
    proc.start()
    with pytest.raises(RuntimeError, match="exited with code 3 before reporting"):
        wait_for_child(proc, queue, "probe", poll_s=0.2)
    proc.join()


def test_early_stopping_on_the_validation_period_publishes_the_best_weights(tiny_data, tmp_path):
    """patience > 0 and the protocol's 'val' period: HIT@3/save validated every 2 steps, the best weights are the
    published model (its val-period HIT@3/save is the best logged value), and the run stops once patience is
    spent; without a period nothing is validated."""
    cfg = config.load("ranker_mlp_tiny", {"patience": 1, "val_every": 2, "epochs": 3, "log_every": 10_000},
                      model="ranker")
    m = train(cfg, tiny_data, tmp_path / "m", val_period=period_bounds(tiny_data, "val"))
    log = [json.loads(line) for line in (tmp_path / "m" / "train_log.jsonl").read_text().splitlines()]
    vals = [r for r in log if r["event"] == "validate"]
    assert vals and m["validations"] == len(vals) and all(r["metric"] == "val_hit3_save" for r in vals)
    best = max(r["value"] for r in vals)
    assert m["best_val_hit3_save"] == best and m["best_step"] == next(r["step"] for r in vals if r["value"] == best)
    assert ranker_eval.ranker_period_metrics(tmp_path / "m", tiny_data, "val")["hit3_save"] == pytest.approx(best)
    full_steps = 3 * -(-m["rows_train"] // cfg.batch_size)
    assert m["stopped_early"] == (m["steps"] < full_steps)
    plain = train(cfg, tiny_data, tmp_path / "plain")  # no period: no validation, every epoch
    assert "best_step" not in plain and plain["steps"] == full_steps


def test_one_seed_records_the_readme_orderings_and_merge_recomputes_them(tiny_data, tmp_path):
    """One seed per command: each result records the README's orderings (final > its non-PEPNet twin, > every other
    model, > LightGBM, > LR; every model > popularity; HIT@3/save and AUC(save)) as "undefined", and `eval merge`
    of two one-seed results gives the same orderings paired over both seeds without any --ordering flag."""
    exps = ["ranker_dcnv2_baseline_tiny", "ranker_masknet_dcnv2_tiny", "ranker_masknet_dcnv2_pepnet_tiny"]
    final, twin, other = exps[2], exps[1], exps[0]
    pop, lr, gbdt = ranker_eval.BASELINES
    expected = {(final, twin), (final, other), (final, gbdt), (final, lr), *((m, pop) for m in exps)}
    outs = []
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        assert cli_main(["eval", "ranker", "--experiments", ",".join(exps), "--seeds", str(seed), "--data",
                         str(tiny_data), "--out", str(out), "--set", "max_steps=3", "--set", "max_train_rows=3000"]) == 0
        [r] = read_results(out)
        got = {(c.better, c.worse, c.metric): c for c in r.comparisons}
        assert set(got) == {(b, w, m) for b, w in expected for m in ("hit3_save", "auc_save")}
        assert all(c.verdict == "undefined" and c.n == 1 for c in got.values())
        outs.append(out / "ranker_synthetic.json")
    merged_dir = tmp_path / "merged"
    assert cli_main(["eval", "merge", *map(str, outs), "--out", str(merged_dir)]) == 0
    [m] = read_results(merged_dir)
    got = {(c.better, c.worse, c.metric): c for c in m.comparisons}
    assert set(got) == {(b, w, k) for b, w in expected for k in ("hit3_save", "auc_save")}
    assert all(c.n == 2 and c.verdict in ("holds", "not significant", "reversed") for c in got.values())
    c = got[(final, gbdt, "auc_save")]  # the paired difference is the mean of the two seeds' differences
    diffs = [m.values(final, "auc_save")[s] - m.values(gbdt, "auc_save")[s] for s in (0, 1)]
    assert c.diff_mean == pytest.approx(sum(diffs) / 2)
    assert ranker_eval.orderings(["ranker_mlp_tiny", "ranker_dcnv2_lowrank_pepnet_tiny"]) == []  # no twin, no baseline


def test_early_stopping_on_val_auc_save_is_recorded_in_the_protocol(tiny_data, tmp_path, capsys):
    """val_metric=auc_save: the harness's run validates AUC(save) on the 'val' period (its train log's validate
    events are val_auc_save), the protocol says so per experiment, and `eval merge` refuses to join it with a
    result early-stopped on HIT@3/save (the default's protocol text, unchanged so older results still merge)."""
    sets = {"patience": 1, "val_every": 2, "max_steps": 4, "max_train_rows": 3000, "log_every": 10_000,
            "val_metric": "auc_save"}
    out = tmp_path / "auc"
    r = ranker_eval.evaluate(["ranker_mlp_tiny"], tiny_data, out, seeds=[0], overrides=sets, baselines=False)
    text = r.protocol["early stopping"]["ranker_mlp_tiny"]
    assert text.startswith("AUC(save) (val_metric auc_save) on the 'val' period every 2 steps, patience 1")
    log = (out / "runs" / "ranker_synthetic" / "ranker_mlp_tiny" / "seed-0" / "train_log.jsonl").read_text()
    vals = [x for x in map(json.loads, log.splitlines()) if x["event"] == "validate"]
    assert vals and all(x["metric"] == "val_auc_save" for x in vals)
    default = config.load("ranker_mlp_tiny", {**sets, "val_metric": "hit3_save"}, model="ranker")
    assert ranker_eval._val_metric_text(default) == "HIT@3/save"
    other = json.loads((out / "ranker_synthetic.json").read_text())
    other["protocol"]["early stopping"]["ranker_mlp_tiny"] = text.replace("AUC(save) (val_metric auc_save)", "HIT@3/save")
    (tmp_path / "hit").mkdir()
    (tmp_path / "hit" / "ranker_synthetic.json").write_text(json.dumps(other))
    capsys.readouterr()
    assert cli_main(["eval", "merge", str(out / "ranker_synthetic.json"), str(tmp_path / "hit" / "ranker_synthetic.json"),
                     "--out", str(tmp_path / "merged")]) == 2
    assert "early stopping" in capsys.readouterr().err
