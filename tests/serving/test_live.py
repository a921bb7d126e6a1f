"""A real uvicorn server on loopback (one process, and two worker processes) under a bounded
request loop while a new snapshot (from a new model release) is published: no request fails,
answers switch to the new as_of, and every answer is consistent (scores, embeddings and
model_version of one state). /metrics, scraped from the server, counts every request and
reload of every worker; the JSON log has each worker's swap and an access line per request.
Stopping the server by its pid stops its workers too."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import torch

from meta_embed import checkpoint
from meta_embed.features import encode, take
from tests.servers import free_port
from tests.serving.world import (
    MAML_CFG,
    SPEC,
    build_world,
    make_model,
    metric_samples,
    publish,
    serve_command,
)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ITEMS = [f"i{r}" for r in range(0, 300, 15)]
AS_OF = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
MAX_REQUESTS, MAX_SECONDS = 4000, 90.0


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def server(tmp_path, request):
    w = build_world(tmp_path / "w", as_of=AS_OF)
    port = free_port()
    cmd = serve_command(w, port, "--users", str(w.base / "users.parquet"), "--reload-interval", "0.2",
                        "--log-format", "json", "--access-log", "--workers", str(request.param))  # fmt: skip
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONPATH": str(REPO)}
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail("server did not come up: " + (tmp_path / "server.log").read_text())
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len(workers) >= (request.param if request.param > 1 else 0)
        yield w, base, request.param, tmp_path / "server.log"
    finally:
        proc.terminate()  # the server, by its pid; uvicorn stops its worker processes
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    _, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, alive


def expected_scores(model, items, e: np.ndarray) -> np.ndarray:
    rows = torch.tensor([int(i[1:]) for i in ITEMS])
    with torch.no_grad():
        ctx = model.context_vectors({c.name: torch.zeros(len(ITEMS), dtype=torch.long) for c in SPEC.context})
        return model.global_block(
            torch.tensor(e), model.item_tower(take(encode(items, SPEC.item), rows)), ctx
        ).numpy()


def load_loop(base: str, results: list, stop: threading.Event, worker: int) -> None:
    started = time.monotonic()
    with httpx.Client(base_url=base, timeout=30) as client:  # a reload may hold a worker on a busy machine
        while not stop.is_set() and len(results) < MAX_REQUESTS and time.monotonic() - started < MAX_SECONDS:
            try:
                r = client.post("/v1/score", json={"user_id": "u1", "item_ids": ITEMS})
                results.append((worker, r.status_code, r.json() if r.status_code == 200 else r.text))
            except httpx.HTTPError as err:
                results.append((worker, None, repr(err)))


def test_publishing_under_load_swaps_without_a_failed_request(server, tmp_path) -> None:
    w, base, n_workers, log = server
    new_model = make_model(seed=11)
    new_version = checkpoint.save(new_model, MAML_CFG, tmp_path / "release")
    new_emb = np.random.default_rng(5).normal(size=(30, 8)).astype(np.float32)
    results: list = []
    stop = threading.Event()
    workers = [threading.Thread(target=load_loop, args=(base, results, stop, i)) for i in range(4)]
    for t in workers:
        t.start()
    try:
        _wait(lambda: len(results) >= 100)
        publish(
            w.root,
            new_version,
            [f"u{i}" for i in range(30)],
            new_emb,
            AS_OF + dt.timedelta(days=1),
            "r2",
            {"checkpoint": str(tmp_path / "release")},
        )
        _wait(lambda: sum(1 for r in results if r[1] == 200 and r[2]["model_version"] == new_version) >= 100)
    finally:
        stop.set()
        for t in workers:
            t.join(30)
    failed = [r for r in results if r[1] != 200]
    assert not failed, failed[:5]
    answers = [r[2] for r in results]
    new_as_of = (AS_OF + dt.timedelta(days=1)).isoformat()
    assert answers[0]["as_of"] == AS_OF.isoformat() and answers[-1]["as_of"] == new_as_of
    for worker in range(4):  # one swap: a worker never goes back to the old state
        seq = [r[2]["as_of"] == new_as_of for r in results if r[0] == worker]
        assert seq == sorted(seq)
    old_scores = expected_scores(w.model, w.items, w.embeddings[1])
    new_scores = expected_scores(new_model, w.items, new_emb[1])
    for a in answers:  # scorer and embeddings always from the same release
        want = (new_version, new_scores) if a["as_of"] == new_as_of else (w.version, old_scores)
        assert a["model_version"] == want[0]
        np.testing.assert_allclose(a["scores"], want[1], rtol=1e-5, atol=1e-6)
    info = httpx.get(base + "/v1/info").json()
    assert (
        info["reload"]["swaps"] == 1
        and info["reload"]["failures"] == 0
        and info["model_version"] == new_version
    )
    scrape = lambda: metric_samples(httpx.get(base + "/metrics").text)  # noqa: E731 (any worker: all counts)
    swapped = ("meta_embed_reloads_total", (("result", "success"),))
    _wait(lambda: scrape().get(swapped) == n_workers)  # one swap per worker (the last may still be loading)
    scraped = scrape()
    score_ok = (("method", "POST"), ("route", "/v1/score"), ("status", "200"))
    assert scraped["meta_embed_requests_total", score_ok] == len(results)
    assert scraped["meta_embed_answers_total", (("embedding_status", "fresh"),)] == len(results)
    assert scraped["meta_embed_snapshot_users", ()] == 30
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    swaps = [r for r in records if r["logger"] == "serving.reload"]
    assert len(swaps) == n_workers and all(f"model_version was {w.version}" in r["message"] for r in swaps)
    access = [r for r in records if r["logger"] == "uvicorn.access" and r["path"] == "/v1/score"]
    assert len(access) == len(results) and {r["status"] for r in access} == {200}


def _wait(condition, timeout_s: float = MAX_SECONDS) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_worker_that_dies_stops_the_deployment_with_an_error(tmp_path) -> None:
    w = build_world(tmp_path / "w", as_of=AS_OF)
    port = free_port()
    cmd = serve_command(w, port, "--reload-interval", "0", "--workers", "2")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ | {"PYTHONPATH": str(REPO)})  # fmt: skip

    def workers() -> list[psutil.Process]:  # the spawned workers, not multiprocessing's resource tracker
        return [
            c for c in psutil.Process(proc.pid).children() if "resource_tracker" not in " ".join(c.cmdline())
        ]

    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(workers()) < 2:
            time.sleep(0.2)
        workers()[0].kill()  # one worker dies
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and "a server worker exited on its own" in out, out
