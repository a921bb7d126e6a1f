"""`meta-embed index build` and `meta-embed serve`: flags into a `ServingConfig`, then the
serving library (`serving.state.load_state`; `serving.app.create_app` under uvicorn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from meta_embed_cli.options import build, examples, option, verbose
from serving.serving_config import IndexConfig, ServingConfig

INDEX_EPILOG = examples(
    "meta-embed index build --root runs/snapshots --checkpoint runs/ckpt --items data/ml-1m/items.parquet",
    "",
    "builds ROOT/snapshots/<CURRENT>/indexes/<key>/ (store arrays, items.faiss, users.faiss, meta.json);",
    "`serve` builds them itself when missing, so this step only saves the server the work.",
)

SERVE_EPILOG = examples(
    "meta-embed serve --root runs/snapshots --checkpoint runs/ckpt --items data/ml-1m/items.parquet \\",
    "    --users data/ml-1m/users.parquet --host 127.0.0.1 --port 8000",
    "curl -s localhost:8000/v1/info",
    "",
    "The server polls ROOT/CURRENT every --reload-interval seconds and swaps to a new snapshot (and,",
    "if its model_version changed, to the checkpoint named by the manifest or ROOT/MODEL).",
)

CONFIG_FLAGS = {
    "reload_interval_s": "--reload-interval",
    "max_age_s": "--max-age (hours)",
    "items_approx": "--items-index",
    "users_approx": "--users-index",
}


def _inputs(f: Any) -> Any:
    """The flags `index build` and `serve` share: where the inputs are, and the indexes."""
    for decorator in reversed(
        [
            option(
                "--root",
                required=True,
                help="snapshot root (holds CURRENT and snapshots/): a path, or an s3:// or gs:// URL",
            ),
            option(
                "--checkpoint",
                help="checkpoint (a path or an s3:// or gs:// URL) used when neither the manifest's "
                "'checkpoint' key nor ROOT/MODEL names one with the snapshot's model_version",
            ),
            option("--items", required=True, help="items table: Parquet file or directory, or a file's URL"),
            option("--users", help="users table (as --items): cold users get zero-step embeddings from it"),
            option(
                "--fp16", is_flag=True, help="store embeddings as float16 (half the memory; see docs/api.md)"
            ),
            option(
                "--threads",
                type=int,
                default=ServingConfig.threads,
                help="PyTorch/FAISS/BLAS threads per request",
            ),
            option(
                "--exact-below",
                type=int,
                default=IndexConfig.exact_below,
                help="exact Flat index below this many vectors",
            ),
            option(
                "--items-index",
                type=click.Choice(["ivf", "hnsw"]),
                default=IndexConfig.items_approx,
                help="item index above the threshold (built once per model release)",
            ),
            option(
                "--users-index",
                type=click.Choice(["ivf", "hnsw"]),
                default=IndexConfig.users_approx,
                help="lookalike index above the threshold (rebuilt with every snapshot)",
            ),
            option("--nlist", type=int, default=IndexConfig.nlist, help="IVF lists (0 = about sqrt(n))"),
            option("--nprobe", type=int, default=IndexConfig.nprobe, help="IVF search budget"),
            option("--hnsw-m", type=int, default=IndexConfig.hnsw_m, help="HNSW links per node"),
            option("--ef-search", type=int, default=IndexConfig.ef_search, help="HNSW search budget"),
            option(
                "--rerank-depth",
                type=int,
                default=ServingConfig.rerank_depth,
                help="FAISS candidates reranked by the scorer",
            ),
        ]
    ):
        f = decorator(f)
    return f


def serving_config(
    root: Path | str,
    checkpoint: Path | str | None,
    items: Path | str,
    users: Path | str | None,
    fp16: bool,
    threads: int,
    exact_below: int,
    items_index: str,
    users_index: str,
    nlist: int,
    nprobe: int,
    hnsw_m: int,
    ef_search: int,
    rerank_depth: int,
    **server: Any,
) -> ServingConfig:
    """The ServingConfig of the flags (`server`: the flags only `serve` has, by ServingConfig field)."""
    index = build(
        IndexConfig,
        CONFIG_FLAGS,
        exact_below=exact_below,
        items_approx=items_index,
        users_approx=users_index,
        nlist=nlist,
        nprobe=nprobe,
        hnsw_m=hnsw_m,
        ef_search=ef_search,
    )
    return build(
        ServingConfig,
        CONFIG_FLAGS,
        root=root,
        items=items,
        checkpoint=checkpoint,
        users=users,
        fp16=fp16,
        threads=threads,
        rerank_depth=rerank_depth,
        index=index,
        **server,
    )


@click.group(epilog=INDEX_EPILOG)
def index() -> None:
    """Build FAISS indexes and store files for the current snapshot."""


SERVER_FLAGS = {"reload_interval": "reload_interval_s", "max_body_bytes": "max_body_bytes",
                "keep_alive": "keep_alive_s", "header_timeout": "header_timeout_s",
                "max_header_bytes": "max_header_bytes", "max_connections": "max_connections",
                "access_log": "access_log"}  # fmt: skip
"""`serve`'s own flags that set ServingConfig fields (besides --max-age, in hours)."""


def serve_config(max_age: float, **flags: Any) -> ServingConfig:
    """The ServingConfig of `serve`'s flags (host, port, workers and log level aside)."""
    server = {field: flags.pop(flag) for flag, field in SERVER_FLAGS.items()}
    return serving_config(**flags, **server, max_age_s=max_age * 3600.0)


@index.command("build", epilog=INDEX_EPILOG)
@_inputs
def index_build(**flags: Any) -> int:
    """Build (or verify) the current snapshot's serving artifacts."""
    from meta_embed.config import write_config
    from serving.state import Sources, load_state

    cfg = serving_config(**flags)
    state = load_state(cfg, Sources.read(cfg))
    write_config(cfg, state.directory, "serving_config.json")
    click.echo(
        f"indexes for snapshot {state.snapshot} (model_version {state.model_version}) in {state.directory}"
    )
    click.echo(f"  items: {state.items_index.ntotal} vectors, {state.items_index.factory}")
    click.echo(f"  users: {state.users_index.ntotal} vectors, {state.users_index.factory}")
    return 0


@click.command(epilog=SERVE_EPILOG)
@_inputs
@option("--host", default="127.0.0.1", help="address to bind (loopback unless told otherwise)")
@option("--port", type=int, default=8000)
@option(
    "--reload-interval",
    type=float,
    default=ServingConfig.reload_interval_s,
    help="seconds between checks of ROOT/CURRENT (0 = no hot reload)",
)
@option(
    "--max-age",
    type=float,
    default=ServingConfig.max_age_s / 3600,
    help="hours after which a snapshot's users read 'stale'",
)
@option(
    "--max-body-bytes", type=int, default=ServingConfig.max_body_bytes, help="request body limit (413 above)"
)
@option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    help="server processes on the port (SO_REUSEPORT), each with its own state and reload watcher "
    "(about one per core)",
)
@option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
@option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    help="json: one JSON object per line (ts, level, logger, message)",
)
@option("--access-log", is_flag=True, help="log one line per request (client, method, path, status)")
@option(
    "--keep-alive",
    type=float,
    default=ServingConfig.keep_alive_s,
    help="seconds an idle kept-alive connection stays open",
)
@option(
    "--header-timeout",
    type=float,
    default=ServingConfig.header_timeout_s,
    help="seconds a connection has to send a request's headers (an idle or stalled one is closed)",
)
@option(
    "--max-header-bytes",
    type=int,
    default=ServingConfig.max_header_bytes,
    help="request headers larger than this are answered 431",
)
@option(
    "--max-connections",
    type=int,
    default=ServingConfig.max_connections,
    help="connections per server process; requests beyond them are answered 503",
)
def serve(host: str, port: int, workers: int, log_level: str, log_format: str, **flags: Any) -> int:
    """Serve embeddings, scores, recommendations and lookalikes over HTTP."""
    import json

    import uvicorn

    from meta_embed.config import to_dict
    from meta_embed.logs import LogConfig, configure
    from serving.app import create_app
    from serving.http_server import claim_port, listening_socket, uvicorn_config
    from serving.state import Sources, load_state
    from serving.workers import serve_workers

    cfg = serve_config(**flags)
    log = LogConfig(log_level, log_format, verbose=verbose(click.get_current_context()))
    configure(log)
    click.echo("config: " + json.dumps(to_dict(cfg), sort_keys=True))  # serve writes no files
    with claim_port(host, port):
        if workers > 1:
            state = load_state(
                cfg, Sources.read(cfg)
            )  # build any missing artifacts once, before workers start
            click.echo(f"serving snapshot {state.snapshot} (model_version {state.model_version}) on "
                       f"http://{host}:{port} with {workers} worker processes")  # fmt: skip
            del state
            return serve_workers(cfg, host, port, workers, log)
        app = create_app(cfg.root, cfg)
        state = app.state.holder.state
        click.echo(f"serving snapshot {state.snapshot} (model_version {state.model_version}) on "
                   f"http://{host}:{port} with 1 worker process")  # fmt: skip
        sock = listening_socket(host, port, reuse_port=False)
        uvicorn.Server(uvicorn_config(app, cfg, log_level)).run(sockets=[sock])
    return 0
