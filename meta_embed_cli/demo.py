"""`meta-embed demo`: the whole journey on real MovieLens-100K, one step after another.

fetch + prepare -> DuckDB summary -> meta-train -> Beam refresh (DirectRunner) ->
FAISS indexes + HTTP server on loopback -> a few real requests -> stop the server by
its process id -> offline A/B evaluation against wide-and-deep (quick preset).

Re-running reuses the prepared data and the fetched wheel; the server is started as a
separate process (`meta-embed serve`) exactly as an operator would start it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import httpx

from meta_embed.config import MamlConfig, TrainConfig, write_config
from meta_embed_cli.options import build, examples, option
from pipeline.evaluation.evaluation_config import quick_config
from pipeline.refresh.refresh_config import RefreshConfig
from pipeline.training.training_config import TrainJobConfig


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    workdir: str = "runs/demo"
    dataset: str = "movielens-100k"
    epochs: int = 6
    evaluate: bool = True
    server_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.server_timeout_s <= 0:
            raise ValueError("DemoConfig: epochs must be >= 1 and server_timeout_s > 0")


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _done(start: float) -> None:
    print(f"   ({time.perf_counter() - start:.1f} s)", flush=True)


def data_summary(data: Path) -> dict[str, int]:
    """Counts of the prepared tables, with DuckDB straight over the Parquet files."""
    import duckdb

    con = duckdb.connect()
    q = lambda sql: con.execute(sql).fetchone()  # noqa: E731
    inter = str(data / "interactions.parquet")
    users, items, rows = q(
        f"SELECT count(DISTINCT user_id), count(DISTINCT item_id), count(*) FROM read_parquet('{inter}')"
    )
    positives, first, last = q(f"SELECT avg(label), min(ts), max(ts) FROM read_parquet('{inter}')")
    print(
        f"   {users} users, {items} items, {rows:,} interactions; positive rate {positives:.3f}; {first} .. "
        f"{last}"
    )
    return {"users": users, "items": items, "interactions": rows}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, ckpt: Path, data: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "meta_embed_cli",
        "serve",
        "--root",
        str(root),
        "--checkpoint",
        str(ckpt),
        "--items",
        str(data / "items.parquet"),
        "--users",
        str(data / "users.parquet"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, url: str, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server did not answer /healthz within {timeout_s:.0f} s; see {log}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def _show(label: str, response: httpx.Response, keep: int = 5) -> dict[str, Any]:
    body = response.json()
    shown = {k: (v[:keep] + ["..."] if isinstance(v, list) and len(v) > keep else v) for k, v in body.items()}
    print(f"   {label} -> {response.status_code}\n     {json.dumps(shown)[:600]}")
    return body


def requests_tour(url: str, user: str, items: list[str]) -> dict[str, Any]:
    """The requests a client sends; returns the answers."""
    with httpx.Client(base_url=url, timeout=30.0) as c:
        out = {"info": _show("GET /v1/info", c.get("/v1/info"))}
        out["embedding"] = _show(
            f"GET /v1/users/{user}/embedding", c.get(f"/v1/users/{user}/embedding"), keep=4
        )
        out["score"] = _show(
            f"POST /v1/score user {user}, {len(items)} items",
            c.post("/v1/score", json={"user_id": user, "item_ids": items}),
        )
        out["recommend"] = _show(
            f"POST /v1/recommend user {user} k=10 (exclude_seen: true, the default: none of the user's "
            "recent items)",
            c.post("/v1/recommend", json={"user_id": user, "k": 10, "exclude_seen": True}),
        )
        out["recommend_seen"] = _show(
            f"POST /v1/recommend user {user} k=10, exclude_seen: false",
            c.post("/v1/recommend", json={"user_id": user, "k": 10, "exclude_seen": False}),
        )
        fresh = {i["item_id"] for i in out["recommend"]["items"]}
        back = [i["item_id"] for i in out["recommend_seen"]["items"] if i["item_id"] not in fresh]
        noun = "item" if len(back) == 1 else "items"
        print(f"     exclude_seen: false brings back {len(back)} {noun} user {user} rated recently: {back}")
        out["similar"] = _show(
            f"GET /v1/users/{user}/similar?k=5", c.get(f"/v1/users/{user}/similar", params={"k": 5})
        )
        out["cold"] = _show(
            "GET /v1/users/new-user-0001/embedding (never seen: the cold-start answer)",
            c.get("/v1/users/new-user-0001/embedding"),
            keep=4,
        )
    return out


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    import duckdb

    from pipeline.data.prepare import prepare
    from pipeline.evaluation.evaluation_job import evaluate
    from pipeline.refresh.refresh_job import refresh
    from pipeline.training.train_job import train

    work = Path(cfg.workdir)
    data, ckpt, root = work / "data", work / "checkpoint", work / "snapshots"
    write_config(cfg, work, "demo_config.json")

    t = _step(f"1/6 fetch + prepare {cfg.dataset}")
    if not (data / "prepare_summary.json").is_file():
        prepare(cfg.dataset, data)
    counts = data_summary(data)
    _done(t)

    t = _step("2/6 meta-train the two-block model (MAML over the meta block)")
    result = train(
        TrainJobConfig(
            data=str(data),
            out=str(ckpt),
            maml=MamlConfig(),
            train=TrainConfig(max_epochs=cfg.epochs, threads=1),
        )
    )
    print(
        f"   model_version {result.model_version}: validation {result.metric} {result.best_metric:.4f} "
        f"at epoch {result.best_epoch}"
    )
    _done(t)

    t = _step(
        "3/6 nightly refresh on Apache Beam (local runner, 2 worker processes): a full run, then an "
        "incremental one"
    )
    last = (
        duckdb.connect()
        .execute(f"SELECT max(ts) FROM read_parquet('{data / 'interactions.parquet'}')")
        .fetchone()[0]
    )
    tonight = (last + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    for as_of, incremental in ((tonight - dt.timedelta(days=7), False), (tonight, True)):
        snap = refresh(
            RefreshConfig(
                interactions=str(data / "interactions.parquet"),
                users=str(data / "users.parquet"),
                items=str(data / "items.parquet"),
                checkpoint=str(ckpt),
                as_of=as_of,
                out=str(root),
                incremental=incremental,
            )
        )
        c = snap.counts
        print(
            f"   as_of {as_of:%Y-%m-%d}: {snap.mode}, {c['users']} users = {c['users_adapted']} adapted + "
            f"{c['users_zero_step']} zero-step + {c['users_carried_forward']} carried forward "
            f"({snap.seconds:.1f} s) -> {snap.name}"
        )
    _done(t)

    t = _step("4/6 serve: FAISS indexes + HTTP API on 127.0.0.1")
    log = work / "server.log"
    proc, url = start_server(root, ckpt, data, log)
    try:
        wait_ready(proc, url, cfg.server_timeout_s, log)
        print(f"   server pid {proc.pid} at {url}")
        _done(t)
        t = _step("5/6 requests")
        items = [
            r[0]
            for r in duckdb.connect()
            .execute(
                f"SELECT item_id FROM read_parquet('{data / 'interactions.parquet'}') GROUP BY item_id "
                "ORDER BY count(*) DESC, item_id LIMIT 5"
            )
            .fetchall()
        ]
        print(
            "   (MovieLens-100K ends in April 1998: every snapshot is older than `serve --max-age` hours, "
            "48 by default, so its users read 'stale')"
        )
        answers = requests_tour(url, "42", items)
    finally:
        stop_server(proc)
        print(f"   server pid {proc.pid} stopped")
    _done(t)

    report = None
    if cfg.evaluate:
        t = _step("6/6 offline A/B evaluation against wide-and-deep (quick preset)")
        ev = evaluate(dataclasses.replace(quick_config(str(work / "report")), dataset=cfg.dataset))
        report = ev.report
        print(ev.headline)
        print(f"\n   report: {report}")
        _done(t)
    return {
        "counts": counts,
        "model_version": result.model_version,
        "snapshot": snap.name,
        "answers": answers,
        "report": str(report) if report else None,
    }


@click.command(epilog=examples("meta-embed demo --workdir runs/demo        # what `make demo` runs"))
@option("--workdir", default=DemoConfig.workdir, help="where data, checkpoint, snapshots and report go")
@option("--epochs", type=int, default=DemoConfig.epochs, help="maximum meta-training epochs")
@option("--no-evaluate", is_flag=True, help="skip the A/B evaluation step")
def demo(workdir: str, epochs: int, no_evaluate: bool) -> int:
    """The whole journey on real MovieLens-100K, one step after another."""
    start = time.perf_counter()
    run_demo(build(DemoConfig, workdir=workdir, epochs=epochs, evaluate=not no_evaluate))
    click.echo(f"\ndemo finished in {time.perf_counter() - start:.0f} s")
    return 0
