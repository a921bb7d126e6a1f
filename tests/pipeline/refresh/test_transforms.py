"""The refresh job's transforms on a `TestPipeline`: `ReadEvents` and the join's merge on a
tiny hand-made input (each user's newest N events, in its own bucket, across row groups,
bad rows dead-lettered), and the whole `RefreshSnapshot` through `refresh(pipeline=...)`,
equal to the reference embeddings."""

from __future__ import annotations

import datetime as dt

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from meta_embed import snapshot
from meta_embed.tables import INTERACTIONS, TS_TYPE
from pipeline.refresh.arrow import bucket_of
from pipeline.refresh.inputs import chunks
from pipeline.refresh.refresh_config import RefreshConfig
from pipeline.refresh.refresh_job import refresh
from pipeline.refresh.transforms import DEAD, ReadEvents, TopNCombineFn
from tests.pipeline.refresh.refresh_fixtures import AS_OF, make_dataset, reference, snapshot_rows

T0 = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def test_read_and_merge_keep_each_users_newest_n_in_its_bucket(tmp_path):
    # user a: 4 events in two row groups (the two newest kept), b: 1 (and its copy in the other
    # row group, dropped), c: one event after as_of (dropped); a bad row
    rows = [("a", "i1", 1), ("a", "i2", 2), ("b", "i1", 2), ("c", "i2", 20),
            ("a", "i3", 3), ("a", "i4", 4), (None, "i1", 1), ("b", "i1", 2)]  # fmt: skip
    table = pa.table({
        "user_id": pa.array([r[0] for r in rows], pa.string()),
        "item_id": [r[1] for r in rows],
        "ts": pa.array([T0 + dt.timedelta(days=r[2]) for r in rows], TS_TYPE),
        "label": pa.array([1.0] * len(rows), pa.float32()),
        "rating": pa.array([4.0] * len(rows), pa.float32()),
    })  # fmt: skip
    pq.write_table(table, tmp_path / "events.parquet", row_group_size=4)
    pq.write_table(pa.table({"item_id": ["i1", "i2", "i3", "i4"]}), tmp_path / "items.parquet")
    as_of_us = int((T0 + dt.timedelta(days=10)).timestamp() * 1e6)
    read = ReadEvents((str(tmp_path / "items.parquet"),), "item_id", as_of_us, "label", (), 2, 3)

    def merged(bucket, refs):
        fn = TopNCombineFn(2)
        acc = fn.create_accumulator()
        for ref in refs:
            acc = fn.add_input(acc, ref)
        events = fn.extract_output(acc)
        for user, ts in zip(events["user_id"].to_pylist(), events["ts"].to_pylist()):
            yield bucket, user, (ts - int(T0.timestamp() * 1e6)) // 86_400_000_000

    bucket = dict(zip("abc", bucket_of(pa.array(["a", "b", "c"]), 3).tolist()))
    with test_pipeline.TestPipeline(runner="FnApiRunner") as p:
        out = (p | beam.Create(chunks([str(tmp_path / "events.parquet")], INTERACTIONS))
               | beam.ParDo(read).with_outputs(DEAD, main="events"))  # fmt: skip
        newest = out.events | beam.GroupByKey() | beam.FlatMapTuple(merged)
        assert_that(newest, equal_to([(bucket["a"], "a", 4), (bucket["a"], "a", 3), (bucket["b"], "b", 2)]),
                    label="NewestTwoPerUser")  # fmt: skip
        reasons = out[DEAD] | beam.FlatMap(lambda kv: kv[1]["reason"].to_pylist())
        assert_that(reasons, equal_to(["null_user_id"]), label="DeadLetters")


def test_refresh_runs_on_a_test_pipeline_and_equals_the_reference(tmp_path):
    ds = make_dataset(tmp_path / "data")
    cfg = RefreshConfig(ds.interactions, ds.users, ds.items, ds.checkpoint, AS_OF, str(tmp_path / "out"))
    result = refresh(cfg, pipeline=test_pipeline.TestPipeline(runner="FnApiRunner"))
    got = snapshot_rows(snapshot.read_dir(result.snapshot_dir)[0])
    want = reference(ds, AS_OF)
    assert snapshot.current_name(cfg.out) == result.name and sorted(got) == sorted(want)
    for user, (emb, n, ts) in want.items():
        assert got[user][1:] == (n, ts)
        np.testing.assert_allclose(got[user][0], emb, atol=1e-5)
