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


def add_config_args(p: argparse.ArgumentParser, default_experiment: str) -> None:
    """``--experiment NAME`` and repeatable ``--set key=value`` (the same on every command)."""
    p.add_argument("--experiment", default=default_experiment, help=f"experiment name (default {default_experiment})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable), e.g. --set lr=0.01")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="homefeed", description=__doc__.splitlines()[0])
    top = parser.add_subparsers(dest="group", required=True, metavar="GROUP")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, help_text in GROUPS.items():
        gp = top.add_parser(name, help=help_text, description=help_text)
        groups[name] = gp.add_subparsers(dest="command", required=True, metavar="COMMAND")
        groups[name].group_parser = gp  # lets a group run without a command (`homefeed report --out X`)
    for mod in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"components.commands.{mod}")
        except ModuleNotFoundError as e:
            if e.name == f"components.commands.{mod}":
                continue  # that part of the platform is not installed in this build
            raise
        module.register(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.error(f"'{args.group}' needs a command")
    from components.data.validate import DataValidationError
    from components.launch import LaunchError
    from components.models.checkpoint import CheckpointError

    try:
        rc = args.func(args)
    except (ConfigError, DataValidationError, FileNotFoundError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except LaunchError as e:  # a training run failed (torchrun rank or cluster job): its first error line
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
