"""``homefeed features apply|materialize``, ``homefeed index build``, ``homefeed serve triton``,
``homefeed recommend``: the serving stack, every path and URI explicit (defaults under out/serving)."""

from __future__ import annotations

import argparse
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
        from components.serving.feast_store import FeatureStoreError
        from components.serving.milvus_index import MilvusIndexError
        from components.serving.model_repository import ModelRepositoryError
        from components.serving.recommend import RecommendError
        from components.serving.triton import TritonError

        try:
            return fn(args)
        except (FeatureStoreError, MilvusIndexError, ModelRepositoryError, RecommendError, TritonError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return run


@_clean_errors
def _features_apply(args: argparse.Namespace) -> int:
    from components.serving import feast_store

    repo = feast_store.init_repo(args.repo)
    if args.data:
        if not args.date:
            raise SystemExit("error: --data needs --date (the snapshot date of the sources, YYYY-MM-DD)")
        counts = feast_store.write_sources(repo, args.data, args.date, args.user_embeddings, args.pin_embeddings)
        print(f"sources as of {args.date}: {counts}")
    names = feast_store.apply(repo)
    print(f"applied {repo}: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in names.items()))
    return 0


@_clean_errors
def _features_materialize(args: argparse.Namespace) -> int:
    from components.serving import feast_store

    for view, interval in feast_store.materialize(args.repo, args.date).items():
        print(f"{view}: {interval}")
    return 0


@_clean_errors
def _index_build(args: argparse.Namespace) -> int:
    from components.serving import milvus_index

    def progress(done: int, total: int) -> None:
        print(f"\rinserted {done}/{total}", end="", flush=True)

    t = time.perf_counter()
    params = milvus_index.HnswParams(m=args.m, ef_construction=args.ef_construction)
    name = milvus_index.build_index(args.uri, args.embeddings, alias=args.alias, params=params, on_batch=progress)
    print(f"\nalias '{args.alias}' -> {name} at {args.uri} ({time.perf_counter() - t:.1f} s)")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@_clean_errors
def _serve_triton(args: argparse.Namespace) -> int:
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


@_clean_errors
def _recommend(args: argparse.Namespace) -> int:
    from components.serving.recommend import RecommendConfig, format_table, recommend

    cfg = RecommendConfig(feature_repo=Path(args.feature_repo), milvus_uri=args.milvus, triton_url=args.triton,
                          preprocess=Path(args.preprocess or args.repository), protocol=args.protocol,
                          candidates=args.candidates, surface=args.surface)
    rec = recommend(cfg, args.user, args.k)
    print(json.dumps(rec.to_dict(), indent=2) if args.json else format_table(rec))
    return 0


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    fa = groups["features"].add_parser("apply", help="instantiate the Feast repo, write its sources, feast apply")
    fa.add_argument("--repo", default=str(DEFAULT_FEATURE_REPO), help="repo instance directory")
    fa.add_argument("--data", help="data directory (ranker features from its impressions)")
    fa.add_argument("--date", help="snapshot date YYYY-MM-DD of the sources")
    fa.add_argument("--user-embeddings", help="PinnerFormer user embedding table or VersionedStore root")
    fa.add_argument("--pin-embeddings", help="PinSage pin embedding table or VersionedStore root")
    fa.set_defaults(func=_features_apply)

    fm = groups["features"].add_parser("materialize", help="load the online store up to the end of --date")
    fm.add_argument("--repo", default=str(DEFAULT_FEATURE_REPO))
    fm.add_argument("--date", required=True, help="YYYY-MM-DD (UTC); incremental and idempotent")
    fm.set_defaults(func=_features_materialize)

    ib = groups["index"].add_parser("build", help="index a pin embedding table in Milvus and switch the alias")
    ib.add_argument("--uri", default=DEFAULT_MILVUS, help="Milvus URI: a local path (Milvus Lite) or http://host:19530")
    ib.add_argument("--embeddings", required=True, help="pin embedding table (file or VersionedStore root)")
    ib.add_argument("--alias", default="pins")
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
    rp.add_argument("--candidates", type=int, default=500, help="N candidates from Milvus")
    rp.add_argument("--feature-repo", default=str(DEFAULT_FEATURE_REPO))
    rp.add_argument("--milvus", default=DEFAULT_MILVUS)
    rp.add_argument("--triton", default="127.0.0.1:8001", help="Triton endpoint (host:port of --protocol)")
    rp.add_argument("--protocol", default="grpc", choices=["grpc", "http"])
    rp.add_argument("--repository", default=str(DEFAULT_REPOSITORY), help="served model repository (for preprocess.json)")
    rp.add_argument("--preprocess", help="preprocess.json or export dir (default: from --repository)")
    rp.add_argument("--surface", default="homefeed")
    rp.add_argument("--json", action="store_true")
    rp.set_defaults(func=_recommend)
