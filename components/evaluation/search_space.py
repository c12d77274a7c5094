"""The search spaces ``homefeed tune`` explores, shared by the local Optuna study
(:mod:`components.evaluation.tuning`) and the Katib ``Experiment`` for clusters
(:mod:`components.evaluation.katib`): one space, one trial budget and one objective per model (the ranker's
objective is its experiment's ``val_metric``: :func:`objective_name`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

Model = Literal["pinsage", "pinnerformer", "ranker"]


@dataclass(frozen=True)
class Param:
    """One dimension of a search space: a config key and its range (float/int) or choices."""

    name: str
    kind: Literal["float", "int", "categorical"]
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()


SPACES: dict[str, list[Param]] = {
    "pinsage": [Param("lr", "float", 1e-4, 1e-2, log=True), Param("margin", "float", 0.05, 0.5),
                Param("num_neighbors", "int", 5, 20)],
    "pinnerformer": [Param("lr", "float", 1e-4, 1e-2, log=True), Param("dropout", "float", 0.0, 0.3),
                     Param("num_layers", "int", 1, 3)],
    "ranker": [Param("lr", "float", 1e-4, 1e-2, log=True), Param("weight_decay", "float", 1e-6, 1e-3, log=True),
               Param("dropout", "float", 0.0, 0.3)],
}
TRIALS = {"pinsage": 20, "pinnerformer": 20, "ranker": 20}  # the budget, the same for every compared variant
# Katib-safe names; the ranker's is its config's val_metric (objective_name), hit3_save by default
OBJECTIVE = {"pinsage": "mrr", "pinnerformer": "recall_at_10", "ranker": "hit3_save"}
DEFAULT_EXPERIMENT = {"pinsage": "pinsage_eval", "pinnerformer": "pinnerformer_eval", "ranker": "ranker_tiny"}


def katib_safe(name: str) -> str:
    """``name`` with every character outside ``[A-Za-z0-9_-]`` as ``_``: what Katib's objectiveMetricName and its
    StdOut collector's default ``name=value`` filter accept (``auc_<task>`` with any task name)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def objective_name(model: str, cfg: Any = None) -> str:
    """The study's objective (Katib metric) name: the ranker's is ``cfg``'s validation metric (``val_metric``,
    ``RankerConfig.validation_metric``), the other models' :data:`OBJECTIVE`."""
    if model == "ranker" and cfg is not None:
        return katib_safe(cfg.validation_metric())
    return OBJECTIVE[model]
