"""The refresh job through Beam's PortableRunner: the local job service plus an external
SDK worker pool (the Fn API path of Flink, Spark and Dataflow) gives the DirectRunner's output."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from meta_embed import snapshot
from pipeline.refresh.refresh_config import RefreshConfig
from pipeline.refresh.refresh_job import refresh
from tests.pipeline.refresh.refresh_fixtures import AS_OF, make_dataset, snapshot_rows
from tests.servers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def wait_for(port: int, proc: subprocess.Popen, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


@pytest.fixture(scope="module")
def portable_services():
    """(job port, worker-pool port) of a local job service and an SDK worker pool, stopped by pid."""
    job, pool = free_port(), free_port()
    # The worker pool starts SDK workers as `python ...`: put this interpreter first on PATH.
    env = os.environ | {
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", f"--port={job}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={pool}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        ),
    ]
    try:
        wait_for(job, procs[0])
        wait_for(pool, procs[1])
        yield job, pool
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_portable_runner_output_equals_direct_runner(portable_services, tmp_path):
    job, pool = portable_services
    ds = make_dataset(tmp_path / "data")

    def cfg(out: str) -> RefreshConfig:
        return RefreshConfig(
            ds.interactions, ds.users, ds.items, ds.checkpoint, AS_OF, str(tmp_path / out), batch_size=16
        )

    direct = refresh(cfg("direct"), ["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    portable = refresh(
        cfg("portable"),
        [
            "--runner=PortableRunner",
            f"--job_endpoint=localhost:{job}",
            "--environment_type=EXTERNAL",
            f"--environment_config=localhost:{pool}",
        ],
    )
    assert portable.runner == "PortableRunner"
    a = snapshot_rows(snapshot.read_dir(direct.snapshot_dir)[0])
    b = snapshot_rows(snapshot.read_dir(portable.snapshot_dir)[0])
    assert sorted(a) == sorted(b) and all(a[u][1:] == b[u][1:] for u in a)
    assert max(float(np.abs(a[u][0] - b[u][0]).max()) for u in a) <= 1e-6
    assert portable.counts["users_with_events"] == 48 and portable.counts["dead_lettered"] == 3
