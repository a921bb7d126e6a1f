"""`meta-embed index build` and `meta-embed serve`: parse flags into a ServingConfig and
call the library (serving.state.load_state, serving.app.create_app + uvicorn).

Also runnable alone: `python -m meta_embed_cli.serve_commands serve --root ... --items ...`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from meta_embed.config import to_dict, write_config
from serving.serving_config import IndexConfig, ServingConfig

INDEX_EPILOG = """example:
  meta-embed index build --root runs/snapshots --checkpoint runs/ckpt --items data/ml-1m/items.parquet
builds ROOT/snapshots/<CURRENT>/indexes/<key>/ (store arrays, items.faiss, users.faiss, meta.json);
`serve` builds them itself when missing, so this step only saves the server the work."""

SERVE_EPILOG = """example:
  meta-embed serve --root runs/snapshots --checkpoint runs/ckpt --items data/ml-1m/items.parquet \\
      --users data/ml-1m/users.parquet --host 127.0.0.1 --port 8000
  curl -s localhost:8000/v1/info
the server polls ROOT/CURRENT every --reload-interval seconds and swaps to a new snapshot
(and, if its model_version changed, to the checkpoint named by the manifest or ROOT/MODEL)."""


def _inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, required=True, help="snapshot root (holds CURRENT and snapshots/)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint used when neither the manifest's "
                   "'checkpoint' key nor ROOT/MODEL names one with the snapshot's model_version")
    p.add_argument("--items", type=Path, required=True, help="items table (Parquet file or directory)")
    p.add_argument("--users", type=Path, help="users table: cold users get zero-step embeddings from it")
    p.add_argument("--fp16", action="store_true", help="store embeddings as float16 (half the memory; see docs/api.md)")
    p.add_argument("--threads", type=int, default=1, help="PyTorch/FAISS threads per request (default 1)")
    p.add_argument("--exact-below", type=int, default=IndexConfig.exact_below,
                   help="exact Flat index below this many vectors (default %(default)s)")
    p.add_argument("--items-index", choices=("ivf", "hnsw"), default=IndexConfig.items_approx,
                   help="item index above the threshold (default %(default)s; built once per model release)")
    p.add_argument("--users-index", choices=("ivf", "hnsw"), default=IndexConfig.users_approx,
                   help="lookalike index above the threshold (default %(default)s; rebuilt with every snapshot)")
    p.add_argument("--nlist", type=int, default=0, help="IVF lists (0 = about sqrt(n))")
    p.add_argument("--nprobe", type=int, default=IndexConfig.nprobe, help="IVF search budget (default %(default)s)")
    p.add_argument("--hnsw-m", type=int, default=IndexConfig.hnsw_m, help="HNSW links per node (default %(default)s)")
    p.add_argument("--ef-search", type=int, default=IndexConfig.ef_search,
                   help="HNSW search budget (default %(default)s)")
    p.add_argument("--rerank-depth", type=int, default=200, help="FAISS candidates reranked by the scorer")


def register(sub: argparse._SubParsersAction) -> None:
    index = sub.add_parser("index", help="build FAISS indexes and store files for the current snapshot",
                           epilog=INDEX_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = index.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    build = actions.add_parser("build", help="build (or verify) the current snapshot's serving artifacts",
                               epilog=INDEX_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _inputs(build)
    build.set_defaults(func=run_index_build)

    serve = sub.add_parser("serve", help="serve embeddings, scores and recommendations over HTTP",
                           epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _inputs(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--reload-interval", type=float, default=10.0,
                       help="seconds between checks of ROOT/CURRENT (0 = no hot reload)")
    serve.add_argument("--max-age", type=float, default=48.0, help="hours after which a snapshot's users are 'stale'")
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit (413 above)")
    serve.add_argument("--workers", type=int, default=1,
                       help="server processes on the port (SO_REUSEPORT), each with its own state and reload "
                            "watcher (about one per core; default 1)")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    serve.set_defaults(func=run_serve)


def config_from_args(args: argparse.Namespace) -> ServingConfig:
    index = IndexConfig(exact_below=args.exact_below, items_approx=args.items_index, users_approx=args.users_index,
                        nlist=args.nlist, nprobe=args.nprobe, hnsw_m=args.hnsw_m, ef_search=args.ef_search)
    extra = {}
    if hasattr(args, "reload_interval"):
        extra = {"reload_interval_s": args.reload_interval, "max_age_s": args.max_age * 3600.0,
                 "max_body_bytes": args.max_body_bytes}
    return ServingConfig(root=args.root, items=args.items, checkpoint=args.checkpoint, users=args.users,
                         fp16=args.fp16, threads=args.threads, rerank_depth=args.rerank_depth, index=index, **extra)


def run_index_build(args: argparse.Namespace) -> int:
    from serving.state import Sources, load_state

    cfg = config_from_args(args)
    state = load_state(cfg, Sources.read(cfg))
    write_config(cfg, state.directory, "serving_config.json")
    print(f"indexes for snapshot {state.snapshot} (model_version {state.model_version}) in {state.directory}")
    print(f"  items: {state.items_index.ntotal} vectors, {state.items_index.factory}")
    print(f"  users: {state.users_index.ntotal} vectors, {state.users_index.factory}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from serving.app import create_app
    from serving.workers import serve_workers

    cfg = config_from_args(args)
    if args.workers < 1:
        raise SystemExit(f"--workers must be >= 1, got {args.workers}")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print("config: " + json.dumps(to_dict(cfg), sort_keys=True), flush=True)  # serve writes no files
    app = create_app(cfg.root, cfg)  # builds any missing artifacts once, before workers start
    state = app.state.holder.state
    print(f"serving snapshot {state.snapshot} (model_version {state.model_version}) on http://{args.host}:{args.port}"
          f" with {args.workers} worker process{'es' if args.workers > 1 else ''}", flush=True)
    if args.workers == 1:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
        return 0
    del app, state
    return serve_workers(cfg, args.host, args.port, args.workers, args.log_level)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meta_embed_cli.serve_commands", description="meta-embed serving commands")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
