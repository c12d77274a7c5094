"""``homefeed features apply|materialize``, ``homefeed index build``, ``homefeed serve triton``,
``homefeed serve recommend``, ``homefeed recommend``, ``homefeed embed set-current``: the serving stack.

The recommend commands read their endpoints from ``--stack PATH|PROFILE`` (default ``$HOMEFEED_STACK``,
else the ``local`` profile); an explicit ``--feature-repo`` / ``--milvus`` / ``--triton`` / ... wins."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

DEFAULT_ROOT = Path("out/serving")
Command = Callable[[argparse.Namespace], int]
DEFAULT_FEATURE_REPO = DEFAULT_ROOT / "feature_repo"
DEFAULT_MILVUS = str(DEFAULT_ROOT / "milvus.db")
DEFAULT_REPOSITORY = DEFAULT_ROOT / "triton_repository"


def _clean_errors(fn: Command) -> Command:
    """The serving layer's own errors end the command with ``error: <message>`` and exit code 2."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        # lazy: this module serves five groups; only the command that runs loads its clients (pymilvus, feast, tritonclient)
        from components.data.tables import VersionError
        from components.serving.feast_store import FeatureStoreError
        from components.serving.milvus_index import MilvusIndexError
        from components.serving.model_repository import ModelRepositoryError
        from components.serving.recommend import RecommendError, RequestError
        from components.serving.triton import TritonError

        try:
            return fn(args)
        except (FeatureStoreError, MilvusIndexError, ModelRepositoryError, RecommendError, TritonError,
                RequestError, VersionError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return run


def _feast_stack(args: argparse.Namespace):
    """(the stack of ``--stack``, the repo instance: ``--repo`` or the stack's ``feast.repo``)."""
    # lazy: this module serves five groups; only the command that runs loads its clients (pymilvus, feast, tritonclient)
    from components.stackconfig import load_stack

    stack = load_stack(args.stack)
    return stack, Path(args.repo or stack.feast.repo)


@_clean_errors
def _features_apply(args: argparse.Namespace) -> int:
    # lazy: this module serves five groups; only the command that runs loads its clients (pymilvus, feast, tritonclient)
    from components.serving import feast_store

    stack, repo = _feast_stack(args)
    repo = feast_store.init_repo(repo, stack=stack)
    if args.data:
        if not args.date:
            raise SystemExit("error: --data needs --date (the snapshot date of the sources, YYYY-MM-DD)")
        counts = feast_store.write_sources(repo, args.data, args.date, args.user_embeddings, args.pin_embeddings,
                                           batch_rows=args.batch_rows)
        print(f"sources as of {args.date}: {counts}")
    names = feast_store.apply(repo, stack)
    print(f"applied {repo}: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in names.items()))
    return 0


@_clean_errors
def _features_materialize(args: argparse.Namespace) -> int:
    # lazy: this module serves five groups; only the command that runs loads its clients (pymilvus, feast, tritonclient)
    from components.serving import feast_store

    stack, repo = _feast_stack(args)
    for view, interval in feast_store.materialize(repo, args.date, stack, force=args.force,
                                                  batch_rows=args.batch_rows).items():
        print(f"{view}: {interval}")
    return 0


@_clean_errors
def _index_build(args: argparse.Namespace) -> int:
    # lazy: this module serves five groups; only the command that runs loads its clients (pymilvus, feast, tritonclient)
    from components.progress import Progress
    from components.serving import milvus_index
    from components.stackconfig import load_stack

    m = load_stack(args.stack).milvus
    uri, alias = args.uri or m.uri, args.alias or m.alias
    token = None if args.uri else (m.token.resolve("milvus.token") if m.token else None)
    t = time.perf_counter()
    params = milvus_index.HnswParams(m=args.m, ef_construction=args.ef_construction)
    with Progress(desc="milvus insert", unit="rows") as bar:
        def inserted(done: int, total: int) -> None:
            bar.set_total(total)
            bar.update(done - bar.n)

        name = milvus_index.build_index(uri, args.embeddings, alias=alias, params=params, on_batch=inserted,
                                        keep=m.keep_collections, token=token)
    print(f"alias '{alias}' -> {name} at {uri} ({bar.n} rows, {time.perf_counter() - t:.1f} s)")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@_clean_errors
def _serve_triton(args: argparse.Namespace) -> int:
    # lazy: this module serves five groups; only the command that runs loads its clients (pymilvus, feast, tritonclient)
    from components.serving import model_repository
    from components.serving.triton import TritonServer

    repo = Path(args.repository)
    if args.export:
        opt = model_repository.RepositoryOptions(max_queue_delay_us=args.max_queue_delay_us,
                                                 ranker_instances=args.instances)
        model_repository.materialize(args.export, repo, target=args.target, options=opt)
        print(f"materialised {repo} (target {args.target}) from {args.export}")
    if args.materialize_only:
        return 0
    if args.target != "python_onnx":
        raise SystemExit(f"error: the local tritonserver has only the python backend; target '{args.target}' is for "
                         "Triton containers on a cluster (use --materialize-only)")
    server = TritonServer(repo, http_port=args.http_port, grpc_port=args.grpc_port)
    server.start()
    print(f"tritonserver ready: http {server.url}  grpc {server.grpc_url}  (log {server.log_path}); Ctrl-C stops",
          flush=True)
    if args.ready_file:
        Path(args.ready_file).write_text(json.dumps({"http": server.url, "grpc": server.grpc_url,
                                                        "pid": server.process.pid}) + "\n")
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the server as Ctrl-C does
    try:
        while server.process.poll() is None:
            time.sleep(0.5)
        print(f"tritonserver exited with code {server.process.returncode}:\n{server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def _recommend_config(args: argparse.Namespace):
    """The recommend path of ``--stack`` with the explicitly given flags on top."""
    # lazy: this module serves five groups; only the command that runs loads its clients (pymilvus, feast, tritonclient)
    from components.serving.recommend import RecommendConfig
    from components.stackconfig import load_stack

    stack = load_stack(args.stack)
    over = {"feature_repo": args.feature_repo and Path(args.feature_repo), "milvus_uri": args.milvus,
            "triton_url": args.triton, "protocol": args.protocol, "candidates": args.candidates,
            "preprocess": (args.preprocess or args.repository) and Path(args.preprocess or args.repository)}
    return RecommendConfig.from_stack(stack, **{k: v for k, v in over.items() if v is not None}), stack


@_clean_errors
def _recommend(args: argparse.Namespace) -> int:
    # lazy: this module serves five groups; only the command that runs loads its clients (pymilvus, feast, tritonclient)
    from components.serving.recommend import check_limits, format_table, recommend

    cfg, _ = _recommend_config(args)
    check_limits(args.k, cfg.candidates, cfg.max_k, cfg.max_candidates)
    rec = recommend(cfg, args.user, args.k, surface=args.surface)
    print(json.dumps(rec.to_dict(), indent=2) if args.json else format_table(rec))
    return 0


TOKEN_FILE = Path("/var/run/secrets/homefeed/api-token")  # where the chart mounts the token Secret


def _service_token(args: argparse.Namespace, stack) -> str:
    """--token-file, else the stack's service.token reference, else the chart's mounted Secret file."""
    # lazy: this module serves five groups; only the command that runs loads its clients (pymilvus, feast, tritonclient)
    from components.stackconfig import SecretRef

    if args.token_file:
        return SecretRef(file=args.token_file).resolve("--token-file")
    if stack.service.token is not None:
        return stack.service.token.resolve("service.token")
    if TOKEN_FILE.is_file():
        return SecretRef(file=str(TOKEN_FILE)).resolve(str(TOKEN_FILE))
    raise SystemExit("error: the recommend service needs a bearer token: --token-file F, service.token in the stack "
                     f"file ({{env: HOMEFEED_API_TOKEN}}), or {TOKEN_FILE}")


@_clean_errors
def _serve_recommend(args: argparse.Namespace) -> int:
    # lazy: this module serves five groups; only the command that runs loads its clients (pymilvus, feast, tritonclient)
    from components.serving.service import ServiceSettings, run

    cfg, stack = _recommend_config(args)
    if args.concurrency < 1:
        raise SystemExit(f"error: --concurrency must be >= 1, got {args.concurrency}")
    cache = {"pin_cache_size": args.pin_cache_size, "pin_cache_max_age_s": args.pin_cache_max_age,
             "pin_cache_warm": args.pin_cache_warm}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in cache.items() if v is not None})
    settings = ServiceSettings(recommend=cfg, token=_service_token(args, stack), concurrency=args.concurrency)
    scheme = "https" if args.tls_cert else "http"
    print(f"recommend service on {scheme}://{args.host}:{args.port} (stack {stack.source}); Ctrl-C stops", flush=True)
    run(settings, args.host, args.port, tls_cert=args.tls_cert, tls_key=args.tls_key, log_level=args.log_level)
    return 0


@_clean_errors
def _embed_set_current(args: argparse.Namespace) -> int:
    # lazy: this module serves five groups; only the command that runs loads its clients (pymilvus, feast, tritonclient)
    from components.data.tables import VersionedStore

    store = VersionedStore(args.store)
    before = store.current()
    store.set_current(args.version)
    print(f"{args.store}: CURRENT {before} -> {args.version} (versions: {', '.join(store.versions())})")
    return 0


def _add_recommend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stack", help="stack file or profile (local|server); default $HOMEFEED_STACK, else local")
    p.add_argument("--candidates", type=int, help="N candidates from Milvus (default min(500, service.max_candidates))")
    p.add_argument("--feature-repo", help="Feast repo instance (default: the stack's feast.repo)")
    p.add_argument("--milvus", help="Milvus URI: a Milvus Lite file or http://host:19530 (default: the stack's)")
    p.add_argument("--triton", help="Triton endpoint host:port of --protocol (default: the stack's)")
    p.add_argument("--protocol", choices=["grpc", "http"], help="Triton protocol (default: the stack's)")
    p.add_argument("--repository", help="served model repository, for preprocess.json (default: the stack's)")
    p.add_argument("--preprocess", help="preprocess.json or export dir (default: from --repository)")


def _at_least(low: float, kind: type = int, strict: bool = False) -> Callable[[str], float]:
    """An argparse type: a number >= ``low`` (> ``low`` if ``strict``); argparse exits 2 naming the flag otherwise."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text}")
        return value
    return parse


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    fa = groups["features"].add_parser("apply", help="instantiate the Feast repo, write its sources, feast apply")
    fa.add_argument("--stack", help="stack file or profile (default $HOMEFEED_STACK, else local): the Feast stores")
    fa.add_argument("--repo", help="repo instance directory (default: the stack's feast.repo)")
    fa.add_argument("--data", help="data directory (ranker features from its impressions)")
    fa.add_argument("--date", help="snapshot date YYYY-MM-DD of the sources")
    fa.add_argument("--user-embeddings", help="PinnerFormer user embedding table or VersionedStore root")
    fa.add_argument("--pin-embeddings", help="PinSage pin embedding table or VersionedStore root")
    fa.add_argument("--batch-rows", type=int, default=10_000, help="rows read and written at a time (memory bound)")
    fa.set_defaults(func=_features_apply)

    fm = groups["features"].add_parser("materialize", help="load the online store up to the end of --date")
    fm.add_argument("--stack", help="stack file or profile (default $HOMEFEED_STACK, else local)")
    fm.add_argument("--repo", help="repo instance directory (default: the stack's feast.repo)")
    fm.add_argument("--date", required=True, help="YYYY-MM-DD (UTC); incremental; re-running the latest date "
                    "reloads (corrects) it")
    fm.add_argument("--force", action="store_true", help="reload an older date than the store holds (backfill)")
    fm.add_argument("--batch-rows", type=int, default=10_000, help="source rows per online-store write (memory bound)")
    fm.set_defaults(func=_features_materialize)

    ib = groups["index"].add_parser("build", help="index a pin embedding table in Milvus and switch the alias")
    ib.add_argument("--stack", help="stack file or profile (default $HOMEFEED_STACK, else local): URI, token, alias, "
                    "keep_collections")
    ib.add_argument("--uri", help="Milvus URI: a local path (Milvus Lite) or http://host:19530 (default: the stack's; "
                    "an explicit URI connects without the stack's token)")
    ib.add_argument("--embeddings", required=True, help="pin embedding table (file or VersionedStore root)")
    ib.add_argument("--alias", help="default: the stack's milvus.alias")
    ib.add_argument("--m", type=int, default=16, help="HNSW M")
    ib.add_argument("--ef-construction", type=int, default=200)
    ib.set_defaults(func=_index_build)

    st = groups["serve"].add_parser("triton", help="materialise the ranker repository and run a local tritonserver")
    st.add_argument("--export", help="ranker export dir (model.onnx + preprocess.json); omit to serve --repository as is")
    st.add_argument("--repository", default=str(DEFAULT_REPOSITORY), help="the model repository to write and serve")
    st.add_argument("--target", default="python_onnx", choices=["python_onnx", "onnxruntime", "tensorrt_plan"])
    st.add_argument("--materialize-only", action="store_true", help="write the repository and exit")
    st.add_argument("--http-port", type=int, default=0, help="0 = a free port")
    st.add_argument("--grpc-port", type=int, default=0, help="0 = a free port")
    st.add_argument("--max-queue-delay-us", type=int, default=2000, help="dynamic batching delay of the ranker")
    st.add_argument("--instances", type=int, default=1, help="ranker instances")
    st.add_argument("--ready-file", help="write the endpoints as JSON here once ready")
    st.set_defaults(func=_serve_triton)

    # `homefeed recommend --user U`: the group itself is the command (no sub-command).
    action = groups["recommend"]
    action.required = False
    action.help = argparse.SUPPRESS
    rp = action.group_parser
    rp.add_argument("--user", type=int, required=True)
    rp.add_argument("--k", type=int, default=20)
    rp.add_argument("--surface", default="homefeed")
    rp.add_argument("--json", action="store_true")
    _add_recommend_args(rp)
    rp.set_defaults(func=_recommend)

    sr = groups["serve"].add_parser("recommend", help="the recommend HTTP service (bearer token, Prometheus metrics)")
    sr.add_argument("--host", default="127.0.0.1")
    sr.add_argument("--port", type=int, default=8080)
    sr.add_argument("--token-file", help="file holding the bearer token (default: the stack's service.token)")
    sr.add_argument("--tls-cert", help="PEM certificate file: serve HTTPS")
    sr.add_argument("--tls-key", help="PEM private key file of --tls-cert")
    sr.add_argument("--concurrency", type=int, default=8, help="requests served at once (connections held)")
    sr.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    sr.add_argument("--pin-cache-size", type=_at_least(0),
                    help="pins whose ranker features are cached in process (default 200000, ~700 bytes each at "
                         "d=64; 0: off)")
    sr.add_argument("--pin-cache-max-age", type=_at_least(0, float, strict=True),
                    help="seconds before a cached pin is read from Feast again (default 600)")
    sr.add_argument("--pin-cache-warm", type=_at_least(0),
                    help="most popular pins read into the cache in the background at start (default 1000)")
    _add_recommend_args(sr)
    sr.set_defaults(func=_serve_recommend)

    es = groups["embed"].add_parser("set-current", help="point a VersionedStore's CURRENT at a version (rollback)")
    es.add_argument("--store", required=True, help="VersionedStore root, e.g. out/serving/embeddings/users")
    es.add_argument("--version", required=True)
    es.set_defaults(func=_embed_set_current)
