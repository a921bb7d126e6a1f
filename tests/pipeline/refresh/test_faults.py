"""Bad inputs fail before any work, naming the file and the column; a corrupt file fails
with its path; a checkpoint from another feature spec is refused; nothing is published."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from meta_embed import checkpoint, publishing, snapshot
from meta_embed.checkpoint import CheckpointError
from meta_embed.tables import CorruptInputError, SchemaError
from pipeline.refresh.refresh_config import RefreshConfig
from pipeline.refresh.refresh_job import refresh
from tests.pipeline.refresh.refresh_fixtures import AS_OF, good_events, make_dataset

FAST = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


@pytest.fixture()
def ds(tmp_path):
    return make_dataset(tmp_path / "data")


def config(ds, as_of: dt.datetime = AS_OF, **kw) -> RefreshConfig:
    return RefreshConfig(
        ds.interactions, ds.users, ds.items, ds.checkpoint, as_of, str(ds.root / "out"), **kw
    )


def nothing_written(ds) -> bool:
    out = ds.root / "out"
    return (
        snapshot.current_name(out) is None and not any((out / "staging").glob("*")) if out.exists() else True
    )


def test_schema_mismatch_fails_before_any_work_naming_file_and_column(ds):
    bad = Path(ds.root / "interactions" / "part-1.parquet")
    t = pq.read_table(bad)
    pq.write_table(t.set_column(2, "ts", t["ts"].cast(pa.int64())), bad)
    with pytest.raises(SchemaError, match=r"part-1\.parquet: column 'ts' has type int64"):
        refresh(config(ds), FAST)
    assert not (ds.root / "out").exists()


def test_missing_user_feature_column_is_named(ds):
    pq.write_table(pq.read_table(ds.users).drop(["occupation"]), ds.users)
    with pytest.raises(SchemaError, match=r"users\.parquet: missing column 'occupation'"):
        refresh(config(ds), FAST)


def test_truncated_file_fails_with_its_path(ds):
    bad = ds.root / "interactions" / "part-0.parquet"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(CorruptInputError, match=r"part-0\.parquet: not a readable Parquet file"):
        refresh(config(ds), FAST)
    assert nothing_written(ds)


def test_corrupt_data_page_fails_inside_the_pipeline_with_its_path(ds):
    bad = ds.root / "interactions" / "part-1.parquet"
    data = bytearray(bad.read_bytes())
    data[8:400] = b"\xff" * 392  # the first column chunks; the footer stays readable
    bad.write_bytes(bytes(data))
    with pytest.raises(Exception, match=r"part-1\.parquet: Parquet data of row group 0 could not be decoded"):
        refresh(config(ds), FAST)
    assert nothing_written(ds)


def test_checkpoint_from_another_feature_spec_is_refused(ds):
    with pytest.raises(CheckpointError, match="feature spec .* but the data uses 0123456789abcdef"):
        refresh(config(ds, expect_spec_hash="0123456789abcdef"), FAST)
    assert not (ds.root / "out").exists()


def test_config_is_validated():
    base = dict(interactions="i", users="u", items="t", checkpoint="c", as_of=AS_OF, out="o")
    with pytest.raises(ValueError, match="timezone-aware"):
        RefreshConfig(**(base | {"as_of": AS_OF.replace(tzinfo=None)}))
    with pytest.raises(ValueError, match="keep must be >= 1"):
        RefreshConfig(**base, keep=0)
    with pytest.raises(ValueError, match="max_support must be >= 1"):
        RefreshConfig(**base, max_support=0)
    assert dataclasses.replace(RefreshConfig(**base), keep=5).keep == 5


def test_finalize_refuses_shards_that_disagree_with_the_counters_or_the_format():
    """Finalize reads no row: every refusal it made from the rows it now makes from the
    writers' shard summaries (computed from the rows on the workers)."""
    import numpy as np

    from meta_embed.tables import TS_TYPE
    from pipeline.refresh.finalize import check_shards

    meta = snapshot.SnapshotMeta("v1", "h", "activation", 2, AS_OF)

    def shard(ids, emb, support, ts, file="part-00000.parquet"):
        table = snapshot.to_table(
            meta, ids, np.asarray(emb, np.float32), np.array(support), pa.array(ts, pa.int64()).cast(TS_TYPE)
        )
        return publishing.summarize(table, file, publishing.parquet_bytes(table), meta)

    good = shard(["a", "b"], np.zeros((2, 2)), [3, 0], [1_000_000, None])
    ok = {"users_with_events": 1, "users_adapted": 1, "users_zero_step": 1, "users_carried_forward": 0}
    check_shards([good], ok, 10, cold_users=True)
    publishing.check_shards([good], meta, expected_users=2)
    with pytest.raises(snapshot.SnapshotError, match="counted 2"):
        check_shards([good], ok | {"users_with_events": 2}, 10, cold_users=True)
    with pytest.raises(snapshot.SnapshotError, match="adapt emitted 3"):
        check_shards([good], ok | {"users_carried_forward": 1}, 10, cold_users=True)
    with pytest.raises(snapshot.SnapshotError, match="n_support outside"):
        check_shards([good], ok, 2, cold_users=True)
    with pytest.raises(snapshot.SnapshotError, match="without events"):
        check_shards([good], ok, 10, cold_users=False)
    one = {"users_with_events": 1, "users_adapted": 1, "users_zero_step": 0, "users_carried_forward": 0}
    late = shard(["a"], np.zeros((1, 2)), [3], [int(AS_OF.timestamp() * 1e6)])
    with pytest.raises(snapshot.SnapshotError, match="last_event_ts >= as_of"):
        check_shards([late], one, 10, cold_users=True)
    unset = shard(["a"], np.zeros((1, 2)), [2], [None])
    with pytest.raises(snapshot.SnapshotError, match="set exactly for the users with events"):
        check_shards([unset], one, 10, cold_users=True)
    refused = {
        "more than one row": shard(["a", "a"], np.zeros((2, 2)), [1, 1], [1, 1]),
        "NaN or inf": shard(["a"], [[np.nan, 0.0]], [1], [1]),
        "users, expected 3": good,
    }
    for message, bad in refused.items():
        with pytest.raises(snapshot.SnapshotError, match=message):
            publishing.check_shards([bad], meta, expected_users=3 if bad is good else None)
    with pytest.raises(snapshot.SnapshotError, match="more than one row"):
        publishing.check_shards([dataclasses.replace(good, misplaced=1)], meta)
    with pytest.raises(snapshot.SnapshotError, match="same file"):
        publishing.check_shards([good, good], meta)
    with pytest.raises(snapshot.SnapshotError, match="model_version"):
        publishing.check_shards([good], dataclasses.replace(meta, model_version="v2"))


def test_an_edited_checkpoint_is_refused_before_any_work(ds):
    """The refresh job and serving load checkpoints the same way: an edited model.json is not a
    new model_version for one and a refusal for the other, but a refusal for both."""
    path = Path(ds.checkpoint) / "model.json"
    path.write_text(path.read_text().replace('"inner_steps": 2', '"inner_steps": 4'))
    with pytest.raises(CheckpointError, match="VERSION says .* but the files hash to"):
        refresh(config(ds), FAST)
    assert nothing_written(ds)


@pytest.mark.parametrize("processes", [False, True])
def test_duplicate_user_ids_are_refused_and_nothing_is_published(ds, processes):
    """Checked per bucket by the workers (both rows of an id land in one bucket), not by the
    launcher, which reads no column per user. From a worker process the error comes back as
    the worker's own message, not the runner's wrapped traceback."""
    users = pq.read_table(ds.users)
    pq.write_table(pa.concat_tables([users, users.slice(5, 1)]), ds.users)
    says = r"users\.parquet: 'user_id': id 'u005' appears more than once"
    if processes:
        says = r"^a refresh worker failed: ValueError: .*" + says + r".*; nothing was published$"
    runner = ["--direct_running_mode=multi_processing", "--direct_num_workers=1"] if processes else FAST
    with pytest.raises(ValueError, match=says):
        refresh(config(ds), runner)
    assert nothing_written(ds)


def test_an_as_of_before_every_event_is_refused_unless_asked(ds):
    early = dt.datetime(2019, 6, 1, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match=r"no event precedes it \(the first event is at 2020-01-01"):
        refresh(dataclasses.replace(config(ds), as_of=early), FAST)
    assert nothing_written(ds)
    result = refresh(dataclasses.replace(config(ds), as_of=early, allow_empty=True), FAST)
    assert result.counts["users_adapted"] == 0 and result.counts["users"] == result.counts["users_zero_step"]


def test_non_finite_embeddings_are_counted_and_nothing_is_published(ds):
    ckpt = checkpoint.load(ds.checkpoint)
    with torch.no_grad():
        ckpt.model.meta.weights["w2"].mul_(1e38)  # finite weights whose products overflow
    checkpoint.save(ckpt.model, ckpt.maml_cfg, ds.checkpoint)
    with pytest.raises(snapshot.SnapshotError, match=r"\d+ users got non-finite \(NaN or inf\) embeddings"):
        refresh(config(ds), FAST)
    assert nothing_written(ds)


def test_duplicates_in_different_shards_are_counted_as_duplicates(ds):
    shards = Path(ds.interactions).parent
    events = good_events(ds).sort_by([("user_id", "ascending"), ("ts", "descending")])
    newest = events.group_by("user_id", use_threads=False).aggregate([("ts", "max")])
    again = events.join(newest.rename_columns(["user_id", "ts"]), ["user_id", "ts"]).slice(0, 4)
    pq.write_table(again.cast(pq.read_schema(shards / "part-0.parquet")), shards / "part-3.parquet")
    result = refresh(config(ds), FAST)
    originals = str(shards / "part-[012].parquet")
    clean = refresh(dataclasses.replace(config(ds), out=str(ds.root / "clean"), interactions=originals), FAST)
    assert result.counts["duplicates_across_batches"] == 4
    assert result.counts["events_used"] == clean.counts["events_used"]
    assert result.counts["events_read"] == clean.counts["events_read"] + 4


def test_a_malformed_model_json_is_refused_naming_the_field(ds):
    path = Path(ds.checkpoint) / "model.json"
    path.write_text(path.read_text().replace('"meta_dim": 8', '"meta_dim": "abc"'))
    says = r"model\.json: ModelConfig\.meta_dim must be an integer, got 'abc'"
    with pytest.raises(CheckpointError, match=says):
        refresh(config(ds), FAST)
    assert nothing_written(ds)


def test_a_refresh_older_than_current_is_refused_and_current_stays(ds):
    """A publish never moves CURRENT back: an older --as-of is refused before any work, and
    again by the publish step itself (a run that overlapped a newer one); rollback still can."""
    out = ds.root / "out"
    first = refresh(config(ds, as_of=AS_OF - dt.timedelta(days=3)), FAST).name
    second = refresh(config(ds), FAST).name
    with pytest.raises(snapshot.SnapshotError, match="a publish never moves CURRENT back"):
        refresh(config(ds, as_of=AS_OF - dt.timedelta(days=1)), FAST)
    assert snapshot.current_name(out) == second and not any((out / "staging").glob("*"))
    older = snapshot.SnapshotMeta("v", "h", "activation", 4, AS_OF - dt.timedelta(days=1))
    with pytest.raises(snapshot.SnapshotError, match="newer than"):
        publishing.publish(out, publishing.staging_dir(out, older, "overlapping-run"), older, {}, [])
    assert snapshot.current_name(out) == second
    assert snapshot.rollback(out) == first and snapshot.current_name(out) == first
