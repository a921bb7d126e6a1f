"""Hostile conditions against a real server on loopback (bounded loops throughout): a
snapshot with non-finite embeddings, a file of the live snapshot truncated underneath, a
snapshot folder renamed, a failed reload followed by a good one, idle, stalled and oversized
connections, too many connections, and a second deployment on the same port. The server
answers correctly or refuses, and never crashes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from meta_embed import snapshot
from serving.state import Sources, load_state
from tests.servers import free_port, stop
from tests.serving.test_live import AS_OF, REPO
from tests.serving.world import build_world, publish, serve_command

pytestmark = pytest.mark.slow
LIMITS = ["--reload-interval", "0.2", "--header-timeout", "1", "--keep-alive", "1",
          "--max-header-bytes", "4096", "--max-connections", "12"]  # fmt: skip
IDS = [f"u{i}" for i in range(30)]


class Server:
    def __init__(self, tmp_path: Path, *flags: str):
        self.world = build_world(tmp_path / "w", as_of=AS_OF)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "server.log"
        with self.log.open("w") as log:
            argv = serve_command(self.world, self.port, *flags)
            env = os.environ | {"PYTHONPATH": str(REPO)}
            self.proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("server did not come up: " + self.log.read_text())

    def info(self) -> dict:
        return httpx.get(self.base + "/v1/info", timeout=10).json()

    def wait_for(self, test, seconds: float = 30.0) -> dict:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            info = self.info()
            if test(info):
                return info
            time.sleep(0.2)
        raise AssertionError(f"condition not reached in {seconds}s; /v1/info: {self.info()}")

    def stop(self) -> None:
        stop(self.proc)


@pytest.fixture()
def server(tmp_path):
    s = Server(tmp_path, *LIMITS)
    yield s
    s.stop()


def stage(s: Server, hours: int, run: str, emb: np.ndarray | None = None) -> Path:
    """Publish a snapshot in a scratch root and return its folder, not yet under the server's root."""
    emb = np.random.default_rng(hours).normal(size=(len(IDS), 8)).astype(np.float32) if emb is None else emb
    scratch = s.world.base / f"scratch-{run}"
    return publish(scratch, s.world.version, IDS, emb, AS_OF.replace(hour=hours), run)


def go_live(s: Server, folder: Path, name: str | None = None) -> str:
    """Move a staged snapshot folder into the server's root (under `name`) and point CURRENT at it."""
    name = name or folder.name
    shutil.move(str(folder), s.world.root / "snapshots" / name)
    (s.world.root / "CURRENT").write_text(name + "\n")
    return name


def score(s: Server) -> httpx.Response:
    return httpx.post(s.base + "/v1/score", json={"user_id": "u1", "item_ids": ["i1", "i2"]}, timeout=10)


def test_non_finite_embeddings_are_refused_and_the_old_snapshot_keeps_serving(server):
    before = server.info()["snapshot"]
    folder = stage(server, 1, "nan")
    part = next(folder.glob("part-*.parquet"))
    table = pq.read_table(part)
    emb = snapshot.embeddings_of(table).copy()
    emb[3, 0] = np.nan  # one user's embedding
    meta = snapshot.SnapshotMeta.from_dict(snapshot.read_dir(folder)[1])
    rows = (table["user_id"], emb, table["n_support"].to_numpy(), table["last_event_ts"])
    pq.write_table(snapshot.to_table(meta, *rows), part)
    go_live(server, folder)
    info = server.wait_for(lambda i: i["reload"]["failures"] >= 1)
    assert info["snapshot"] == before and "non-finite embeddings" in info["reload"]["last_error"]
    answer = score(server)
    assert answer.status_code == 200 and all(np.isfinite(answer.json()["scores"]))


def test_a_truncated_file_of_the_live_snapshot_cannot_crash_the_server(server):
    live = server.info()["snapshot"]
    artifacts = next((server.world.root / "snapshots" / live / "indexes").iterdir())
    for name in ("embeddings.npy", "users_hashes.npy"):  # the published files the store would map
        path = artifacts / name
        path.write_bytes(path.read_bytes()[:100])
    for _ in range(50):  # every user's row is read: a memory map of the truncated file would SIGBUS
        for user in IDS[:10]:
            r = httpx.get(f"{server.base}/v1/users/{user}/embedding", timeout=10)
            assert r.status_code == 200 and len(r.json()["embedding"]) == 8
    assert server.proc.poll() is None  # still alive
    # and a snapshot whose built artifacts are truncated before it goes live is refused, naming the file
    folder = stage(server, 5, "truncated")
    load_state(
        server.world.config(root=folder.parent.parent), Sources.read(server.world.config())
    )  # builds them
    built = next((folder / "indexes").iterdir())
    (built / "embeddings.npy").write_bytes((built / "embeddings.npy").read_bytes()[:100])
    go_live(server, folder)
    info = server.wait_for(lambda i: i["reload"]["failures"] >= 1)
    assert info["snapshot"] == live and "embeddings.npy" in info["reload"]["last_error"], info
    assert "truncated" in info["reload"]["last_error"] and score(server).status_code == 200


def test_a_renamed_snapshot_folder_is_refused_once_not_reloaded_forever(server):
    before = server.info()
    go_live(server, stage(server, 2, "renamed"), name="my-copy")
    info = server.wait_for(lambda i: i["reload"]["failures"] >= 1)
    time.sleep(2.0)  # ten reload intervals
    after = server.info()
    assert after["snapshot"] == before["snapshot"] and after["reload"]["swaps"] == before["reload"]["swaps"]
    assert after["reload"]["failures"] <= 2  # backed off, not retried every interval
    assert "its manifest names it" in info["reload"]["last_error"]
    assert str(server.world.root) not in info["reload"]["last_error"]  # names relative to the root


def test_after_a_failed_snapshot_a_good_one_is_picked_up_at_once(server):
    go_live(server, stage(server, 3, "bad"), name="bad-copy")  # refused: renamed
    server.wait_for(lambda i: i["reload"]["failures"] >= 1)
    name = go_live(server, stage(server, 4, "good"))
    started = time.monotonic()
    server.wait_for(lambda i: i["snapshot"] == name, seconds=10)
    assert time.monotonic() - started < 5  # not after a back-off inherited from the failed one


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False


def test_idle_and_stalled_connections_are_closed(server):
    idle = socket.create_connection(("127.0.0.1", server.port))
    stalled = socket.create_connection(("127.0.0.1", server.port))
    stalled.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # headers never finished
    kept = socket.create_connection(("127.0.0.1", server.port))
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert kept.recv(4096).startswith(b"HTTP/1.1 200")
    for sock in (idle, stalled, kept):  # header timeout 1 s, keep-alive 1 s
        assert _closed_within(sock, 5.0)
        sock.close()


def test_oversized_headers_are_refused_before_they_fill_memory(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        try:
            while sent < 1 << 20:  # at most 1 MiB against a 4 KiB limit
                sock.sendall(b"a" * 8192)
                sent += 8192
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(5)
        try:
            reply = sock.recv(4096)
        except ConnectionResetError:
            reply = b""
        assert reply.startswith(b"HTTP/1.1 431") or sent < 1 << 20, reply
    assert score(server).status_code == 200


def test_connections_beyond_the_limit_are_answered_503(server):
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(12)]
    try:
        time.sleep(0.2)
        assert score(server).status_code == 503
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while score(server).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert score(server).status_code == 200


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_second_deployment_on_the_port_is_refused(tmp_path, workers):
    first = Server(tmp_path / "a", "--reload-interval", "0", "--workers", "2")
    try:
        argv = serve_command(first.world, first.port, "--reload-interval", "0", "--workers", workers)
        second = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120,
                                env=os.environ | {"PYTHONPATH": str(REPO)})  # fmt: skip
        assert second.returncode == 1, second.stdout + second.stderr
        assert f"port {first.port}" in second.stderr and "another meta-embed serve" in second.stderr
        assert httpx.get(first.base + "/healthz", timeout=5).status_code == 200
    finally:
        first.stop()
    with socket.socket() as foreign:  # a port held by another program
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        port = foreign.getsockname()[1]
        w = build_world(tmp_path / "b", as_of=AS_OF)
        done = subprocess.run(serve_command(w, port, "--workers", workers), cwd=REPO, capture_output=True,
                              text=True, timeout=120, env=os.environ | {"PYTHONPATH": str(REPO)})  # fmt: skip
    assert done.returncode == 1 and f"port {port} on 127.0.0.1 is already in use" in done.stderr, done.stderr
