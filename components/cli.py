"""The one command line: ``homefeed <group> <command> ...``.

Groups: data, train, embed, eval, export, features, index, serve, recommend, pipeline, bench, report.
Each module in ``components.commands`` adds its commands to the groups through ``register(groups)``;
the commands call the same library functions as the Kubeflow steps.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from components.config import ConfigError

GROUPS = {
    "data": "prepare and validate data directories",
    "train": "train a model",
    "embed": "batch-embed pins and users",
    "eval": "evaluate and compare models",
    "export": "export a model for serving (ONNX, TensorRT)",
    "features": "the Feast feature store",
    "index": "the Milvus vector index",
    "serve": "start serving processes",
    "recommend": "ask the serving stack for recommendations",
    "pipeline": "compile, run and submit Kubeflow pipelines",
    "bench": "benchmarks",
    "report": "the evaluation report",
    "tune": "tune hyperparameters on the validation period (Optuna; a Katib Experiment for clusters)",
    "stack": "start and stop the servers of a stack profile (Valkey, PostgreSQL, Milvus, Triton, feast serve)",
}
COMMAND_MODULES = ("data", "pinsage", "pinnerformer", "ranker", "eval", "tune", "serving", "pipeline", "report", "stack")
# Which command modules add commands to which group. Building the parser imports only the modules of the
# group on the command line: the training and evaluation modules pull in torch, scikit-learn, LightGBM and the
# Kubernetes clients (seconds of start-up), which `homefeed data validate` or `homefeed --help` never need.
# tests/test_cli.py checks this table against what each module's register() really adds.
GROUP_MODULES: dict[str, tuple[str, ...]] = {
    "data": ("data",),
    "train": ("pinsage", "pinnerformer", "ranker"),
    "embed": ("pinsage", "pinnerformer", "serving"),
    "eval": ("eval",),
    "export": ("ranker",),
    "features": ("serving",),
    "index": ("serving", "stack"),
    "serve": ("serving",),
    "recommend": ("serving",),
    "pipeline": ("pipeline",),
    "bench": ("report",),
    "report": ("report",),
    "tune": ("tune",),
    "stack": ("stack",),
}


def add_config_args(p: argparse.ArgumentParser, default_experiment: str) -> None:
    """``--experiment NAME`` and repeatable ``--set key=value`` (the same on every command)."""
    p.add_argument("--experiment", default=default_experiment, help=f"experiment name (default {default_experiment})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable), e.g. --set lr=0.01")


def _group_of(argv: list[str] | None) -> str | None:
    """The group named on the command line (its first word that is not an option), if it is one."""
    words = [w for w in (sys.argv[1:] if argv is None else argv) if not w.startswith("-")]
    return words[0] if words and words[0] in GROUPS else None


def build_parser(argv: list[str] | None = None, *, all_modules: bool = False) -> argparse.ArgumentParser:
    """The parser with every group; the commands of the group named in ``argv`` (all with ``all_modules``)."""
    group = None if all_modules else _group_of(argv)
    if all_modules:
        modules = COMMAND_MODULES
    elif group is None:
        modules = ()  # `homefeed --help` or a typo: the groups alone say what there is
    else:
        modules = GROUP_MODULES[group]
    parser = argparse.ArgumentParser(prog="homefeed", description=__doc__.splitlines()[0])
    top = parser.add_subparsers(dest="group", required=True, metavar="GROUP")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, help_text in GROUPS.items():
        gp = top.add_parser(name, help=help_text, description=help_text)
        groups[name] = gp.add_subparsers(dest="command", required=True, metavar="COMMAND")
        groups[name].group_parser = gp  # lets a group run without a command (`homefeed report --out X`)
    for mod in modules:
        try:
            module = importlib.import_module(f"components.commands.{mod}")
        except ModuleNotFoundError as e:
            if e.name == f"components.commands.{mod}":
                continue  # that part of the platform is not installed in this build
            raise
        module.register(groups)
    return parser


# Errors that mean "bad input" (exit 2) or "the run failed" (exit 1), by module and class name: a command that
# never imported the module cannot have raised its error, so main() need not import torch or the Kubernetes
# clients just to name these classes.
USER_ERRORS = (("components.data.schemas", "DataValidationError"), ("components.models.checkpoint", "CheckpointError"))
RUN_ERRORS = (("components.launch", "LaunchError"),)


def _raised_by(e: BaseException, classes: tuple[tuple[str, str], ...]) -> bool:
    for module, name in classes:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(e, cls):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.error(f"'{args.group}' needs a command")
    try:
        rc = args.func(args)
    except Exception as e:
        if isinstance(e, ConfigError | FileNotFoundError) or _raised_by(e, USER_ERRORS):
            print(f"error: {e}", file=sys.stderr)
            return 2
        if _raised_by(e, RUN_ERRORS):  # a training run failed (torchrun rank or cluster job): its first error line
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
