"""What every rank of a training run calls: a :class:`TrainCall` (``module:function``, experiment, overrides,
path arguments), resolved into ``fn(config.load(experiment, overrides), **kwargs)``.

The one description of a training run shared by the CLI, the Kubeflow steps, local torchrun and cluster
jobs (components.launch).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from components import config


class LaunchError(RuntimeError):
    """A training launch failed; the message names the command or job and its last output/status."""


ENTRIES = {"pinsage": "components.training.pinsage:train",
           "pinnerformer": "components.training.pinnerformer:train",
           "ranker": "components.training.ranker:train"}


@dataclass
class TrainCall:
    """What every rank runs: ``entry(config.load(experiment, overrides), **kwargs)``.

    ``path_kwargs`` names the kwargs that are input paths (staged to shared storage on a cluster);
    ``out_kwarg`` the one that is the output directory.
    """

    entry: str  # "package.module:function"
    experiment: str
    overrides: list[str] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    path_kwargs: list[str] = field(default_factory=list)
    out_kwarg: str = "out_dir"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainCall:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise LaunchError(f"--call: not valid JSON: {e}") from e
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
        if unknown or "entry" not in raw or "experiment" not in raw:
            raise LaunchError(f"--call: expected keys entry, experiment[, overrides, kwargs, ...]; got {sorted(raw)}")
        return cls(**raw)


def train_call(model: str, experiment: str, overrides: list[str] | None, out_dir: str, resume: bool = False,
               **inputs: str | None) -> TrainCall:
    """The TrainCall of ``homefeed train <model>`` and of the ``train_<model>`` step: ``inputs`` are input paths
    (``data_dir``, ``pin_embeddings``, ...; None ones are left out), staged to shared storage on a cluster."""
    if model not in ENTRIES:
        raise LaunchError(f"model {model!r}: expected one of {', '.join(ENTRIES)}")
    config.load(experiment, list(overrides or []), model=model)  # a bad config fails here, before any process starts
    paths = {k: str(v) for k, v in inputs.items() if v is not None}
    kwargs: dict[str, Any] = {**paths, "out_dir": str(out_dir)}
    if resume:
        kwargs["resume"] = True
    return TrainCall(ENTRIES[model], experiment, list(overrides or []), kwargs, path_kwargs=sorted(paths))


def resolve_entry(entry: str) -> Callable[..., Any]:
    module, _, name = entry.partition(":")
    if not module or not name:
        raise LaunchError(f"entry {entry!r}: expected 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise LaunchError(f"entry {entry!r}: cannot import: {e}") from e
    if not callable(fn):
        raise LaunchError(f"entry {entry!r} is not callable")
    return fn


def run_call(call: TrainCall) -> Any:
    """Run ``call`` in this process (one rank)."""
    fn = resolve_entry(call.entry)
    cfg = config.load(call.experiment, call.overrides)
    return fn(cfg, **call.kwargs)


