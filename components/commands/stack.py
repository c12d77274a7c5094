"""``homefeed stack up|down|show`` (the servers of a stack profile) and ``homefeed index list|rollback``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _stack_errors(fn):
    def run(args: argparse.Namespace) -> int:
        # lazy: only the command that runs loads the servers' clients (pymilvus, psycopg, redis) or the stack
        from components.serving.milvus_index import MilvusIndexError
        from components.stack import StackError

        try:
            return fn(args)
        except (StackError, MilvusIndexError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return run


@_stack_errors
def _up(args: argparse.Namespace) -> int:
    # lazy: only the command that runs loads the servers' clients (pymilvus, psycopg, redis) or the stack
    from components import stack

    cfg = stack.up(args.profile, args.state, triton_repository=args.triton_repository,
                   feast_server=not args.no_feast_server)
    for p in stack.recorded_processes(args.state):
        print(f"{p.name:12s} {p.endpoint:28s} pgid {p.pgid}  log {p.log}")
    print(f"stack file: {cfg.source}  (use --stack {cfg.source}; `homefeed stack down --state {args.state}` stops it)")
    return 0


@_stack_errors
def _down(args: argparse.Namespace) -> int:
    # lazy: only the command that runs loads the servers' clients (pymilvus, psycopg, redis) or the stack
    from components import stack

    names = stack.down(args.state, purge=args.purge)
    print(f"stopped: {', '.join(names) or 'nothing was running'}" + (f"; removed {args.state}" if args.purge else ""))
    return 0


def _show(args: argparse.Namespace) -> int:
    # lazy: only the command that runs loads the servers' clients (pymilvus, psycopg, redis) or the stack
    import yaml

    from components.stackconfig import load_stack, to_dict

    cfg = load_stack(args.stack)
    print(f"# {cfg.source}")
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def _milvus(args: argparse.Namespace) -> tuple[str, str, str | None]:
    # lazy: only the command that runs loads the servers' clients (pymilvus, psycopg, redis) or the stack
    from components.stackconfig import load_stack

    m = load_stack(args.stack).milvus
    if args.uri:
        return args.uri, args.alias or m.alias, None
    return m.uri, args.alias or m.alias, m.token.resolve("milvus.token") if m.token else None


@_stack_errors
def _index_list(args: argparse.Namespace) -> int:
    # lazy: only the command that runs loads the servers' clients (pymilvus, psycopg, redis) or the stack
    from components.serving import milvus_index

    uri, alias, token = _milvus(args)
    served, kept = milvus_index.list_index(uri, alias, token)
    for name in kept:
        print(f"{'*' if name == served else ' '} {name}")
    print(f"alias '{alias}' -> {served or 'nothing'} at {uri}")
    return 0


@_stack_errors
def _index_rollback(args: argparse.Namespace) -> int:
    # lazy: only the command that runs loads the servers' clients (pymilvus, psycopg, redis) or the stack
    from components.serving import milvus_index

    uri, alias, token = _milvus(args)
    before, now = milvus_index.rollback(uri, alias, to=args.to, token=token)
    print(f"alias '{alias}': {before} -> {now} at {uri}")
    return 0


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    su = groups["stack"].add_parser("up", help="start the servers of a profile; write STATE/stack.yaml")
    su.add_argument("--profile", default="server", choices=["local", "server"])
    su.add_argument("--state", required=True, type=Path, help="state directory (data, logs, secrets, stack.yaml)")
    su.add_argument("--triton-repository", help="also start tritonserver over this materialised model repository")
    su.add_argument("--no-feast-server", action="store_true", help="do not start `feast serve`")
    su.set_defaults(func=_up)
    sd = groups["stack"].add_parser("down", help="stop every server `stack up` started in STATE")
    sd.add_argument("--state", required=True, type=Path)
    sd.add_argument("--purge", action="store_true", help="also delete the state directory (data, secrets)")
    sd.set_defaults(func=_down)
    ss = groups["stack"].add_parser("show", help="print a stack file or profile as it is read")
    ss.add_argument("--stack", help="stack file or profile (default $HOMEFEED_STACK, else local)")
    ss.set_defaults(func=_show)

    for name, fn, text in (("list", _index_list, "the kept collections of the alias (* = served)"),
                           ("rollback", _index_rollback, "point the alias back at a kept collection")):
        p = groups["index"].add_parser(name, help=text)
        p.add_argument("--stack", help="stack file or profile (default $HOMEFEED_STACK, else local)")
        p.add_argument("--uri", help="Milvus URI instead of the stack's (no token)")
        p.add_argument("--alias", help="default: the stack's milvus.alias")
        if name == "rollback":
            p.add_argument("--to", help="collection to serve (default: the one built before the served one)")
        p.set_defaults(func=fn)
