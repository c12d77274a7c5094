"""``homefeed data prepare|import|validate``."""

from __future__ import annotations

import argparse
import json
import sys

from components import config
from components.cli import add_config_args
from components.data.casts import fix_types
from components.data.import_config import load_import_config
from components.data.importer import format_report, import_data
from components.data.prepare import format_summary, prepare
from components.data.validate import validate_dir


def _prepare(args: argparse.Namespace) -> int:
    experiment = args.experiment or ("ml100k" if args.dataset == "ml-100k" else "synthetic")
    overrides = config.parse_overrides(args.overrides)
    for key in ("dataset", "users", "pins", "boards", "topics", "days", "seed"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    cfg = config.load(experiment, overrides, model="data")
    given = [f"--{k}" for k in ("users", "pins", "boards", "topics", "days") if getattr(args, k) is not None]
    if cfg.dataset == "ml-100k" and given:
        raise config.ConfigError(f"{', '.join(given)}: only for --dataset synthetic (ML-100k has fixed users, "
                                 "pins and days)")
    print(f"preparing {cfg.dataset} into {args.out} ...", flush=True)
    report = prepare(cfg, args.out)
    print(format_summary(report))
    return 0


def _validate(args: argparse.Namespace) -> int:
    if args.fix_types:
        cast = fix_types(args.dir)
        print("\n".join(["cast:", *(f"  {line}" for line in cast)]) if cast else "cast: nothing to cast",
              file=sys.stderr)
    report = validate_dir(args.dir)
    if args.json:
        print(json.dumps({"rows": report.rows, "dropped": report.dropped, "summary": report.summary}, indent=2))
    else:
        print(format_summary(report))
        print("\nvalid")
    return 0


def _import(args: argparse.Namespace) -> int:
    cfg = load_import_config(args.config)
    print(f"importing {args.config} into {args.out} ...", flush=True)
    report = import_data(cfg, args.out)
    print(format_summary(report.validation))
    extra = format_report(report)
    if extra:
        print("\n" + extra)
    return 0


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups["data"].add_parser("prepare", help="build a data directory from ml-100k or synthetic data")
    add_config_args(p, default_experiment="")
    p.add_argument("--dataset", choices=["ml-100k", "synthetic"], default=None)
    p.add_argument("--out", required=True, help="output data directory")
    for key in ("users", "pins", "boards", "topics", "days", "seed"):
        p.add_argument(f"--{key}", type=int, default=None, help=f"synthetic: {key}")
    p.set_defaults(func=_prepare)

    i = groups["data"].add_parser("import", help="build a data directory from your own interactions "
                                  "(+ items, collections, impressions) with an import config (docs/data.md)")
    i.add_argument("--config", required=True, help="import config YAML (components/configs/import/*.yaml)")
    i.add_argument("--out", required=True, help="output data directory (replaced only once the import is valid)")
    i.set_defaults(func=_import)

    v = groups["data"].add_parser("validate", help="validate a data directory and print a summary")
    v.add_argument("dir")
    v.add_argument("--json", action="store_true", help="print the summary as JSON")
    v.add_argument("--fix-types", action="store_true",
                   help="first cast columns of compatible types to the schema's (list<double> -> list<float>, "
                        "int32 -> int64, ...), rewriting those files, and say what was cast")
    v.set_defaults(func=_validate)
