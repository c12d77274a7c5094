"""The search spaces ``homefeed tune`` explores, shared by the local Optuna study
(:mod:`components.evaluation.tuning`) and the Katib ``Experiment`` for clusters
(:mod:`components.evaluation.katib`): one space, one trial budget and one objective per model."""

from __future__ import annotations

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
OBJECTIVE = {"pinsage": "mrr", "pinnerformer": "recall_at_10", "ranker": "hit3_save"}  # Katib-safe names
DEFAULT_EXPERIMENT = {"pinsage": "pinsage_eval", "pinnerformer": "pinnerformer_eval", "ranker": "ranker_tiny"}
