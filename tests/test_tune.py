"""``homefeed tune``: Optuna trials scored on the validation period only (a copy of the data without its
test period gives the very same trials), the best parameters as a YAML experiment, and a Katib Experiment
built from the same search space that validates offline."""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime, timedelta

import optuna
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from components import config
from components.cli import main as cli_main
from components.evaluation import tuning
from components.evaluation.katib import KatibValidationError, build_experiment, validate_experiment
from components.evaluation.protocol import period_bounds
from components.evaluation.ranker import ranker_period_metrics
from components.evaluation.search_space import OBJECTIVE, SPACES

# patience 1: trials stop early on the validation period as the harness does (the *_eval experiments' path)
TINY = {"max_steps": 3, "epochs": 1, "log_every": 1000, "walks_per_node": 10, "eval_max_queries": 200, "patience": 1}


def _without_test_period(src, dst):
    """A copy of a data directory whose events stop where the test period starts."""
    shutil.copytree(src, dst)
    start, _ = period_bounds(src, "test")
    for part in sorted((dst / "events").glob("dt=*/*.parquet")):
        t = pq.read_table(part)
        keep = t.filter(pa.array(t.column("timestamp").to_numpy() < start))
        if keep.num_rows == 0:
            shutil.rmtree(part.parent)
        else:
            pq.write_table(keep, part)
    return dst


def test_tune_two_trials_never_reads_the_test_period(tiny_data, tmp_path):
    a = tuning.tune("pinsage", tiny_data, tmp_path / "a", "pinsage_tiny", trials=2, overrides=TINY)
    cut = _without_test_period(tiny_data, tmp_path / "cut")
    b = tuning.tune("pinsage", cut, tmp_path / "b", "pinsage_tiny", trials=2, overrides=TINY)
    assert len(a["records"]) == 2 and [r["params"] for r in a["records"]] == [r["params"] for r in b["records"]]
    # the same validation scores with or without the test-period events: tuning never looked at them
    assert [r["mrr"] for r in a["records"]] == [r["mrr"] for r in b["records"]]
    assert a["records"][0]["params"] != a["records"][1]["params"]
    # trial 0 is the experiment as configured: a small budget never ends below it
    assert a["records"][0]["params"] == tuning.current_params(config.load("pinsage_tiny", TINY, model="pinsage"),
                                                               SPACES["pinsage"])
    assert a["best_value"] >= a["records"][0]["mrr"]
    # each trial validated on the 'val' period (early stopping): its model folder has the best weights
    assert (tmp_path / "a" / "trials" / "pinsage-0" / "model" / "best.pt").exists()
    tuned = yaml.safe_load((tmp_path / "a" / "pinsage_tiny_tuned.yaml").read_text())
    assert tuned["pinsage_tiny_tuned"]["extends"] == "pinsage_tiny"
    assert {p.name for p in SPACES["pinsage"]} <= set(tuned["pinsage_tiny_tuned"])
    assert tuned["pinsage_tiny_tuned"]["lr"] == a["best_params"]["lr"]
    written = json.loads((tmp_path / "a" / "pinsage_trials.json").read_text())
    assert written["trials"] == 2
    assert written["pruning"] == "MedianPruner(n_startup_trials=5, n_warmup_steps=2) on each validation; trial 0 never pruned"
    validate_experiment(yaml.safe_load((tmp_path / "a" / "pinsage_katib.yaml").read_text()))


@pytest.mark.parametrize("model", sorted(SPACES))
def test_katib_experiment_from_the_same_space_validates(model, tmp_path):
    assert cli_main(["tune", model, "--katib", "--out", str(tmp_path), "--trials", "7"]) == 0
    m = validate_experiment(yaml.safe_load((tmp_path / f"{model}_katib.yaml").read_text()))
    spec = m["spec"]
    assert spec["maxTrialCount"] == 7 and spec["objective"]["objectiveMetricName"] == OBJECTIVE[model]
    assert [p["name"] for p in spec["parameters"]] == [p.name for p in SPACES[model]]
    command = spec["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:4] == ["homefeed", "tune", model, "--trial"]
    assert all(f"{p.name}=${{trialParameters.{p.name}}}" in command for p in SPACES[model])
    for p in SPACES[model]:  # the space is valid for the model's config
        config.load(tuning.DEFAULT_EXPERIMENT[model], {p.name: p.low if p.kind != "int" else int(p.low)}, model=model)


def test_katib_validation_rejects_bad_manifests():
    good = build_experiment("pinsage", "pinsage_eval", 5)
    bad = json.loads(json.dumps(good))
    bad["spec"]["parameters"][0]["parameterType"] = "float"
    with pytest.raises(KatibValidationError, match="parameterType|float"):
        validate_experiment(bad)
    bad = json.loads(json.dumps(good))
    bad["spec"]["maxTrials"] = 5
    with pytest.raises(KatibValidationError, match="maxTrials"):
        validate_experiment(bad)
    bad = json.loads(json.dumps(good))
    bad["spec"]["trialTemplate"]["trialParameters"][0]["reference"] = "nope"
    with pytest.raises(KatibValidationError, match="nope"):
        validate_experiment(bad)
    bad = json.loads(json.dumps(good))
    bad["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(KatibValidationError, match="trial Job"):
        validate_experiment(bad)


def test_one_trial_prints_the_validation_metric_for_katib(tiny_data, capsys):
    args = ["tune", "pinsage", "--trial", "--experiment", "pinsage_tiny", "--data", str(tiny_data), "--set", "lr=0.002"]
    args += [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    stamp, name, value = _katib_line(out.strip().splitlines()[-1], out)
    assert name == "mrr" and 0.0 < float(value) <= 1.0
    # TINY validates once (patience 1, one epoch): that value, then the best weights' score, the same weights
    values = _katib_lines(out, "mrr")
    assert len(values) == 2 and float(values[0][2]) == pytest.approx(float(value), abs=2e-6)


def _katib_lines(out, name):
    """(time, name, value) of every line of stdout ``out`` that reports ``name``, each parsed as Katib's StdOut
    collector reads it: an RFC 3339 first word (the observation's time), then name=value (its default filter). A
    line that does not parse fails with the whole output, so that a failure elsewhere (CI) says what was printed."""
    return [_katib_line(x, out) for x in out.strip().splitlines() if f"{name}=" in x]


def _katib_line(line, out=""):
    stamp, _, rest = line.partition(" ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp), f"{line!r} in stdout:\n{out}"
    assert abs(datetime.now(UTC) - datetime.fromisoformat(stamp)) < timedelta(hours=1), line  # this run's time
    m = re.fullmatch(r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)", rest.strip())
    assert m, f"{line!r} in stdout:\n{out}"
    return stamp, m.group(1), m.group(2)


# ranker trials that validate every step (patience > 0, as the *_eval experiments): 4 validations when not pruned
RANKER = {"patience": 5, "val_every": 1, "max_steps": 4, "max_train_rows": 3000, "log_every": 1000}


def test_pruning_stops_a_trial_at_its_first_report_and_never_trial_0(tiny_data, tmp_path):
    """A pruner that prunes every report (ThresholdPruner above any HIT@3/save) stops trial 1 at its first
    validation, while trial 0 (the config's own values) reports the same way and runs to its end; the pruned
    trial is recorded with its last value, where it stopped and its seconds. Trial 0 is a ranker trial of an
    experiment with patience > 0: it validates on the 'val' period and keeps its best weights."""
    out = tmp_path / "t"
    s = tuning.tune("ranker", tiny_data, out, "ranker_tiny", trials=2, overrides=RANKER,
                    pruner=optuna.pruners.ThresholdPruner(lower=10.0))
    first, second = s["records"]
    assert first["pruned"] is False and first["validations"] == 4 and first["seconds"] > 0
    assert second["pruned"] is True and second["stopped_at_validation"] == 0 and second["validations"] == 1
    assert second["seconds"] > 0 and 0 <= second["hit3_save"] <= 3
    assert s["pruned"] == 1 and s["best_value"] == first["hit3_save"] and "ThresholdPruner" in s["pruning"]
    logs = {n: [json.loads(x) for x in (out / "trials" / f"ranker-{n}" / "model" / "train_log.jsonl").read_text().splitlines()]
            for n in (0, 1)}
    val0 = [r for r in logs[0] if r["event"] == "validate"]
    val1 = [r for r in logs[1] if r["event"] == "validate"]
    assert [r["step"] for r in val0] == [1, 2, 3, 4] and all(r["metric"] == "val_hit3_save" for r in val0)
    assert [r["step"] for r in val1] == [1] and val1[0]["stopped_by_report"] is True
    assert second["hit3_save"] == pytest.approx(val1[0]["value"])  # the last reported value
    m0 = json.loads((out / "trials" / "ranker-0" / "model" / "metrics.json").read_text())
    m1 = json.loads((out / "trials" / "ranker-1" / "model" / "metrics.json").read_text())
    assert m0["steps"] == 4 and m0["validations"] == 4 and m0["stopped_by_report"] is False and "best_step" in m0
    assert m1["steps"] == 1 and m1["stopped_by_report"] is True
    # the trial's score is its best validated weights' HIT@3/save on the 'val' period
    assert first["hit3_save"] == pytest.approx(m0["best_val_hit3_save"])


def test_the_default_pruner_and_katibs_medianstop_share_their_settings(tmp_path):
    p = tuning.default_pruner()
    assert isinstance(p, optuna.pruners.MedianPruner)
    assert (p._n_startup_trials, p._n_warmup_steps) == (tuning.PRUNE_STARTUP_TRIALS, tuning.PRUNE_WARMUP_VALIDATIONS)
    assert cli_main(["tune", "ranker", "--katib", "--out", str(tmp_path)]) == 0
    spec = validate_experiment(yaml.safe_load((tmp_path / "ranker_katib.yaml").read_text()))["spec"]
    settings = {s["name"]: int(s["value"]) for s in spec["earlyStopping"]["algorithmSettings"]}
    assert spec["earlyStopping"]["algorithmName"] == "medianstop"
    # Katib counts reported values from 1 and stops from the start_step-th; Optuna's warm-up skips indices < 2
    assert settings == {"min_trials_required": tuning.PRUNE_STARTUP_TRIALS,
                        "start_step": tuning.PRUNE_WARMUP_VALIDATIONS + 1}
    assert spec["objective"]["metricStrategies"] == [{"name": "hit3_save", "value": "latest"}]
    assert spec["metricsCollectorSpec"]["collector"]["kind"] == "StdOut"
    assert cli_main(["tune", "ranker", "--katib", "--no-prune", "--out", str(tmp_path / "np")]) == 0
    spec = validate_experiment(yaml.safe_load((tmp_path / "np" / "ranker_katib.yaml").read_text()))["spec"]
    assert "earlyStopping" not in spec
    assert "--no-prune" in spec["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["command"]


def test_katib_early_stopping_is_validated_as_katib_does():
    good = build_experiment("ranker", "ranker_eval", 5, early_stopping=tuning.katib_early_stopping())
    validate_experiment(good)
    for setting, value, match in (("start_step", "0", "start_step"), ("min_trials_required", "x", "min_trials"),
                                  ("grace", "1", "unknown setting")):
        bad = json.loads(json.dumps(good))
        bad["spec"]["earlyStopping"]["algorithmSettings"] = [{"name": setting, "value": value}]
        with pytest.raises(KatibValidationError, match=match):
            validate_experiment(bad)
    bad = json.loads(json.dumps(good))
    bad["spec"]["earlyStopping"]["algorithmName"] = "hyperband"
    with pytest.raises(KatibValidationError, match="algorithmName|hyperband"):
        validate_experiment(bad)
    bad = json.loads(json.dumps(good))
    bad["spec"]["metricsCollectorSpec"]["collector"]["kind"] = "PrometheusMetric"
    with pytest.raises(KatibValidationError, match="StdOut or File"):
        validate_experiment(bad)
    bad = json.loads(json.dumps(good))
    bad["spec"]["objective"]["metricStrategies"][0]["value"] = "median"
    with pytest.raises(KatibValidationError, match="median"):
        validate_experiment(bad)


def test_a_ranker_trial_prints_each_validation_for_katib_and_no_prune_only_the_last(tiny_data, capsys):
    base = ["tune", "ranker", "--trial", "--experiment", "ranker_tiny", "--data", str(tiny_data)]
    base += [x for k, v in RANKER.items() for x in ("--set", f"{k}={v}")]
    assert cli_main(base) == 0
    lines = _katib_lines(capsys.readouterr().out, "hit3_save")
    assert len(lines) == 4 + 1 and all(name == "hit3_save" for _, name, _ in lines)
    assert [t for t, _, _ in lines] == sorted(t for t, _, _ in lines)  # in time order, as medianstop needs
    # the last line (Katib's objective, metricStrategies latest) is the best validated weights' score
    assert float(lines[-1][2]) == pytest.approx(max(float(v) for _, _, v in lines[:-1]), abs=2e-6)
    assert cli_main([*base, "--no-prune"]) == 0
    lines = [x for x in capsys.readouterr().out.strip().splitlines() if "hit3_save=" in x]
    assert len(lines) == 1


# the ranker's validation metric (val_metric): AUC(save) instead of HIT@3/save for early stopping and the study
AUC = {"patience": 1, "val_every": 1, "max_steps": 3, "max_train_rows": 3000, "log_every": 1000,
       "val_metric": "auc_save"}


def test_a_bad_val_metric_is_a_config_error_and_hit3_save_without_save_is_auc_of_the_first_task(tmp_path, capsys):
    rc = cli_main(["tune", "ranker", "--katib", "--experiment", "ranker_tiny", "--set", "val_metric=ndcg",
                   "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "val_metric" in err and "'ndcg'" in err and "hit3_save" in err and "auc_save" in err
    assert not (tmp_path / "ranker_katib.yaml").exists()
    # auc_<task> only for a configured task; the default hit3_save without a save task validates auc_<first task>
    no_save = {"tasks": ["click", "hide"], "task_weights": [1.0, 1.0], "score_weights": [1.0, -1.0]}
    with pytest.raises(config.ConfigError, match="val_metric.*auc_click, auc_hide, got 'auc_save'"):
        config.load("ranker_tiny", {**no_save, "val_metric": "auc_save"}, model="ranker")
    assert config.load("ranker_tiny", no_save, model="ranker").validation_metric() == "auc_click"
    assert config.load("ranker_tiny", {}, model="ranker").validation_metric() == "hit3_save"


def test_tune_ranker_on_auc_save_scores_each_trial_with_its_models_val_auc(tiny_data, tmp_path):
    """val_metric=auc_save: every trial early-stops on val AUC(save) (its train log's validate events), the study's
    objective is the trial model's AUC(save) on the 'val' period, and trials.json and the manifest name it."""
    out = tmp_path / "t"
    s = tuning.tune("ranker", tiny_data, out, "ranker_tiny", trials=2, overrides=AUC)
    assert s["objective_metric"] == "auc_save" and s["objective"].startswith("auc_save ")
    assert len(s["records"]) == 2
    for r in s["records"]:
        model_dir = out / "trials" / f"ranker-{r['trial']}" / "model"
        assert "hit3_save" not in r and 0.0 < r["auc_save"] < 1.0
        assert r["auc_save"] == ranker_period_metrics(model_dir, tiny_data, "val")["auc_save"]
        log = [json.loads(x) for x in (model_dir / "train_log.jsonl").read_text().splitlines()]
        vals = [x for x in log if x["event"] == "validate"]
        assert vals and all(x["metric"] == "val_auc_save" for x in vals)
        # the best validated weights are the scored ones
        assert r["auc_save"] == pytest.approx(json.loads((model_dir / "metrics.json").read_text())["best_val_auc_save"])
    assert s["best_value"] == max(r["auc_save"] for r in s["records"])
    spec = validate_experiment(yaml.safe_load((out / "ranker_katib.yaml").read_text()))["spec"]
    assert spec["objective"]["objectiveMetricName"] == "auc_save"


def test_the_katib_manifest_of_an_auc_save_experiment_names_it_and_its_trial_prints_it(tiny_data, tmp_path, capsys):
    """`tune ranker --katib` takes the objective from the experiment's config (val_metric, with the fixed --set
    values, which the trial command carries); the manifest validates, and its trial command, run here with the
    tiny data, prints Katib lines of that metric."""
    sets = [x for k, v in AUC.items() for x in ("--set", f"{k}={v}")]
    assert cli_main(["tune", "ranker", "--katib", "--experiment", "ranker_tiny", *sets, "--out", str(tmp_path)]) == 0
    m = validate_experiment(yaml.safe_load((tmp_path / "ranker_katib.yaml").read_text()))
    assert m["spec"]["objective"]["objectiveMetricName"] == "auc_save"
    assert m["spec"]["objective"]["metricStrategies"] == [{"name": "auc_save", "value": "latest"}]
    command = m["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "val_metric=auc_save" in command
    values = {"lr": "0.002", "weight_decay": "0.0001", "dropout": "0.1"}  # what Katib substitutes
    trial = [re.sub(r"\$\{trialParameters\.(\w+)\}", lambda g: values[g.group(1)], x) for x in command[1:]]
    trial[trial.index("--data") + 1] = str(tiny_data)
    capsys.readouterr()
    assert cli_main(trial) == 0
    lines = _katib_lines(capsys.readouterr().out, "auc_save")
    # each validation's value, then the best weights' score, all named as the objective
    assert len(lines) >= 2 and all(name == "auc_save" for _, name, _ in lines)
    assert float(lines[-1][2]) == pytest.approx(max(float(v) for _, _, v in lines[:-1]), abs=2e-6)
    # pinsage keeps its own objective
    assert build_experiment("pinsage", "pinsage_eval", 5)["spec"]["objective"]["objectiveMetricName"] == OBJECTIVE["pinsage"]


def test_trial_seeds_score_each_trial_by_the_mean_of_its_trainings(tiny_data, tmp_path):
    """--trial-seeds 0,1: every trial trains once per seed and scores their mean; the first seed's training is the
    one a single-seed study runs (same value), and the Katib trial command carries the seeds."""
    one = tuning.tune("pinsage", tiny_data, tmp_path / "one", "pinsage_tiny", trials=1, overrides=TINY)
    two = tuning.tune("pinsage", tiny_data, tmp_path / "two", "pinsage_tiny", trials=2, overrides=TINY,
                      trial_seeds=[0, 1])
    assert two["trial_seeds"] == [0, 1] and one["trial_seeds"] == [0]
    for r in two["records"]:
        assert set(r["per_seed"]) == {"0", "1"} and r["mrr"] == pytest.approx(sum(r["per_seed"].values()) / 2)
        assert (tmp_path / "two" / "trials" / f"pinsage-{r['trial']}" / "seed-1" / "model").is_dir()
    assert two["records"][0]["per_seed"]["0"] == one["records"][0]["mrr"]  # trial 0, seed 0: the same training
    assert two["records"][0]["per_seed"]["0"] != two["records"][0]["per_seed"]["1"]  # two real trainings
    manifest = yaml.safe_load((tmp_path / "two" / "pinsage_katib.yaml").read_text())
    command = manifest["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--trial-seeds") + 1] == "0,1"
    validate_experiment(manifest)
    assert "--trial-seeds" not in yaml.safe_load((tmp_path / "one" / "pinsage_katib.yaml").read_text())["spec"][
        "trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["command"]


def test_trial_with_two_seeds_prints_their_mean_last_and_bad_seeds_exit_2(tiny_data, tmp_path, capsys):
    argv = ["tune", "pinsage", "--trial", "--experiment", "pinsage_tiny", "--data", str(tiny_data),
            *[f"--set={k}={v}" for k, v in TINY.items()]]
    values = []
    for seeds in ("0", "1", "0,1"):
        assert cli_main([*argv, "--trial-seeds", seeds]) == 0
        values.append(float(capsys.readouterr().out.strip().splitlines()[-1].split("mrr=")[1]))
    assert values[2] == pytest.approx((values[0] + values[1]) / 2, abs=1e-6)  # printed with 6 decimals
    assert cli_main([*argv, "--trial-seeds", "0,x"]) == 2
    err = capsys.readouterr().err
    assert "--trial-seeds" in err and "0,x" in err and "Traceback" not in err
