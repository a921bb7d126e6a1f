"""The system on an object store: a real S3 server (SeaweedFS) on loopback, no mock, and a
GCS emulator for gs:// (which does not enforce conditional writes: the race between two
publishers is tested on S3 and on a local disk).

The journey: train to the store -> full refresh (also with its inputs read from the
store) -> index build -> serve from the store (scores equal the local-path run's, through
HTTP) -> nightly incremental (equal to a full refresh) -> hot reload seen by the server
-> rollback. Then the faults: a refresh killed between its data and CURRENT, an older
as_of, two publishers, and altered or missing files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from meta_embed import publishing, snapshot, storage
from meta_embed.config import MamlConfig, ModelConfig, TrainConfig
from meta_embed.tables import data_table
from meta_embed_cli.main import main
from pipeline.data.data_config import SynthConfig
from pipeline.data.synth import synth
from pipeline.refresh.refresh_config import RefreshConfig
from pipeline.refresh.refresh_job import refresh
from pipeline.training.train_job import train
from pipeline.training.training_config import TrainJobConfig
from serving.app import create_app
from serving.serving_config import ServingConfig
from serving.state import Sources, load_state
from tests.servers import free_port, root_on, stop

REPO = Path(__file__).resolve().parents[1]
FAST = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
DAY1, DAY2 = dt.datetime(2021, 1, 2, tzinfo=dt.UTC), dt.datetime(2021, 1, 3, tzinfo=dt.UTC)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    synth(SynthConfig(n_users=120, n_items=60, events_per_user=20, seed=3, n_shards=2), folder)
    return folder


@pytest.fixture(params=["s3", "gs"])
def store_root(request) -> str:
    """A fresh root on the S3 server, then on the GCS emulator."""
    return request.getfixturevalue(f"{request.param}_root")


def _refresh_argv(data: Path | str, ckpt: str, out: str, as_of: dt.datetime, *flags: str) -> list[str]:
    """`refresh` of the prepared folder `data`: local, or a URL (its inputs read through Beam)."""
    events = (
        storage.join(data, "interactions") if storage.is_remote(data) else data_table(data, "interactions")
    )
    return ["refresh", "--interactions", str(events), "--users", storage.join(data, "users.parquet"),
            "--items", storage.join(data, "items.parquet"), "--checkpoint", ckpt,
            "--as-of", as_of.isoformat(), "--out", out, *flags, *FAST]  # fmt: skip


def _config(data: Path, ckpt: str, out: str, as_of: dt.datetime, **extra) -> RefreshConfig:
    return RefreshConfig(
        interactions=str(data_table(data, "interactions")),
        users=str(data / "users.parquet"),
        items=str(data / "items.parquet"),
        checkpoint=ckpt,
        as_of=as_of,
        out=out,
        **extra,
    )


def _manifest(root: str | Path) -> dict:
    return snapshot.read_manifest(storage.join(root, "snapshots", snapshot.current_name(root)))


def _train(data: Path | str, out: str) -> str:
    small = ModelConfig(meta_dim=8, meta_hidden=16, item_dim=8, global_hidden=(16,), retrieval_dim=8)
    cfg = TrainJobConfig(
        data=str(data),
        out=out,
        model=small,
        maml=MamlConfig(inner_steps=2, max_support=10),
        train=TrainConfig(max_epochs=1, batch_users=32, threads=1, progress=False),
    )
    return str(train(cfg).checkpoint)


class Served:
    """`meta-embed serve --root URL` in its own process, stopped by its pid."""

    def __init__(self, tmp_path: Path, root: str, data: str):
        self.port, self.log = free_port(), tmp_path / "server.log"
        tables = [f"--{t}={storage.join(data, f'{t}.parquet')}" for t in ("items", "users")]
        argv = [sys.executable, "-m", "meta_embed_cli", "serve", "--root", root, *tables,
                "--host", "127.0.0.1", "--port", str(self.port), "--reload-interval", "0.2",
                "--log-level", "info"]  # fmt: skip
        env = os.environ | {"PYTHONPATH": str(REPO), "META_EMBED_CACHE": str(tmp_path / "server-cache")}
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.base = f"http://127.0.0.1:{self.port}"
        self.wait_for(lambda: httpx.get(self.base + "/healthz", timeout=1).status_code == 200, "start")

    def wait_for(self, ready, what: str, seconds: float = 120.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:  # bounded
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if ready():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"server did not {what} within {seconds:.0f} s: {self.log.read_text()[-3000:]}")

    def snapshot(self) -> str:
        return httpx.get(self.base + "/v1/info", timeout=10).json()["snapshot"]

    def stop(self) -> None:
        stop(self.proc)


def test_the_journey_on_an_object_store_equals_the_local_one(store_root, data, tmp_path, capsys, monkeypatch):
    root = store_root
    monkeypatch.setenv("META_EMBED_CACHE", str(tmp_path / "cache"))
    remote_data = storage.join(root, "data")
    storage.upload(data, remote_data, last=("config.json",))  # prepared data on the store too
    ckpt = _train(remote_data, storage.join(root, "models", "m1"))
    assert storage.exists(storage.join(ckpt, "VERSION")) and storage.exists(storage.join(ckpt, "weights.pt"))
    out, local = storage.join(root, "snapshots-root"), str(tmp_path / "local")
    assert main(_refresh_argv(remote_data, ckpt, out, DAY1)) == 0  # inputs read from the store by Beam
    assert main(_refresh_argv(data, ckpt, local, DAY1)) == 0
    first = snapshot.current_name(out)
    assert _manifest(out)["content_hash"] == _manifest(local)["content_hash"]  # the same rows, bit for bit
    assert not storage.listdir(storage.join(out, "staging"))  # an object store has no staging area

    assert main(["index", "build", "--root", out, "--items", storage.join(remote_data, "items.parquet")]) == 0
    built = storage.listdir(storage.join(out, "snapshots", first, "indexes"))
    assert len(built) == 1 and storage.exists(
        storage.join(out, "snapshots", first, "indexes", built[0], "meta.json")
    )

    server = Served(tmp_path, out, remote_data)
    try:
        cfg = ServingConfig(
            root=Path(local), items=data / "items.parquet", users=data / "users.parquet", reload_interval_s=0
        )
        items = pq.read_table(data / "items.parquet").column("item_id").to_pylist()[::7]
        users = pq.read_table(data / "users.parquet").column("user_id").to_pylist()[::40]
        with TestClient(create_app(cfg.root, cfg)) as client:
            for user in [*users, "never-seen"]:
                body = {"user_id": user, "item_ids": items}
                want = client.post("/v1/score", json=body).json()
                got = httpx.post(server.base + "/v1/score", json=body, timeout=30).json()
                want.pop("snapshot"), got.pop("snapshot")  # the same rows, published under two names
                assert want["scores"] and got == want, user

        capsys.readouterr()
        assert (
            main(
                [
                    "nightly",
                    "--data",
                    remote_data,
                    "--checkpoint",
                    ckpt,
                    "--out",
                    out,
                    "--as-of",
                    DAY2.isoformat(),
                    *FAST,
                ]
            )
            == 0
        )
        second = snapshot.current_name(out)
        assert second != first and _manifest(out)["mode"] == "incremental"
        full = storage.join(root, "full-root")
        refresh(_config(data, ckpt, full, DAY2), FAST)
        # incremental == full, on the store too
        assert _manifest(out)["content_hash"] == _manifest(full)["content_hash"]
        server.wait_for(lambda: server.snapshot() == second, "hot-reload the nightly snapshot")

        assert main(["rollback", "--out", out]) == 0
        assert snapshot.current_name(out) == first
        server.wait_for(lambda: server.snapshot() == first, "follow the rollback")
        capsys.readouterr()
        assert main(["snapshots", "--out", out]) == 0
        listed = capsys.readouterr().out
        assert f"* {first}" in listed and f"  {second}" in listed
    finally:
        server.stop()


KILL_BEFORE_CURRENT = """
import os, signal, sys
from meta_embed import publishing
from meta_embed_cli.main import main
def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
publishing.set_current = killed
sys.exit(main(sys.argv[1:]))
"""


def test_a_refresh_killed_before_current_changes_nothing_and_the_rerun_publishes_the_same(
    store_root, data, tmp_path
):
    ckpt = storage.join(store_root, "models", "m1")
    _train(data, ckpt)
    out = storage.join(store_root, "root")
    argv = [sys.executable, "-c", KILL_BEFORE_CURRENT, *_refresh_argv(data, ckpt, out, DAY1)]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, timeout=600)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    assert snapshot.current_name(out) is None
    left = snapshot.published(out)
    assert len(left) == 1  # its data and manifest were written; CURRENT was not

    result = refresh(_config(data, ckpt, out, DAY1), FAST)
    assert snapshot.current_name(out) == left[0] == result.name  # the same content, kept once
    assert snapshot.published(out) == left

    with pytest.raises(snapshot.SnapshotError, match="a publish never moves CURRENT back"):
        refresh(_config(data, ckpt, out, DAY1 - dt.timedelta(days=1)), FAST)
    assert snapshot.current_name(out) == left[0]


def _staged(
    root: str, meta: snapshot.SnapshotMeta, run: str, seed: int
) -> tuple[str, list[publishing.Shard]]:
    rng = np.random.default_rng(seed)
    ts = np.full(5, int(meta.as_of.timestamp() * 1e6) - 1)
    table = snapshot.to_table(
        meta, [f"u{k}" for k in range(5)], rng.normal(size=(5, meta.dim)), np.full(5, 2), ts
    )
    staged = publishing.staging_dir(root, meta, f"20210102T000000-{run}")
    return staged, [publishing.write_part(table, staged, 0)]


@pytest.fixture(params=["local", "s3", "gs"])
def any_root(request, tmp_path) -> str:
    return root_on(request.param, request, tmp_path)


def test_two_publishers_at_once_one_wins_the_other_is_refused(any_root):
    meta = snapshot.SnapshotMeta("v1", "h", "activation", 4, DAY1)
    base_dir, base = _staged(any_root, meta, "base0000", 0)
    publishing.publish(any_root, base_dir, meta, {"counts": {"users": 5}}, base)
    start = snapshot.current_name(any_root)
    later = dataclasses.replace(meta, as_of=DAY2)
    a_dir, a = _staged(any_root, later, "aaaaaaaa", 1)
    b_dir, b = _staged(any_root, later, "bbbbbbbb", 2)
    won = publishing.publish(any_root, a_dir, later, {"counts": {"users": 5}}, a, expect=start)
    with pytest.raises(snapshot.SnapshotError, match="another publisher moved CURRENT"):
        publishing.publish(any_root, b_dir, later, {"counts": {"users": 5}}, b, expect=start)
    assert snapshot.current_name(any_root) == storage.basename(won)
    assert snapshot.published(any_root) == sorted([start, storage.basename(won)])  # the loser left nothing


def test_retention_on_an_object_store_keeps_the_newest_and_drops_dead_prefixes(store_root):
    names = []
    for day in range(4):
        meta = snapshot.SnapshotMeta("v1", "h", "activation", 4, DAY1 + dt.timedelta(days=day))
        staged, shards = _staged(store_root, meta, f"run{day:05d}", day)
        if day == 2:  # a run killed before its manifest, then overtaken: it can never publish
            storage.write_bytes(
                storage.join(publishing.staging_dir(store_root, meta, "20210102T000000-dead0000"), "x"), b""
            )
        names.append(
            storage.basename(
                publishing.publish(store_root, staged, meta, {"counts": {"users": 5}}, shards, keep=2)
            )
        )
    running = publishing.staging_dir(
        store_root, dataclasses.replace(meta, as_of=DAY1 + dt.timedelta(days=9)), "x-live0000"
    )
    storage.write_bytes(storage.join(running, "part-00000.parquet"), b"in progress")
    snapshot.prune(store_root, keep=2)
    assert snapshot.published(store_root) == names[2:] and snapshot.current_name(store_root) == names[3]
    assert storage.listdir(storage.join(store_root, "snapshots")) == [*names[2:], storage.basename(running)]
    assert snapshot.rollback(store_root) == names[2]


def test_a_concurrent_publish_during_a_refresh_fails_the_refresh(store_root, data, monkeypatch):
    """A refresh that finds CURRENT moved by someone else while it ran refuses to publish."""
    from pipeline.refresh import finalize

    ckpt = storage.join(store_root, "models", "m1")
    _train(data, ckpt)
    out = storage.join(store_root, "root")
    first = refresh(_config(data, ckpt, out, DAY1), FAST).name
    other = snapshot.SnapshotMeta(_manifest(out)["model_version"], "h", "activation", 8, DAY2)
    read_shards = finalize.read_shards

    def meanwhile(staged: str):  # another publisher finishes while this run finalizes
        staged_other, shards = _staged(out, other, "othr0000", 3)
        publishing.publish(out, staged_other, other, {"counts": {"users": 5}}, shards)
        return read_shards(staged)

    monkeypatch.setattr(finalize, "read_shards", meanwhile)
    with pytest.raises(snapshot.SnapshotError, match=f"another publisher moved CURRENT \\(from {first}"):
        refresh(_config(data, ckpt, out, DAY2), FAST)
    assert snapshot.current_name(out).endswith("othr0000")


@pytest.mark.parametrize("fault", ["altered", "missing"])
def test_a_snapshot_with_an_altered_or_missing_file_is_never_served(
    store_root, data, tmp_path, monkeypatch, fault
):
    monkeypatch.setenv("META_EMBED_CACHE", str(tmp_path / "cache"))
    ckpt = storage.join(store_root, "models", "m1")
    _train(data, ckpt)
    out = storage.join(store_root, "root")
    refresh(_config(data, ckpt, out, DAY1), FAST)
    cfg = ServingConfig(root=out, items=data / "items.parquet", reload_interval_s=0)
    good = load_state(cfg, Sources.read(cfg))
    second = refresh(_config(data, ckpt, out, DAY2), FAST)
    part = storage.join(out, "snapshots", second.name, _manifest(out)["files"][0]["name"])
    if fault == "altered":
        data_bytes = bytearray(storage.read_bytes(part))
        data_bytes[len(data_bytes) // 2] ^= 0xFF
        storage.write_bytes(part, bytes(data_bytes))
    else:
        storage.delete_tree(part)
    with pytest.raises(snapshot.SnapshotError, match="not served"):
        load_state(cfg, Sources.read(cfg), previous=good)
    mirrored = storage.cache_dir() / "roots"
    assert [snapshot.current_name(m) for m in mirrored.iterdir()] == [good.snapshot]  # still the good one


def test_prepare_and_evaluate_write_to_s3(s3_root, tmp_path):
    from pipeline.data.prepare import prepare
    from pipeline.evaluation.evaluation_config import EvalConfig
    from pipeline.evaluation.evaluation_job import evaluate
    from tests.conftest import write_ml100k

    prepared = storage.join(s3_root, "prepared")
    summary = prepare(str(write_ml100k(tmp_path / "raw")), prepared)
    names = storage.listdir(prepared)
    assert {"interactions.parquet", "users.parquet", "items.parquet", "config.json"} <= set(names)
    assert json.loads(storage.read_text(storage.join(prepared, "prepare_summary.json")))[
        "n_interactions"
    ] == (summary.n_interactions)
    report = storage.join(s3_root, "report")
    cfg = EvalConfig(dataset="synthetic", out=report, days=2, retrain_every=2, synth_users=100, meta_epochs=1,
                     wd_lrs=(3e-3,), wd_dims=(8,), wd_max_epochs=1, resamples=20, melu=False)  # fmt: skip
    result = evaluate(cfg)
    assert result.out == report and result.report == storage.join(report, "report.md")
    assert "## Targets" in storage.read_text(result.report)
    assert {"predictions.parquet", "summary.json", "config.json"} <= set(storage.listdir(report))


def test_beam_s3_flags_alone_configure_launcher_and_workers(s3_root, s3_endpoint, data, monkeypatch):
    """No AWS environment at all: Beam's --s3_* options reach the launcher's client and, through
    the adapt settings, the worker processes that read the s3:// checkpoint."""
    ckpt = storage.join(s3_root, "models", "m1")
    _train(data, ckpt)
    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ):
        monkeypatch.delenv(name)
    monkeypatch.setattr(storage, "_S3_SETTINGS", {})
    monkeypatch.setattr(storage, "_STORES", {})
    flags = [f"--s3_endpoint_url={s3_endpoint}", "--s3_access_key_id=test", "--s3_secret_access_key=test",
             "--s3_region_name=us-east-1", "--direct_running_mode=multi_processing",
             "--direct_num_workers=1"]  # fmt: skip
    out = storage.join(s3_root, "root")
    result = refresh(_config(data, ckpt, out, DAY1), flags)
    assert snapshot.current_name(out) == result.name and result.counts["users_adapted"] > 0
