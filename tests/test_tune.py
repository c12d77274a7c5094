"""``homefeed tune``: Optuna trials scored on the validation period only (a copy of the data without its
test period gives the very same trials), the best parameters as a YAML experiment, and a Katib Experiment
built from the same search space that validates offline."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from components import config
from components.cli import main as cli_main
from components.evaluation import tuning
from components.evaluation.katib import KatibValidationError, build_experiment, validate_experiment
from components.evaluation.protocol import period_bounds
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
    assert json.loads((tmp_path / "a" / "pinsage_trials.json").read_text())["trials"] == 2
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
    line = capsys.readouterr().out.strip().splitlines()[-1]
    name, value = (part.strip() for part in line.split("="))  # Katib's stdout collector allows spaces around
    assert name == "mrr" and 0.0 < float(value) <= 1.0
