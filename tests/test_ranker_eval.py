"""``homefeed eval ranker``: trains each experiment with several seeds in fresh processes and writes the
comparison (JSON, Markdown, PNG) with HIT@3/save, AUC per task, memory, latency, parameters and seed std."""

from __future__ import annotations

import json

import pytest

from components.cli import main as cli_main
from components.config import ConfigError
from components.training import ranker_eval


def test_eval_ranker_cli_writes_json_markdown_and_png(tiny_data, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = cli_main(["eval", "ranker", "--experiments", "ranker_mlp_tiny,ranker_dcnv2_lowrank_pepnet_tiny",
                   "--seeds", "2", "--data", str(tiny_data), "--out", str(out), "--set", "max_steps=4"])
    assert rc == 0
    result = json.loads((out / "ranker_synthetic.json").read_text())
    assert result["model"] == "ranker" and result["dataset"] == "synthetic" and result["seeds"] == 2
    assert "--experiments ranker_mlp_tiny,ranker_dcnv2_lowrank_pepnet_tiny" in result["command"]
    assert [r["experiment"] for r in result["rows"]] == ["ranker_mlp_tiny", "ranker_dcnv2_lowrank_pepnet_tiny"]
    assert len(result["runs"]) == 4 and {r["seed"] for r in result["runs"]} == {0, 1}
    for row in result["rows"]:
        for key in ("auc_save", "auc_closeup", "auc_click", "auc_hide"):
            assert 0.0 <= row[key] <= 1.0
        assert row["hit3_save_mean"] > 0 and row["hit3_save_std"] >= 0
        assert row["latency_ms_b512"] > 0 and row["latency_ms_b1"] > 0
        assert row["peak_rss_mb"] > 50 and row["parameters"] > 0
    # the two seeds are real, different trainings
    mlp_runs = [r for r in result["runs"] if r["experiment"] == "ranker_mlp_tiny"]
    assert mlp_runs[0]["auc_save"] != mlp_runs[1]["auc_save"]
    # the pepnet variant has more parameters than the plain MLP
    assert result["rows"][1]["parameters"] > result["rows"][0]["parameters"]
    md = (out / "ranker_synthetic.md").read_text()
    assert "| ranker_mlp_tiny | mlp | no |" in md and "HIT@3/save" in md
    assert (out / "ranker_synthetic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ranker_dcnv2_lowrank_pepnet_tiny" in capsys.readouterr().out


def test_eval_ranker_rejects_unknown_experiments_before_training(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="unknown experiment 'ranker_nope'"):
        ranker_eval.evaluate(["ranker_mlp_tiny", "ranker_nope"], tiny_data, tmp_path)
    with pytest.raises(ConfigError, match="is a pinsage experiment"):
        ranker_eval.evaluate(["pinsage_tiny"], tiny_data, tmp_path)
    assert not (tmp_path / "runs").exists()
