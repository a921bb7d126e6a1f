"""The README's tour is a tested artifact: its command lines are read from README.md and
run as written, in a fresh folder, with tiny synthetic MovieLens-1M-layout files standing
in for the dataset name. `data fetch` is the one line left out (it downloads; the fetch
tests cover it). `serve` runs in the background on a free port, and each `curl` line is
sent to it as written (method, body, headers)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.servers import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
DATASET = "movielens-1m"


def tour_commands(readme: Path = REPO / "README.md") -> list[list[str]]:
    """The tour's command lines (continuations joined, comments dropped), as argv lists."""
    text = readme.read_text()
    block = text.split("## A 5-minute tour", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [argv for line in lines if (argv := shlex.split(line, comments=True))]


def write_raw_ml1m(folder: Path, n_users: int = 80, n_items: int = 40, seed: int = 0) -> Path:
    """ML-1M's raw layout ('::'-separated latin-1 .dat files), events from 2000-06 to 2003-02."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    genres = ["Action", "Comedy", "Drama", "Horror", "Romance"]
    movies = (f"{i}::Movie {i} ({1980 + i % 20})::{genres[i % 5]}|{genres[(i * 3) % 5]}\n"
              for i in range(1, n_items + 1))  # fmt: skip
    (folder / "movies.dat").write_bytes("".join(movies).encode("latin-1"))
    (folder / "users.dat").write_text("".join(
        f"{u}::{'MF'[u % 2]}::{[1, 18, 25, 35, 45, 50, 56][u % 7]}::{u % 21}::{10000 + u}\n"
        for u in range(1, n_users + 1)
    ))  # fmt: skip
    start, end = 959817600, 1043884800  # 2000-06-01 .. 2003-01-30
    rows = []
    for u in range(1, n_users + 1):
        for i in rng.choice(np.arange(1, n_items + 1), size=20, replace=False):
            rows.append(f"{u}::{i}::{1 + (u * i) % 5}::{int(rng.integers(start, end))}\n")
    (folder / "ratings.dat").write_text("".join(rows))
    return folder


def curl(argv: list[str], port: int) -> httpx.Response:
    """Send a `curl -s [-XMETHOD] URL [-d BODY] [-H HEADER]` line of the tour."""
    method, body, headers, url, args = "GET", None, {}, None, iter(argv[1:])
    for a in args:
        if a.startswith("-X"):
            method = a[2:] or next(args)
        elif a == "-d":
            body, method = next(args), method if method != "GET" else "POST"
        elif a == "-H":
            name, value = next(args).split(":", 1)
            headers[name.strip()] = value.strip()
        elif not a.startswith("-"):
            url = a
    assert url is not None and url.startswith("localhost:8000/"), argv
    return httpx.request(method, f"http://127.0.0.1:{port}/{url.split('/', 1)[1]}", content=body,
                         headers=headers, timeout=30)  # fmt: skip


def test_the_readme_tour_runs_as_written(tmp_path) -> None:
    commands = tour_commands()
    assert commands[0][:2] == [".", ".venv/bin/activate"] and len(commands) > 10
    raw = write_raw_ml1m(tmp_path / "raw-ml-1m")
    env = os.environ | {"PYTHONPATH": str(REPO), "META_EMBED_CACHE": str(tmp_path / "cache")}
    server, port, ran = None, free_port(), []
    try:
        for argv in commands[1:]:
            if argv[:3] == ["meta-embed", "data", "fetch"]:
                continue
            if argv[0] == "curl":
                r = curl(argv, port)
                assert r.status_code == 200, (argv, r.text)
                ran.append(argv[0])
                continue
            assert argv[0] == "meta-embed", argv
            argv = [sys.executable, "-m", "meta_embed_cli"] + [
                str(raw) if a == DATASET else a for a in argv[1:]
            ]
            if argv[3] == "serve":
                argv = [a if a != "8000" else str(port) for a in argv]
                server = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                          stderr=open(tmp_path / "serve.log", "w"))  # fmt: skip
                _wait_ready(server, port, tmp_path / "serve.log")
            else:
                done = subprocess.run(
                    argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
                )
                assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-4000:])
            ran.append(argv[3])
    finally:
        if server is not None and server.poll() is None:
            os.kill(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    assert ran.count("curl") >= 2 and "serve" in ran and "evaluate" in ran


def _wait_ready(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    pytest.fail("serve did not come up: " + log.read_text())
