"""The configuration system: experiments with ``extends``, ``--set`` overrides, clear errors naming the
key, and the resolved config saved beside an artifact and read back."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from components import config
from components.config import ConfigError, DataConfig, PinSageConfig, RankerConfig


@pytest.fixture
def configs(tmp_path, monkeypatch):
    """A private experiments folder (the real one is not touched)."""
    monkeypatch.setattr(config, "CONFIG_DIR", tmp_path)

    def write(model: str, body: dict) -> None:
        (tmp_path / f"{model}.yaml").write_text(yaml.safe_dump(body))

    return write


def test_every_shipped_experiment_resolves():
    table = config.experiments()
    assert table, "no experiments found"
    for name, (model, _) in table.items():
        cfg = config.load(name)
        assert isinstance(cfg, config.MODEL_CONFIGS[model]), name
    for model in ("pinsage", "pinnerformer", "ranker"):
        assert f"{model}_tiny" in table and table[f"{model}_tiny"][0] == model  # a CI-sized experiment each
    assert config.load("synthetic_tiny").users == 300


def test_extends_chain_and_precedence(configs):
    configs("pinsage", {
        "base": {"epochs": 7, "lr": 0.01, "hidden_dim": 32},
        "mid": {"extends": "base", "lr": 0.02},
        "leaf": {"extends": "mid", "hidden_dim": 8},
    })
    cfg = config.load("leaf")
    assert isinstance(cfg, PinSageConfig)
    assert (cfg.epochs, cfg.lr, cfg.hidden_dim) == (7, 0.02, 8)
    assert cfg.embed_dim == PinSageConfig().embed_dim  # untouched fields keep the dataclass default
    assert config.load("leaf", ["epochs=1"]).epochs == 1  # overrides beat every level


def test_extends_errors(configs):
    configs("pinsage", {"a": {"extends": "b"}, "b": {"extends": "a"}, "c": {"extends": "nope"},
                        "d": {"extends": "r"}})
    configs("ranker", {"r": {"arch": "mlp"}})
    with pytest.raises(ConfigError, match="experiment 'a' extends itself: a -> b -> a"):
        config.load("a")
    with pytest.raises(ConfigError, match="unknown experiment 'nope'"):
        config.load("c")
    with pytest.raises(ConfigError, match="experiment 'd' \\(pinsage\\) extends 'r' of another model"):
        config.load("d")


def test_duplicate_experiment_names_across_files(configs):
    configs("pinsage", {"same": {}})
    configs("ranker", {"same": {}})
    with pytest.raises(ConfigError, match="experiment 'same' defined twice"):
        config.experiments()


def test_unknown_model_file_and_bad_yaml(configs, tmp_path):
    configs("notamodel", {"x": {}})
    with pytest.raises(ConfigError, match="notamodel.yaml: no config dataclass for model 'notamodel'"):
        config.experiments()
    (tmp_path / "notamodel.yaml").unlink()
    (tmp_path / "ranker.yaml").write_text("r: [unclosed\n")
    with pytest.raises(ConfigError, match="ranker.yaml: not valid YAML"):
        config.experiments()


def test_overrides_parse_and_apply():
    cfg = config.load("ranker_tiny", ["lr=0.5", "ranker.epochs=2", "tasks=[save, click]", "pepnet=false",
                                      "task_weights=[1, 2]", "score_weights=[1, -1]", "arch=dcnv2_baseline"])
    assert isinstance(cfg, RankerConfig)
    assert cfg.lr == 0.5 and cfg.epochs == 2 and cfg.pepnet is False and cfg.arch == "dcnv2_baseline"
    assert cfg.tasks == ["save", "click"]
    assert cfg.task_weights == [1.0, 2.0] and all(isinstance(w, float) for w in cfg.task_weights)
    # dict overrides (what the Kubeflow steps pass) are the same thing
    assert config.load("ranker_tiny", {"lr": 0.5}).lr == 0.5


@pytest.mark.parametrize("override, message", [
    ("no_such_knob=1", "unknown key 'no_such_knob' for RankerConfig; known keys: .*arch"),
    ("epochs=three", "key 'epochs' expects an int, got 'three'"),
    ("epochs=1.5", "key 'epochs' expects an int, got 1.5"),
    ("epochs=true", "key 'epochs' expects an int, got True"),
    ("pepnet=1", "key 'pepnet' expects a bool \\(true/false\\), got 1"),
    ("lr=fast", "key 'lr' expects a float, got 'fast'"),
    ("tasks=save", "key 'tasks' expects a list of str, got 'save'"),
    ("tasks=[save, 3]", "key 'tasks\\[1\\]' expects a string, got 3"),
    ("arch=[1]", "key 'arch' expects one of mlp, dcnv2_baseline, .*, got \\[1\\]"),
    ("arch=dcn", "key 'arch' expects one of mlp, .*dhen, got 'dcn'"),
    ("lr=-1", "key 'lr' expects float > 0, got -1.0"),
    ("weight_decay=.nan", "key 'weight_decay' expects float >= 0, got nan"),
    ("lr=.inf", "key 'lr' expects float > 0, got inf"),
    ("epochs=-3", "key 'epochs' expects int >= 1, got -3"),
    ("batch_size=0", "key 'batch_size' expects int >= 1, got 0"),
    ("dropout=5.0", "key 'dropout' expects float >= 0 and < 1, got 5.0"),
    ("checkpoint_every=-1", "key 'checkpoint_every' expects int >= 0, got -1"),
    ("task_weights=[1, 2]", "keys 'task_weights' \\(2\\) and 'score_weights' \\(4\\) must have one value per task"),
    ("lr", "override 'lr' is not of the form key=value"),
    ("lr=[unclosed", "override 'lr=\\[unclosed': value is not valid YAML"),
])
def test_override_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        config.load("ranker_tiny", [override])


def test_yaml_errors_name_the_experiment_and_key(configs):
    configs("data", {"bad_type": {"users": "many"}, "bad_key": {"userz": 3}})
    with pytest.raises(ConfigError, match="experiment 'bad_type': key 'users' expects an int, got 'many'"):
        config.load("bad_type")
    with pytest.raises(ConfigError, match="experiment 'bad_key': unknown key 'userz' for DataConfig"):
        config.load("bad_key")


def test_experiment_of_another_model():
    with pytest.raises(ConfigError, match="experiment 'synthetic_tiny' is a data experiment, expected a ranker one"):
        config.load("synthetic_tiny", model="ranker")
    with pytest.raises(ConfigError, match="unknown experiment 'nope'; known: .*synthetic_tiny"):
        config.load("nope")


def test_saved_config_round_trip(tmp_path):
    for name, overrides in [("ranker_tiny", ["tasks=[save, hide]", "task_weights=[1, 1]", "score_weights=[1, -1]", "lr=0.25"]), ("pinsage_tiny", ["epochs=9"]),
                            ("synthetic_tiny", ["seed=4"]), ("pinnerformer_tiny", [])]:
        cfg = config.load(name, overrides)
        out = tmp_path / name
        out.mkdir()
        path = config.save(cfg, out)
        assert path == out / "config.yaml" and not list(out.glob("*.tmp"))
        saved = yaml.safe_load(path.read_text())
        assert saved["model"] == config.model_of(name) and saved["experiment"] == name
        back = config.read_saved(out)
        assert type(back) is type(cfg) and dataclasses.asdict(back) == dataclasses.asdict(cfg)
        assert back.experiment == name


def test_read_saved_rejects_tampered_files(tmp_path):
    path = config.save(config.load("synthetic_tiny"), tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["users"] = "lots"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="config.yaml: key 'users' expects an int"):
        config.read_saved(tmp_path)


def test_defaults_are_flat_dataclasses():
    for cls in config.MODEL_CONFIGS.values():
        for f in dataclasses.fields(cls):
            assert not dataclasses.is_dataclass(f.type), f"{cls.__name__}.{f.name} nests a dataclass"
    assert DataConfig().dataset == "ml-100k"


def test_choices_and_ranges_are_checked_however_a_config_is_made():
    for experiment, override, message in [
        ("pinnerformer_tiny", "objective=next", "key 'objective' expects one of next_action, all_action, "
                                                "dense_all_action, got 'next'"),
        ("pinnerformer_tiny", "eval_at=later", "key 'eval_at' expects one of split, user"),
        ("pinnerformer_tiny", "num_heads=3", "PinnerFormerConfig: key 'd_model' \\(32\\) must be divisible by 'num_heads' \\(3\\)"),
        ("pinsage_tiny", "pooling=max", "key 'pooling' expects one of importance, mean, got 'max'"),
        ("pinsage_tiny", "hard_negative_band=[0.5, 0.1]", "PinSageConfig: key 'hard_negative_band' expects \\[lo, hi\\]"),
        ("synthetic_tiny", "dataset=imdb", "key 'dataset' expects one of ml-100k, synthetic, got 'imdb'"),
        ("synthetic_tiny", "board_purity=1.5", "key 'board_purity' expects float >= 0 and <= 1, got 1.5"),
    ]:
        with pytest.raises(ConfigError, match=f"experiment '{experiment}': {message}"):
            config.load(experiment, [override])
    cfg = config.load("pinsage_tiny")
    with pytest.raises(ConfigError, match="PinSageConfig: key 'lr' expects float > 0, got -2.0"):
        dataclasses.replace(cfg, lr=-2)
    with pytest.raises(ConfigError, match="RankerConfig: key 'arch' expects one of"):
        RankerConfig(arch="nope")


def test_the_experiment_name_is_a_field_that_replace_keeps(tmp_path):
    cfg = dataclasses.replace(config.load("pinnerformer_tiny"), pin_dim=12)
    assert cfg.experiment == "pinnerformer_tiny"
    assert yaml.safe_load(config.save(cfg, tmp_path).read_text())["experiment"] == "pinnerformer_tiny"
    assert config.read_saved(tmp_path).experiment == "pinnerformer_tiny"


def test_union_errors_say_why_each_alternative_failed():
    with pytest.raises(ConfigError, match="key 'x' expects .*got 'a' \\(key 'x' expects an int, got 'a'"):
        config.coerce("x", "a", int | None, "here")


def test_ranker_arch_choices_are_the_registry():
    import typing

    from components.models.ranker import ARCHS

    assert set(typing.get_args(config.RankerArch)) == set(ARCHS)
