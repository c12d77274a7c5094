"""Configuration: flat dataclasses per model, YAML experiments, ``--set key=value`` overrides.

Config flows one way: an experiment name plus overrides -> :func:`load` -> a dataclass -> the
training/inference code. The CLI and the Kubeflow steps call the same :func:`load`.

Experiments live in ``components/configs/<model>.yaml`` as a mapping ``name -> {field: value}``;
an experiment may name another with ``extends:``. Every experiment name is unique across files, so
``load("pinsage_tiny")`` needs no model name. Unknown keys and wrong types are errors that name the
key, the experiment and what was expected.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A configuration problem, with a message that names the key and what was expected."""


# ----------------------------------------------------------------------------------------------
# Model configs: flat dataclasses. Only the top-level model / job reads these; layers take plain
# typed arguments.
# ----------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Data preparation (``homefeed data prepare``)."""

    dataset: str = "ml-100k"  # ml-100k | synthetic
    seed: int = 0
    # synthetic generator knobs
    users: int = 2_000
    pins: int = 5_000
    boards: int = 500
    topics: int = 20
    days: int = 60
    events_per_user: float = 40.0  # mean; per-user activity is log-normal around it
    interests_per_user: int = 3
    drift_prob: float = 0.5  # chance that one interest of a user is replaced mid-way
    feature_dim: int = 64
    feature_noise: float = 2.0  # higher -> content features say less about the topic
    board_purity: float = 0.85  # fraction of a board's pins from its own topic
    impressions_per_request: int = 12
    requests_per_user_day: float = 0.3
    eval_days: int = 14  # the last days are held out for evaluation


@dataclass
class PinSageConfig:
    """PinSage (arXiv 1806.01973): graph sampling, model and training knobs."""

    # graph sampling
    walks_per_node: int = 200
    walk_length: int = 2  # pin->board->pin hops per walk (each hop is two half-steps)
    restart_prob: float = 0.5
    num_neighbors: int = 10  # T: top-T visited pins are the neighbourhood
    use_engagement_edges: bool = False
    # model
    feature_dim: int = 64  # input content features (set from data)
    hidden_dim: int = 128
    embed_dim: int = 64
    num_layers: int = 2  # K
    pooling: str = "importance"  # importance | mean
    # training
    seed: int = 0
    epochs: int = 3
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    margin: float = 0.1
    num_negatives: int = 500  # shared by the whole minibatch
    hard_negatives: bool = True
    hard_negative_band: list[float] = field(default_factory=lambda: [0.02, 0.05])  # PPR rank band
    max_steps: int = 0  # 0 = all epochs
    num_workers: int = 2
    prefetch_factor: int = 2
    checkpoint_every: int = 100
    log_every: int = 20
    pair_window_s: int = 86_400  # co-engagement window for related pairs
    board_pairs: bool = True  # also pair pins saved to the same board
    inference_chunk: int = 4096
    eval_pool: int = 5000  # candidate pins per held-out query (all pins when the corpus is smaller)
    eval_max_queries: int = 2000


@dataclass
class PinnerFormerConfig:
    """PinnerFormer (arXiv 2205.04507): sequence model, objectives and sampling knobs."""

    pin_dim: int = 64  # PinSage embedding size (set from data)
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    dropout: float = 0.1
    embed_dim: int = 64
    time_periods: int = 8  # P: 2P+1 values per time feature
    max_seq_len: int = 64  # M
    objective: str = "dense_all_action"  # next_action | all_action | dense_all_action
    negatives: str = "mixed"  # in_batch | random | mixed
    logq: bool = True
    num_random_negatives: int = 256
    future_window_days: int = 14  # K
    max_positives_all_action: int = 32
    seq_sample_fraction: float = 0.5
    max_seqs_per_user: int = 4
    max_positives_per_seq: int = 32
    init_temperature: float = 0.07
    min_temperature: float = 0.01
    sketch_width: int = 2048
    sketch_depth: int = 4
    seed: int = 0
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_steps: int = 0
    checkpoint_every: int = 100
    log_every: int = 20
    eval_pool: int = 1000  # random pins each positive is ranked against (Recall@10)
    eval_user_fraction: float = 0.1  # users held out of training, for evaluation
    eval_at: str = "split"  # embedding time of a held-out user: split | user (70% through their own history)
    num_workers: int = 0


@dataclass
class RankerConfig:
    """Homefeed ranker (arXiv 2412.01985) with PEPNet (arXiv 2302.01115)."""

    arch: str = "masknet_dcnv2"  # dcnv2_baseline | masknet_dcnv2 | dcnv2_lowrank | transformer | finalmlp | gdcn | dhen | mlp
    pepnet: bool = True
    tasks: list[str] = field(default_factory=lambda: ["save", "closeup", "click", "hide"])
    task_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    sparse_dim: int = 16
    embedding_proj_dim: int = 32
    num_cross_layers: int = 4
    low_rank: int = 32
    num_masknet_blocks: int = 3
    masknet_ratio: float = 2.0
    masknet_out: int = 512
    mlp_dims: list[int] = field(default_factory=lambda: [256, 128])  # shared MLP, or each PPNet task tower
    score_weights: list[float] = field(default_factory=lambda: [1.0, 0.3, 0.3, -1.0])  # serving score
    gate_hidden: int = 64  # width of the ReLU layer of every PEPNet Gate NU
    transformer_layers: int = 2
    transformer_heads: int = 4
    dense_groups: int = 2  # C
    user_seq_tokens: int = 2  # U
    finalmlp_dims: list[int] = field(default_factory=lambda: [256, 128])
    finalmlp_heads: int = 4
    dhen_layers: int = 2
    dropout: float = 0.0
    seed: int = 0
    epochs: int = 3
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_steps: int = 0
    max_train_rows: int = 0  # 0 = all training impressions (a cap keeps comparisons quick)
    eval_batch_size: int = 4096
    checkpoint_every: int = 200
    log_every: int = 50


MODEL_CONFIGS: dict[str, type] = {
    "data": DataConfig,
    "pinsage": PinSageConfig,
    "pinnerformer": PinnerFormerConfig,
    "ranker": RankerConfig,
}


# ----------------------------------------------------------------------------------------------
# Machinery
# ----------------------------------------------------------------------------------------------


def _experiment_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}


def _read_yaml(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{path}: expected a mapping of experiment name -> mapping of fields")
    return data


def experiments() -> dict[str, tuple[str, dict[str, Any]]]:
    """All experiments: name -> (model, raw mapping)."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for model, path in _experiment_files().items():
        if model not in MODEL_CONFIGS:
            raise ConfigError(f"{path}: no config dataclass for model '{model}' (known: {sorted(MODEL_CONFIGS)})")
        for name, body in _read_yaml(path).items():
            if name in out:
                raise ConfigError(f"experiment '{name}' defined twice ({out[name][0]}.yaml and {path.name})")
            out[name] = (model, body)
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(key: str, value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return coerce(key, value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: key '{key}' expects {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: key '{key}' expects a list of {_type_name(item_tp)}, got {value!r}")
        return [coerce(f"{key}[{i}]", v, item_tp, where) for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: key '{key}' expects a bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: key '{key}' expects an int, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: key '{key}' expects a float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: key '{key}' expects a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: key '{key}' expects a mapping, got {value!r}")
        return build(tp, value, where=f"{where}.{key}")
    raise ConfigError(f"{where}: key '{key}' has an unsupported type {_type_name(tp)}")


def build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``values``; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(
                f"{where}: unknown key '{key}' for {cls.__name__}; known keys: {', '.join(sorted(names))}"
            )
        kwargs[key] = coerce(key, value, hints[key], where)
    return cls(**kwargs)


def _resolve(name: str, table: dict[str, tuple[str, dict[str, Any]]], seen: tuple[str, ...] = ()) -> dict:
    if name not in table:
        raise ConfigError(f"unknown experiment '{name}'; known: {', '.join(sorted(table))}")
    if name in seen:
        raise ConfigError(f"experiment '{name}' extends itself: {' -> '.join(seen + (name,))}")
    model, body = table[name]
    body = dict(body)
    parent = body.pop("extends", None)
    if parent is None:
        return body
    if table.get(parent, (model,))[0] != model:
        raise ConfigError(f"experiment '{name}' ({model}) extends '{parent}' of another model")
    return {**_resolve(parent, table, seen + (name,)), **body}


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """``["lr=0.01", "tasks=[save,click]"]`` -> ``{"lr": 0.01, "tasks": ["save", "click"]}``.

    Values are parsed as YAML; a leading ``<model>.`` on the key is allowed and dropped.
    """
    out: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        head, _, tail = key.partition(".")
        if tail and head in MODEL_CONFIGS:
            key = tail
        try:
            out[key] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': value is not valid YAML: {e}") from e
    return out


def model_of(experiment: str) -> str:
    table = experiments()
    if experiment not in table:
        raise ConfigError(f"unknown experiment '{experiment}'; known: {', '.join(sorted(table))}")
    return table[experiment][0]


def load(experiment: str, overrides: list[str] | dict[str, Any] | None = None, model: str | None = None):
    """Resolve ``experiment`` (with ``extends``), apply overrides, return the model's dataclass.

    ``model`` restricts which model the experiment must belong to (a clear error otherwise).
    """
    table = experiments()
    values = _resolve(experiment, table)
    exp_model = table[experiment][0]
    if model is not None and exp_model != model:
        raise ConfigError(f"experiment '{experiment}' is a {exp_model} experiment, expected a {model} one")
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    cls = MODEL_CONFIGS[exp_model]
    cfg = build(cls, {**values, **extra}, where=f"experiment '{experiment}'")
    object.__setattr__(cfg, "_experiment", experiment)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    out = dataclasses.asdict(cfg)
    out = {"model": next(k for k, v in MODEL_CONFIGS.items() if isinstance(cfg, v)),
           "experiment": getattr(cfg, "_experiment", None), **out}
    return out


def save(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (``config.yaml`` beside an artifact)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
    return path


def read_saved(path: str | Path):
    """Read a config written by :func:`save` back into its dataclass."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.yaml"
    raw = yaml.safe_load(path.read_text())
    model = raw.pop("model")
    experiment = raw.pop("experiment", None)
    cfg = build(MODEL_CONFIGS[model], raw, where=str(path))
    object.__setattr__(cfg, "_experiment", experiment)
    return cfg
