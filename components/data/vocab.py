"""A dataset's vocabularies and positive rule, read from its ``meta.json`` with homefeed's defaults.

The built-in datasets (ML-100k, synthetic) use Pinterest's vocabularies: action types
``repin, closeup, click, hide``, surfaces ``homefeed, related, search``, and PinnerFormer's positive
engagement (a repin, or a closeup/click longer than 10 s). An imported dataset (``homefeed data import``)
declares its own in ``meta.json``::

    "action_types": ["view", "cart", "purchase"],      # at most MAX_ACTION_TYPES, order = table row
    "surfaces": ["web", "app"],                         # at most MAX_SURFACES, order = table row
    "positive": {"actions": ["purchase"], "min_duration_s": {"view": 30.0}}

``positive.actions`` are always positive; an action in ``positive.min_duration_s`` is positive when its
``duration_s`` is strictly longer than the threshold. The models' action and surface tables have
``MAX_ACTION_TYPES`` and ``MAX_SURFACES`` rows (the sizes of homefeed's own vocabularies), so a dataset's
action type ``i`` uses row ``i``; a vocabulary larger than that is rejected at import time.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.data.schemas import ACTION_TYPES, POSITIVE_MIN_DURATION_S, SURFACES, TABLES, TableSpec

MAX_ACTION_TYPES = len(ACTION_TYPES)
MAX_SURFACES = len(SURFACES)


@dataclass(frozen=True)
class Vocab:
    """Action types, surfaces (index = embedding row) and the positive-engagement rule of one dataset."""

    action_types: tuple[str, ...] = ACTION_TYPES
    surfaces: tuple[str, ...] = SURFACES
    positive_actions: tuple[str, ...] = ("repin",)
    min_duration_s: dict[str, float] = field(
        default_factory=lambda: {"closeup": POSITIVE_MIN_DURATION_S, "click": POSITIVE_MIN_DURATION_S})

    def is_positive(self, action_type: np.ndarray, duration_s: np.ndarray) -> np.ndarray:
        """(A,) bool: the action is a positive engagement under this dataset's rule."""
        action_type = np.asarray(action_type)
        duration_s = np.asarray(duration_s)
        pos = np.isin(action_type, list(self.positive_actions))
        for action, seconds in self.min_duration_s.items():
            pos |= (action_type == action) & (duration_s > seconds)
        return pos

    def action_codes(self, action_type: pd.Series | np.ndarray) -> np.ndarray:
        """(A,) int64 rows into the action table; -1 for values outside the vocabulary."""
        return pd.Categorical(np.asarray(action_type), categories=list(self.action_types)).codes.astype(np.int64)

    def surface_codes(self, surface: pd.Series | np.ndarray) -> np.ndarray:
        """(A,) int64 rows into the surface table; -1 for values outside the vocabulary."""
        return pd.Categorical(np.asarray(surface), categories=list(self.surfaces)).codes.astype(np.int64)

    def to_meta(self) -> dict[str, Any]:
        """The ``meta.json`` keys that declare this vocabulary."""
        return {"action_types": list(self.action_types), "surfaces": list(self.surfaces),
                "positive": {"actions": list(self.positive_actions),
                             "min_duration_s": {k: float(v) for k, v in self.min_duration_s.items()}}}


DEFAULT = Vocab()


def vocab_from_meta(meta: dict[str, Any] | None, source: str = "meta.json") -> Vocab:
    """The vocabulary a ``meta.json`` declares; homefeed's defaults for every key it leaves out."""
    meta = meta or {}
    actions = tuple(meta.get("action_types", DEFAULT.action_types))
    surfaces = tuple(meta.get("surfaces", DEFAULT.surfaces))
    rule = meta.get("positive")
    if rule is None:
        positive, durations = DEFAULT.positive_actions, dict(DEFAULT.min_duration_s)
    else:
        if not isinstance(rule, dict):
            raise ValueError(f"{source}: key 'positive' is {rule!r}, expected "
                             "{{'actions': [...], 'min_duration_s': {{action: seconds}}}}")
        positive = tuple(rule.get("actions", ()))
        durations = {str(k): float(v) for k, v in dict(rule.get("min_duration_s", {})).items()}
    if not 0 < len(actions) <= MAX_ACTION_TYPES or not all(isinstance(a, str) for a in actions):
        raise ValueError(f"{source}: key 'action_types' is {list(actions)!r}, expected 1 to {MAX_ACTION_TYPES} "
                         "action names (the models' action table has that many rows)")
    if not 0 < len(surfaces) <= MAX_SURFACES or not all(isinstance(s, str) for s in surfaces):
        raise ValueError(f"{source}: key 'surfaces' is {list(surfaces)!r}, expected 1 to {MAX_SURFACES} "
                         "surface names (the models' surface table has that many rows)")
    unknown = sorted((set(positive) | set(durations)) - set(actions))
    if unknown:
        raise ValueError(f"{source}: key 'positive' names {unknown}, which are not in action_types {list(actions)}")
    return Vocab(actions, surfaces, positive, durations)


def vocab_of(data_dir: str | Path) -> Vocab:
    """The vocabulary of the data directory ``data_dir`` (defaults when it has no ``meta.json``)."""
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        return DEFAULT
    try:
        meta = json.loads(path.read_text())
    except ValueError:
        return DEFAULT  # the validator reports a broken meta.json with its own message
    return vocab_from_meta(meta if isinstance(meta, dict) else None, str(path))


def dataset_spec(data_dir: str | Path, name: str) -> TableSpec:
    """``schemas.TABLES[name]`` with the vocabularies ``data_dir``'s ``meta.json`` declares (validator, loaders)."""
    spec = TABLES[name]
    if not spec.vocab:
        return spec
    v = vocab_of(data_dir)
    declared = {"action_type": v.action_types, "surface": v.surfaces}
    return dataclasses.replace(spec, vocab={col: declared.get(col, allowed) for col, allowed in spec.vocab.items()})


def vocab_of_frame(df: pd.DataFrame) -> Vocab:
    """The vocabulary a loader attached to ``df`` (``df.attrs["vocab"]``, kept by pandas through filters,
    sorts and merges); homefeed's defaults for a frame built elsewhere."""
    v = df.attrs.get("vocab")
    return v if isinstance(v, Vocab) else DEFAULT
