"""`meta-embed serve --workers N`: N server processes on one port.

Each worker binds its own listening socket with SO_REUSEPORT, so the kernel spreads
new connections across the workers by their address hash. (With one shared socket,
whichever worker wakes first accepts a burst of connections: 64 connections opened
together were seen to land 64/0 or 38/26 on two workers.) Every worker loads its own
`ServingState` and runs its own reload watcher. The launching process only supervises:
SIGTERM or SIGINT stops every worker, and if one worker exits the others are stopped
and `serve` exits with an error, so a process manager can restart the whole server.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import signal
import tempfile
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from meta_embed.config import from_dict, to_dict
from meta_embed.logs import LogConfig, configure
from serving.http_server import listening_socket, uvicorn_config
from serving.serving_config import ServingConfig
from serving.telemetry import MULTIPROC_ENV

STOP_TIMEOUT_S = 30.0


def _worker(config: dict[str, Any], host: str, port: int, log: LogConfig) -> None:
    import uvicorn

    from serving.app import create_app

    configure(log)  # a spawned interpreter starts with logging unconfigured
    cfg = from_dict(ServingConfig, config)
    sock = listening_socket(host, port, reuse_port=True)
    uvicorn.Server(uvicorn_config(create_app(cfg.root, cfg), cfg, log.level)).run(sockets=[sock])


def serve_workers(cfg: ServingConfig, host: str, port: int, workers: int, log: LogConfig) -> int:
    """Run `workers` server processes until a signal or a worker's exit; returns the exit code.
    The caller holds the port (`http_server.claim_port`); the workers share one cache of
    private artifact copies and one folder of metric files, each removed at the end if this
    call created it."""
    own_cache = cfg.cache_dir is None
    if own_cache:
        cfg = dataclasses.replace(cfg, cache_dir=Path(tempfile.mkdtemp(prefix="meta-embed-serve-")))
    own_metrics = not os.environ.get(MULTIPROC_ENV)
    if own_metrics:  # the workers' metric files (see serving.telemetry); inherited by the spawned workers
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="meta-embed-metrics-")
    try:
        return _supervise(cfg, host, port, workers, log)
    finally:
        if own_cache:
            shutil.rmtree(cfg.cache_dir, ignore_errors=True)
        if own_metrics:
            shutil.rmtree(os.environ.pop(MULTIPROC_ENV), ignore_errors=True)


def _supervise(cfg: ServingConfig, host: str, port: int, workers: int, log: LogConfig) -> int:
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no torch/FAISS state forked
    procs = [
        ctx.Process(target=_worker, args=(to_dict(cfg), host, port, log), name=f"serve-worker-{i}")
        for i in range(workers)
    ]
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.is_alive():
                p.terminate()  # uvicorn shuts down gracefully on SIGTERM

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for p in procs:
            p.start()
        wait([p.sentinel for p in procs])  # the first worker to exit (or all, after a signal)
        crashed = not stopping
        stop()
        for p in procs:
            p.join(STOP_TIMEOUT_S)
            if p.is_alive():
                p.kill()
                p.join()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if crashed:
        codes = {p.name: p.exitcode for p in procs}
        print(f"a server worker exited on its own (exit codes {codes}); stopped the others", flush=True)
        return 1
    return 0
