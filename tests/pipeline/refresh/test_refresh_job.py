"""The refresh job end to end on Beam's local runner: output equal to meta_embed's own
reference, manifest, dead letters, determinism, idempotent re-runs, incremental mode
equal to a full recompute, retention and rollback, and a failure in the middle of a run.

One full run on the default runner (FnApiRunner, 2 worker processes) is shared by the
module; the other runs use the in-process mode to stay fast.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from meta_embed import snapshot
from pipeline.refresh.refresh_config import RefreshConfig
from pipeline.refresh.refresh_job import refresh
from tests.pipeline.refresh.refresh_fixtures import (
    AS_OF,
    MAX_SUPPORT,
    make_dataset,
    reference,
    snapshot_rows,
    write_checkpoint,
)

FAST = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("refresh"))


def config(ds, out, **kw) -> RefreshConfig:
    return RefreshConfig(
        ds.interactions,
        ds.users,
        ds.items,
        ds.checkpoint,
        kw.pop("as_of", AS_OF),
        str(out),
        batch_size=kw.pop("batch_size", 16),
        **kw,
    )


@pytest.fixture(scope="module")
def full(ds):
    """One full run on the default local runner (multi-processing)."""
    return refresh(config(ds, ds.root / "out"))


def rows_of(result):
    return snapshot_rows(snapshot.read_dir(result.snapshot_dir)[0])


def max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    for u in a:
        assert a[u][1:] == b[u][1:], u
    return max(float(np.abs(a[u][0] - b[u][0]).max()) for u in a)


def test_snapshot_equals_reference_and_is_current(full, ds):
    root = ds.root / "out"
    assert str(snapshot.current_dir(root)) == full.snapshot_dir
    assert max_diff(rows_of(full), reference(ds)) <= 1e-5
    assert full.counts["users"] == 51 and full.counts["users_with_events"] == 48
    assert full.counts["users_adapted"] == 48 and full.counts["cold_users"] == 3
    assert full.counts["users_without_features"] == 4 and full.counts["users_carried_forward"] == 0
    assert full.counts["users_zero_step"] == 3
    assert full.runner == "FnApiRunner[multi_processing,workers=2]" and full.mode == "full"
    assert not list((root / "staging").iterdir())


def test_manifest_and_dead_letter(full, ds):
    manifest = json.loads((Path(full.snapshot_dir) / snapshot.MANIFEST).read_text())
    for key in (
        "counts",
        "as_of",
        "model_version",
        "feature_spec_hash",
        "inputs",
        "runner",
        "duration_s",
        "max_support",
        "files",
    ):
        assert key in manifest, key
    assert manifest["as_of"] == AS_OF.isoformat() and manifest["max_support"] == MAX_SUPPORT
    assert set(manifest["inputs"]) == {"interactions", "users", "items"}
    assert manifest["counts"]["dead_lettered"] == ds.bad_rows == 3
    dead = pq.read_table(Path(full.snapshot_dir) / "dead_letter.parquet")
    assert sorted(dead["reason"].to_pylist()) == ["label_out_of_domain", "nonfinite_label", "null_user_id"]
    assert all(s.endswith("part-2.parquet") for s in dead["source"].to_pylist())
    assert (Path(full.snapshot_dir) / "refresh_config.json").is_file()


def test_rerun_is_deterministic_and_idempotent(full, ds):
    root = ds.root / "out"
    again = refresh(config(ds, root), FAST)
    assert again.name == full.name  # the name carries a hash of the rows: bitwise identical
    assert snapshot.published(root) == [full.name] and snapshot.current_name(root) == full.name
    assert max_diff(rows_of(again), rows_of(full)) == 0.0


def test_batch_size_buckets_and_shuffle_do_not_change_embeddings(full, ds, tmp_path):
    other = refresh(config(ds, tmp_path, batch_size=5, buckets=3, shuffle="beam"), FAST)
    assert json.loads((Path(other.snapshot_dir) / snapshot.MANIFEST).read_text())["shuffle"] == "beam"
    assert json.loads((Path(full.snapshot_dir) / snapshot.MANIFEST).read_text())["shuffle"] == "files"
    assert max_diff(rows_of(other), rows_of(full)) <= 1e-6


def test_incremental_equals_full_recompute(full, ds, tmp_path):
    first = refresh(config(ds, tmp_path, as_of=AS_OF - dt.timedelta(days=30)), FAST)
    inc = refresh(config(ds, tmp_path, incremental=True), FAST)
    assert first.mode == "full" and inc.mode == "incremental" and first.name in inc.reason
    assert inc.counts["users_carried_forward"] > 0 and inc.counts["users_adapted"] < 48
    assert (
        inc.counts["users_adapted"] + inc.counts["users_zero_step"] + inc.counts["users_carried_forward"]
        == 51
    )
    assert max_diff(rows_of(inc), rows_of(full)) <= 1e-6
    assert json.loads((Path(inc.snapshot_dir) / snapshot.MANIFEST).read_text())["mode"] == "incremental"


def test_incremental_after_a_model_change_recomputes_everyone(ds, tmp_path):
    refresh(config(ds, tmp_path, as_of=AS_OF - dt.timedelta(days=30)), FAST)
    ckpt = tmp_path / "ckpt2"
    write_checkpoint(ckpt, pq.read_table(ds.users), pq.read_table(ds.items), seed=1)
    inc = refresh(dataclasses.replace(config(ds, tmp_path, incremental=True), checkpoint=str(ckpt)), FAST)
    assert inc.mode == "full" and "model_version changed" in inc.reason
    assert inc.counts["users_carried_forward"] == 0 and inc.counts["users_adapted"] == 48


def test_keeps_last_k_and_rolls_back(ds, tmp_path):
    names = [
        refresh(config(ds, tmp_path, as_of=AS_OF + dt.timedelta(days=d), keep=2), FAST).name
        for d in (0, 1, 2)
    ]
    assert snapshot.published(tmp_path) == names[1:]
    assert snapshot.rollback(tmp_path) == names[1] and snapshot.current_name(tmp_path) == names[1]


def test_failure_mid_run_publishes_nothing_and_rerun_succeeds(full, ds, tmp_path):
    root = tmp_path / "out"
    shutil.copytree(ds.root / "out", root)
    later = AS_OF + dt.timedelta(days=5)
    with pytest.raises(Exception, match="injected fault"):
        refresh(config(ds, root, as_of=later), fail_after_users=5)  # default runner: the fault is in a worker
    assert snapshot.current_name(root) == full.name and snapshot.published(root) == [full.name]
    assert not list((root / "staging").iterdir())
    first = refresh(config(ds, root, as_of=later), FAST)
    second = refresh(config(ds, root, as_of=later), FAST)
    assert first.name == second.name == snapshot.current_name(root)
    assert snapshot.published(root) == [full.name, first.name]
