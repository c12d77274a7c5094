"""Configuration: flat dataclasses per model, YAML experiments, ``--set key=value`` overrides.

Config flows one way: an experiment name plus overrides -> :func:`load` -> a dataclass -> the
training/inference code. The CLI and the Kubeflow steps call the same :func:`load`.

Experiments live in ``components/configs/<model>.yaml`` as a mapping ``name -> {field: value}``;
an experiment may name another with ``extends:``. Every experiment name is unique across files, so
``load("pinsage_tiny")`` needs no model name. Unknown keys and wrong types are errors that name the
key, the experiment and what was expected.

This file is long on purpose: it is the one config contract every layer reads (the four dataclasses with
their choices and bounds are most of it), and the machinery beside them is what makes those annotations checks.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A configuration problem, with a message that names the key and what was expected."""


# ----------------------------------------------------------------------------------------------
# Field types: ``Literal`` choices and ``Annotated[..., Range(...)]`` bounds, checked when a config
# is built (load, read_saved, dataclasses.replace and direct construction alike).
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric field: ``lo <= x`` (``lo < x`` when ``lo_open``), likewise ``hi``."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def describe(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
        return " and ".join(parts)

    def holds(self, x: float) -> bool:
        if not math.isfinite(x):  # NaN compares False with every bound, so it would pass them all
            return False
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        return not (self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi))


PositiveInt = Annotated[int, Range(lo=1)]
NonNegInt = Annotated[int, Range(lo=0)]  # 0 usually means "off" / "all"
PositiveFloat = Annotated[float, Range(lo=0, lo_open=True)]
NonNegFloat = Annotated[float, Range(lo=0)]
Fraction = Annotated[float, Range(lo=0, hi=1)]
Dropout = Annotated[float, Range(lo=0, hi=1, hi_open=True)]

Dataset = Literal["ml-100k", "synthetic"]
Pooling = Literal["importance", "mean"]
Objective = Literal["next_action", "all_action", "dense_all_action"]
Negatives = Literal["in_batch", "random", "mixed"]
EvalAt = Literal["split", "user"]
# the ranker's interaction architectures: the keys of components.models.ranker.ARCHS (a test keeps them equal)
RankerArch = Literal["mlp", "dcnv2_baseline", "dcnv2_lowrank", "gdcn", "masknet_dcnv2", "transformer", "finalmlp",
                     "dhen"]


class Checked:
    """Mixin: ``__post_init__`` checks every field against its annotation, then ``check()`` (cross-field).

    So a config is valid however it was made: :func:`load`, :func:`read_saved`, ``dataclasses.replace``.
    """

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self), include_extras=True)
        where = type(self).__name__
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            object.__setattr__(self, f.name, coerce(f.name, getattr(self, f.name), hints[f.name], where))
        self.check()

    def check(self) -> None:
        """Rules that involve several fields; raise ConfigError naming them."""


# ----------------------------------------------------------------------------------------------
# Model configs: flat dataclasses. Only the top-level model / job reads these; layers take plain
# typed arguments. ``experiment`` is the name :func:`load` resolved (recorded in config.yaml).
# ----------------------------------------------------------------------------------------------


@dataclass
class DataConfig(Checked):
    """Data preparation (``homefeed data prepare``)."""

    experiment: str = ""
    dataset: Dataset = "ml-100k"
    seed: NonNegInt = 0
    # synthetic generator knobs
    users: PositiveInt = 2_000
    pins: PositiveInt = 5_000
    boards: PositiveInt = 500
    topics: PositiveInt = 20
    days: PositiveInt = 60
    events_per_user: PositiveFloat = 40.0  # mean; per-user activity is log-normal around it
    interests_per_user: PositiveInt = 3
    drift_prob: Fraction = 0.5  # chance that one interest of a user is replaced mid-way
    feature_dim: PositiveInt = 64
    feature_noise: NonNegFloat = 2.0  # higher -> content features say less about the topic
    board_purity: Fraction = 0.85  # fraction of a board's pins from its own topic
    impressions_per_request: PositiveInt = 12
    requests_per_user_day: PositiveFloat = 0.3
    eval_days: PositiveInt = 14  # the last days are held out for evaluation


@dataclass
class PinSageConfig(Checked):
    """PinSage (arXiv 1806.01973): graph sampling, model and training knobs."""

    experiment: str = ""
    # graph sampling
    walks_per_node: PositiveInt = 200
    walk_length: PositiveInt = 2  # pin->board->pin hops per walk (each hop is two half-steps)
    restart_prob: Fraction = 0.5
    num_neighbors: PositiveInt = 10  # T: top-T visited pins are the neighbourhood
    use_engagement_edges: bool = False
    # model
    feature_dim: PositiveInt = 64  # input content features (set from data)
    hidden_dim: PositiveInt = 128
    embed_dim: PositiveInt = 64
    num_layers: NonNegInt = 2  # K; 0 = no convolutions (the content-only baseline: the final MLP on features)
    pooling: Pooling = "importance"
    # training
    seed: NonNegInt = 0
    epochs: PositiveInt = 3
    batch_size: PositiveInt = 256
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegFloat = 0.0
    margin: NonNegFloat = 0.1
    num_negatives: PositiveInt = 500  # shared by the whole minibatch
    hard_negatives: bool = True
    hard_negative_band: list[Fraction] = field(default_factory=lambda: [0.02, 0.05])  # PPR rank band
    max_steps: NonNegInt = 0  # 0 = all epochs
    num_workers: NonNegInt = 2
    prefetch_factor: PositiveInt = 2
    checkpoint_every: NonNegInt = 100  # 0 = no checkpoints (only model.pt)
    keep_checkpoints: NonNegInt = 2  # the last N step-*.pt are kept; 0 = keep all
    log_every: PositiveInt = 20
    pair_window_s: PositiveInt = 86_400  # co-engagement window for related pairs
    board_pairs: bool = True  # also pair pins saved to the same board
    inference_chunk: PositiveInt = 4096
    eval_pool: PositiveInt = 5000  # candidate pins per held-out query (all pins when the corpus is smaller)
    eval_max_queries: PositiveInt = 2000
    epoch_pairs: NonNegInt = 0  # related pairs drawn (seeded, per epoch) for each epoch; 0 = every pair
    patience: NonNegInt = 0  # eval harness: validation-period evaluations without gain before stopping; 0 = none
    val_every: NonNegInt = 0  # eval harness: steps between validations (0 = each epoch) when patience > 0

    def check(self) -> None:
        band = self.hard_negative_band
        if len(band) != 2 or not band[0] < band[1]:
            raise ConfigError(f"PinSageConfig: key 'hard_negative_band' expects [lo, hi] with 0 <= lo < hi <= 1, "
                              f"got {band}")


@dataclass
class PinnerFormerConfig(Checked):
    """PinnerFormer (arXiv 2205.04507): sequence model, objectives and sampling knobs."""

    experiment: str = ""
    pin_dim: PositiveInt = 64  # PinSage embedding size (set from data)
    d_model: PositiveInt = 64
    num_layers: PositiveInt = 2
    num_heads: PositiveInt = 4
    dropout: Dropout = 0.1
    embed_dim: PositiveInt = 64
    time_periods: PositiveInt = 8  # P: 2P+1 values per time feature
    max_seq_len: PositiveInt = 64  # M
    objective: Objective = "dense_all_action"
    negatives: Negatives = "mixed"
    logq: bool = True
    num_random_negatives: PositiveInt = 256
    future_window_days: PositiveInt = 14  # K
    max_positives_all_action: PositiveInt = 32
    seq_sample_fraction: Annotated[float, Range(lo=0, hi=1, lo_open=True)] = 0.5
    max_seqs_per_user: PositiveInt = 4
    max_positives_per_seq: PositiveInt = 32
    init_temperature: PositiveFloat = 0.07
    min_temperature: PositiveFloat = 0.01
    sketch_width: PositiveInt = 2048
    sketch_depth: PositiveInt = 4
    seed: NonNegInt = 0
    epochs: PositiveInt = 3
    batch_size: PositiveInt = 64
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegFloat = 0.0
    max_steps: NonNegInt = 0
    checkpoint_every: NonNegInt = 100  # 0 = no checkpoints (only model.pt)
    keep_checkpoints: NonNegInt = 2  # the last N step-*.pt are kept; 0 = keep all
    log_every: PositiveInt = 20
    eval_pool: PositiveInt = 1000  # random pins each positive is ranked against (Recall@10)
    eval_user_fraction: Annotated[float, Range(lo=0, hi=1, hi_open=True)] = 0.1  # users held out of training
    eval_at: EvalAt = "split"  # embedding time of a held-out user: split | user (70% through their own history)
    num_workers: NonNegInt = 0
    patience: NonNegInt = 0  # eval harness: validation evaluations without gain before stopping; 0 = none
    val_every: NonNegInt = 0  # eval harness: steps between validations (0 = each epoch) when patience > 0

    def check(self) -> None:
        if self.d_model % self.num_heads:
            raise ConfigError(f"PinnerFormerConfig: key 'd_model' ({self.d_model}) must be divisible by "
                              f"'num_heads' ({self.num_heads})")
        if self.min_temperature > self.init_temperature:
            raise ConfigError(f"PinnerFormerConfig: key 'init_temperature' ({self.init_temperature}) must be >= "
                              f"'min_temperature' ({self.min_temperature})")


@dataclass
class RankerConfig(Checked):
    """Homefeed ranker (arXiv 2412.01985) with PEPNet (arXiv 2302.01115)."""

    experiment: str = ""
    arch: RankerArch = "masknet_dcnv2"
    pepnet: bool = True
    tasks: list[str] = field(default_factory=lambda: ["save", "closeup", "click", "hide"])
    task_weights: list[NonNegFloat] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    sparse_dim: PositiveInt = 16
    embedding_proj_dim: PositiveInt = 32
    num_cross_layers: PositiveInt = 4
    low_rank: PositiveInt = 32
    num_masknet_blocks: PositiveInt = 3
    masknet_ratio: PositiveFloat = 2.0
    masknet_out: PositiveInt = 512
    mlp_dims: list[PositiveInt] = field(default_factory=lambda: [256, 128])  # shared MLP, or each PPNet task tower
    score_weights: list[float] = field(default_factory=lambda: [1.0, 0.3, 0.3, -1.0])  # serving score
    gate_hidden: PositiveInt = 64  # width of the ReLU layer of every PEPNet Gate NU
    transformer_layers: PositiveInt = 2
    transformer_heads: PositiveInt = 4
    dense_groups: PositiveInt = 2  # C
    user_seq_tokens: PositiveInt = 2  # U
    finalmlp_dims: list[PositiveInt] = field(default_factory=lambda: [256, 128])
    finalmlp_heads: PositiveInt = 4
    dhen_layers: PositiveInt = 2
    dropout: Dropout = 0.0
    # point-in-time per-pin engagement (data.point_in_time.pin_engagement) as extra dense features
    pin_engagement: bool = False
    # a user x pin product slice in x_0 (both embeddings' element-wise product, projected), as LR/GBDT get
    user_pin_product: bool = False
    seed: NonNegInt = 0
    epochs: PositiveInt = 3
    batch_size: PositiveInt = 512
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegFloat = 0.0
    max_steps: NonNegInt = 0
    max_train_rows: NonNegInt = 0  # 0 = all training impressions (a cap keeps comparisons quick)
    eval_batch_size: PositiveInt = 4096
    checkpoint_every: NonNegInt = 200  # 0 = no checkpoints (only model.pt)
    keep_checkpoints: NonNegInt = 2  # the last N step-*.pt are kept; 0 = keep all
    log_every: PositiveInt = 50
    patience: NonNegInt = 0  # eval harness: validation-period evaluations without gain before stopping; 0 = none
    val_every: NonNegInt = 0  # eval harness: steps between validations (0 = each epoch) when patience > 0
    # the validation metric of early stopping and of `homefeed tune ranker`: hit3_save or auc_<task>
    val_metric: str = "hit3_save"

    def check(self) -> None:
        if not self.tasks:
            raise ConfigError("RankerConfig: key 'tasks' expects at least one task")
        allowed = ["hit3_save", *(f"auc_{t}" for t in self.tasks)]
        if self.val_metric not in allowed:
            raise ConfigError(f"RankerConfig: key 'val_metric' expects one of {', '.join(allowed)}, "
                              f"got {self.val_metric!r}")
        if len(self.task_weights) != len(self.tasks) or len(self.score_weights) != len(self.tasks):
            raise ConfigError(f"RankerConfig: keys 'task_weights' ({len(self.task_weights)}) and 'score_weights' "
                              f"({len(self.score_weights)}) must have one value per task ({len(self.tasks)}: "
                              f"{self.tasks})")
        if not self.mlp_dims or not self.finalmlp_dims:
            raise ConfigError("RankerConfig: keys 'mlp_dims' and 'finalmlp_dims' expect at least one width")

    def validation_metric(self) -> str:
        """The metric early stopping and tuning maximise: ``val_metric``, except that ``hit3_save`` (the default)
        without a ``save`` task is ``auc_<first task>`` (no save, no HIT@3/save)."""
        if self.val_metric == "hit3_save" and "save" not in self.tasks:
            return f"auc_{self.tasks[0]}"
        return self.val_metric


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
    if typing.get_origin(tp) is Annotated:
        base, *meta = typing.get_args(tp)
        return " ".join([_type_name(base), *(m.describe() for m in meta if isinstance(m, Range))])
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(key: str, value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it (ints widen to float).

    Handles Optional/unions, ``list[...]``, ``Literal[...]`` choices and ``Annotated[T, Range]`` bounds;
    every failure is a ConfigError naming ``where``, the key, what was expected and the value.
    """
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *meta = typing.get_args(tp)
        value = coerce(key, value, base, where)
        for m in meta:
            if isinstance(m, Range) and not m.holds(value):
                raise ConfigError(f"{where}: key '{key}' expects {_type_name(base)} {m.describe()}, got {value!r}")
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, str | int | bool) and value in choices:
            return value
        raise ConfigError(f"{where}: key '{key}' expects one of {', '.join(map(str, choices))}, got {value!r}")
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
                errors.append(str(e).removeprefix(f"{where}: "))
        raise ConfigError(f"{where}: key '{key}' expects {_type_name(tp)}, got {value!r} ({'; '.join(errors)})")
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
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(
                f"{where}: unknown key '{key}' for {cls.__name__}; known keys: {', '.join(sorted(names))}"
            )
        kwargs[key] = coerce(key, value, hints[key], where)
    try:
        return cls(**kwargs)
    except ConfigError as e:  # a cross-field rule (Checked.check): say which experiment/file broke it
        raise ConfigError(f"{where}: {e}") from e


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
    return build(cls, {**values, **extra, "experiment": experiment}, where=f"experiment '{experiment}'")


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain values, with the model it belongs to: what config.yaml and checkpoints record."""
    return {"model": next(k for k, v in MODEL_CONFIGS.items() if isinstance(cfg, v)), **dataclasses.asdict(cfg)}


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
    if not isinstance(raw, dict) or raw.get("model") not in MODEL_CONFIGS:
        raise ConfigError(f"{path}: expected a saved config with 'model' one of {', '.join(MODEL_CONFIGS)}")
    model = raw.pop("model")
    if raw.get("experiment") is None:  # files written before the experiment name was a field say null
        raw["experiment"] = ""
    return build(MODEL_CONFIGS[model], raw, where=str(path))
