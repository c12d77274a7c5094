"""A Katib ``Experiment`` (kubeflow.org/v1beta1) built from the same search space as ``homefeed tune``.

Each Katib trial is a batch/v1 Job running ``homefeed tune <model> --trial --set key=${trialParameters.key}
...``, which trains once and prints ``<time> <objective>=<value>`` after every validation and once at the end
(the best weights' score on the validation period); Katib's StdOut metrics collector reads those lines (its
default filter is ``name=value``; a first word that parses as RFC 3339 is the value's time, which early
stopping needs to order the values), and ``metricStrategies: latest`` makes the last line the trial's
objective. The algorithm is TPE, as locally, with the same trial budget. Early stopping is Katib's
``medianstop`` (``min_trials_required``, ``start_step``; the settings of the local study's MedianPruner, see
:func:`components.evaluation.tuning.katib_early_stopping`): a trial whose best value after ``start_step``
reports is below the finished trials' reference is stopped. (Katib's reference is the mean over finished trials
of each one's average of its first ``start_step`` values, Optuna's the median of the finished trials' values at
the same validation: the same rule in spirit, not bit for bit.) Without pruning (``--no-prune``) the manifest
has no ``earlyStopping`` and the trials print only their final value.

:func:`validate_experiment` checks a manifest offline: a JSON Schema of the Experiment fields homefeed writes
(names, types and allowed values of the v1beta1 API: ``ExperimentSpec``, ``ObjectiveSpec``,
``AlgorithmSpec``, ``ParameterSpec``/``FeasibleSpace``, ``TrialTemplate``, ``MetricsCollectorSpec``;
unknown fields are refused) and the trial Job against the Kubernetes schema (kubernetes-validate, strict).
"""

from __future__ import annotations

from typing import Any

import yaml

from components.evaluation.search_space import OBJECTIVE, SPACES, Param, katib_safe

API_VERSION = "kubeflow.org/v1beta1"
KUBE_VERSION = "1.30.0"
PARAMETER_TYPES = {"float": "double", "int": "int", "categorical": "categorical"}
ALGORITHMS = ("random", "grid", "bayesianoptimization", "tpe", "multivariate-tpe", "cmaes", "hyperband", "sobol")
COLLECTORS = ("StdOut", "File", "TensorFlowEvent", "PrometheusMetric", "Custom", "None")
EARLY_STOPPING = ("medianstop",)  # Katib's early stopping algorithms
MEDIANSTOP_SETTINGS = {"min_trials_required": 1, "start_step": 1}  # Katib's validation: int, at least this
DISTRIBUTIONS = ("uniform", "logUniform", "normal", "logNormal")


def _feasible(p: Param) -> dict[str, Any]:
    if p.kind == "categorical":
        return {"list": [str(c) for c in p.choices]}
    lo, hi = (int(p.low), int(p.high)) if p.kind == "int" else (p.low, p.high)
    return {"min": str(lo), "max": str(hi), "distribution": "logUniform" if p.log else "uniform"}


def _yaml_value(value: Any) -> str:
    """``value`` as one-line YAML, so that ``--set key=<it>`` parses back to the same value."""
    return yaml.safe_dump(value, default_flow_style=True, width=1_000_000).removesuffix("\n...\n").strip()


def build_experiment(model: str, experiment: str, trials: int, image: str = "homefeed-steps:latest",
                     namespace: str = "kubeflow", data_path: str = "/data/homefeed", parallel: int = 2,
                     seed: int = 0, early_stopping: tuple[int, int] | None = None, objective: str | None = None,
                     overrides: dict[str, Any] | None = None, trial_seeds: list[int] | None = None) -> dict[str, Any]:
    """The Katib Experiment for ``model``'s search space (:data:`SPACES`), ``trials`` trials, TPE;
    ``early_stopping`` = (min_trials_required, start_step) of Katib's medianstop, or None for none.
    ``objective``: the metric the trials print (default :data:`OBJECTIVE`; the ranker's is its experiment's
    ``val_metric``, ``search_space.objective_name``), made Katib-safe. ``overrides``: fixed ``--set`` values of
    every trial (before the searched ones), as ``homefeed tune --set`` fixes them locally. ``trial_seeds``: more
    than one makes every trial train once per seed and print their mean (``--trial-seeds``)."""
    space = SPACES[model]
    metric = katib_safe(objective or OBJECTIVE[model])
    name = f"homefeed-tune-{model}-{experiment.replace('_', '-')}"[:63].rstrip("-")
    command = ["homefeed", "tune", model, "--trial", "--experiment", experiment, "--data", data_path,
               "--seed", str(seed)] + ([] if early_stopping else ["--no-prune"])
    if trial_seeds and list(trial_seeds) != [seed]:
        command += ["--trial-seeds", ",".join(map(str, trial_seeds))]
    searched = {p.name for p in space}
    for key, value in (overrides or {}).items():
        if key not in searched:
            command += ["--set", f"{key}={_yaml_value(value)}"]
    for p in space:
        command += ["--set", f"{p.name}=${{trialParameters.{p.name}}}"]
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "spec": {"backoffLimit": 0,
                    "template": {"metadata": {"labels": {"app.kubernetes.io/name": "homefeed-tune"}},
                                 "spec": {"restartPolicy": "Never",
                                          "containers": [{"name": "training", "image": image, "command": command,
                                                          "resources": {"requests": {"cpu": "2", "memory": "4Gi"}}}]}}}}
    stopping = {} if not early_stopping else {"earlyStopping": {"algorithmName": "medianstop", "algorithmSettings": [
        {"name": "min_trials_required", "value": str(early_stopping[0])},
        {"name": "start_step", "value": str(early_stopping[1])}]}}
    return {
        "apiVersion": API_VERSION, "kind": "Experiment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "homefeed"}},
        "spec": {
            "objective": {"type": "maximize", "objectiveMetricName": metric,
                          "metricStrategies": [{"name": metric, "value": "latest"}]},
            "algorithm": {"algorithmName": "tpe", "algorithmSettings": [{"name": "random_state", "value": str(seed)}]},
            **stopping,
            "maxTrialCount": int(trials), "parallelTrialCount": int(parallel), "maxFailedTrialCount": 3,
            "metricsCollectorSpec": {"collector": {"kind": "StdOut"}},
            "parameters": [{"name": p.name, "parameterType": PARAMETER_TYPES[p.kind], "feasibleSpace": _feasible(p)}
                           for p in space],
            "trialTemplate": {
                "primaryContainerName": "training",
                "trialParameters": [{"name": p.name, "description": f"{model} config key {p.name}", "reference": p.name}
                                    for p in space],
                "trialSpec": job,
            },
        },
    }


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": False}


_STR, _INT = {"type": "string"}, {"type": "integer"}
SCHEMA: dict[str, Any] = _obj({
    "apiVersion": {"const": API_VERSION}, "kind": {"const": "Experiment"},
    "metadata": _obj({"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                      "namespace": _STR, "labels": {"type": "object", "additionalProperties": _STR}}, ("name",)),
    "spec": _obj({
        "objective": _obj({"type": {"enum": ["maximize", "minimize"]}, "goal": {"type": "number"},
                           "objectiveMetricName": {"type": "string", "pattern": r"^[\w|-]+$"},
                           "additionalMetricNames": {"type": "array", "items": _STR},
                           "metricStrategies": {"type": "array", "items": _obj(
                               {"name": _STR, "value": {"enum": ["min", "max", "latest"]}}, ("name", "value"))}},
                          ("type", "objectiveMetricName")),
        "earlyStopping": _obj({"algorithmName": {"enum": list(EARLY_STOPPING)},
                               "algorithmSettings": {"type": "array",
                                                     "items": _obj({"name": _STR, "value": _STR}, ("name", "value"))}},
                              ("algorithmName",)),
        "algorithm": _obj({"algorithmName": {"enum": list(ALGORITHMS)},
                           "algorithmSettings": {"type": "array", "items": _obj({"name": _STR, "value": _STR}, ("name", "value"))}},
                          ("algorithmName",)),
        "maxTrialCount": {"type": "integer", "minimum": 1}, "parallelTrialCount": {"type": "integer", "minimum": 1},
        "maxFailedTrialCount": {"type": "integer", "minimum": 0},
        "metricsCollectorSpec": _obj({"collector": _obj({"kind": {"enum": list(COLLECTORS)}}, ("kind",))}),
        "parameters": {"type": "array", "minItems": 1, "items": _obj({
            "name": _STR, "parameterType": {"enum": ["int", "double", "categorical", "discrete"]},
            "feasibleSpace": _obj({"min": _STR, "max": _STR, "step": _STR, "list": {"type": "array", "items": _STR},
                                   "distribution": {"enum": list(DISTRIBUTIONS)}})}, ("name", "parameterType", "feasibleSpace"))},
        "trialTemplate": _obj({
            "primaryContainerName": _STR, "retain": {"type": "boolean"}, "successCondition": _STR,
            "failureCondition": _STR,
            "trialParameters": {"type": "array", "items": _obj({"name": _STR, "description": _STR, "reference": _STR},
                                                               ("name", "reference"))},
            "trialSpec": {"type": "object"}}, ("trialParameters", "trialSpec")),
    }, ("objective", "algorithm", "parameters", "trialTemplate")),
}, ("apiVersion", "kind", "metadata", "spec"))


class KatibValidationError(ValueError):
    """A Katib Experiment manifest that the v1beta1 API (or Kubernetes) would refuse."""


def validate_experiment(obj: dict[str, Any]) -> dict[str, Any]:
    """Validate ``obj`` offline (see the module doc); return it unchanged or raise KatibValidationError."""
    # jsonschema and kubernetes-validate are dev/CI tools (pyproject [dev]); only validation needs them
    import jsonschema
    import kubernetes_validate

    try:
        jsonschema.validate(obj, SCHEMA)
    except jsonschema.ValidationError as e:
        raise KatibValidationError(f"Katib Experiment: {e.message} at {'.'.join(map(str, e.absolute_path))}") from e
    spec = obj["spec"]
    names = [p["name"] for p in spec["parameters"]]
    refs = {t["reference"] for t in spec["trialTemplate"]["trialParameters"]}
    if refs - set(names):
        raise KatibValidationError(f"Katib Experiment: trialParameters reference unknown parameters {sorted(refs - set(names))}")
    for p in spec["parameters"]:
        fs = p["feasibleSpace"]
        if p["parameterType"] in ("int", "double") and not ({"min", "max"} <= set(fs) and float(fs["min"]) < float(fs["max"])):
            raise KatibValidationError(f"Katib Experiment: parameter '{p['name']}' needs feasibleSpace min < max, got {fs}")
    _check_early_stopping(spec)
    job = dict(spec["trialTemplate"]["trialSpec"])
    job.setdefault("metadata", {"name": "trial"})
    try:
        kubernetes_validate.validate(job, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        raise KatibValidationError(f"Katib trial Job: {e.message} at {list(e.path)}") from e
    containers = job["spec"]["template"]["spec"]["containers"]
    if spec["trialTemplate"].get("primaryContainerName") not in {c["name"] for c in containers}:
        raise KatibValidationError("Katib Experiment: primaryContainerName is not a container of the trial Job")
    return obj


def _check_early_stopping(spec: dict[str, Any]) -> None:
    """What Katib checks of ``earlyStopping``: medianstop's known settings as integers in range (its
    ``validate_medianstop_setting``), a StdOut or File metrics collector (the only ones early stopping reads),
    and a strategy for the objective metric only among the known metrics."""
    names = {spec["objective"]["objectiveMetricName"], *spec["objective"].get("additionalMetricNames", [])}
    unknown = [m["name"] for m in spec["objective"].get("metricStrategies", []) if m["name"] not in names]
    if unknown:
        raise KatibValidationError(f"Katib Experiment: metricStrategies name unknown metrics {unknown}")
    es = spec.get("earlyStopping")
    if es is None:
        return
    for s in es.get("algorithmSettings", []):
        if s["name"] not in MEDIANSTOP_SETTINGS:
            raise KatibValidationError(f"Katib Experiment: unknown setting '{s['name']}' for algorithm medianstop "
                                       f"(known: {sorted(MEDIANSTOP_SETTINGS)})")
        try:
            ok = int(s["value"]) >= MEDIANSTOP_SETTINGS[s["name"]]
        except ValueError:
            ok = False
        if not ok:
            raise KatibValidationError(f"Katib Experiment: medianstop {s['name']} must be an integer >= "
                                       f"{MEDIANSTOP_SETTINGS[s['name']]}, got {s['value']!r}")
    kind = spec.get("metricsCollectorSpec", {}).get("collector", {}).get("kind", "StdOut")
    if kind not in ("StdOut", "File"):
        raise KatibValidationError(f"Katib Experiment: early stopping reads only the StdOut or File collector, not {kind}")
