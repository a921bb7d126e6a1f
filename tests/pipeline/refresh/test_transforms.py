"""The refresh job's composite transforms on a `TestPipeline`: `NewestEvents` on a tiny
hand-made input (each user's newest N events, in its own bucket, bad rows dead-lettered,
every bucket present), and the whole `RefreshSnapshot` through `refresh(pipeline=...)`,
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
from pipeline.refresh.arrow import bucket_of, event_schema, pack
from pipeline.refresh.inputs import chunks
from pipeline.refresh.refresh_config import RefreshConfig
from pipeline.refresh.refresh_job import NewestEvents, refresh
from pipeline.refresh.transforms import DEAD, ReadEvents
from tests.pipeline.refresh.refresh_fixtures import AS_OF, make_dataset, reference, snapshot_rows

T0 = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def test_newest_events_keeps_each_users_newest_n_in_its_bucket(tmp_path):
    # user a: 4 events (the two newest kept), b: 1, c: one event after as_of (dropped); a bad row, a duplicate
    rows = [("a", "i1", 1), ("a", "i2", 2), ("a", "i3", 3), ("a", "i4", 4), ("b", "i1", 2), ("c", "i2", 20),
            (None, "i1", 1), ("b", "i1", 2)]  # fmt: skip
    table = pa.table({
        "user_id": pa.array([r[0] for r in rows], pa.string()),
        "item_id": [r[1] for r in rows],
        "ts": pa.array([T0 + dt.timedelta(days=r[2]) for r in rows], TS_TYPE),
        "label": pa.array([1.0] * len(rows), pa.float32()),
        "rating": pa.array([4.0] * len(rows), pa.float32()),
    })  # fmt: skip
    pq.write_table(table, tmp_path / "events.parquet")
    pq.write_table(pa.table({"item_id": ["i1", "i2", "i3", "i4"]}), tmp_path / "items.parquet")
    as_of_us = int((T0 + dt.timedelta(days=10)).timestamp() * 1e6)
    read = ReadEvents((str(tmp_path / "items.parquet"),), "item_id", as_of_us, "label", (), 2, 3)
    empty = pack(event_schema().empty_table())

    def users_and_days(kv):
        bucket, events = kv
        for user, ts in zip(events["user_id"].to_pylist(), events["ts"].to_pylist()):
            yield bucket, user, (ts - int(T0.timestamp() * 1e6)) // 86_400_000_000

    bucket = dict(zip("abc", bucket_of(pa.array(["a", "b", "c"]), 3).tolist()))
    with test_pipeline.TestPipeline(runner="FnApiRunner") as p:
        out = (p | beam.Create(chunks([str(tmp_path / "events.parquet")], INTERACTIONS))
               | NewestEvents(read, buckets=3, max_support=2, empty=empty))  # fmt: skip
        assert_that(out["events"] | "Rows" >> beam.FlatMap(users_and_days),
                    equal_to([(bucket["a"], "a", 4), (bucket["a"], "a", 3), (bucket["b"], "b", 2)]),
                    label="NewestTwoPerUser")  # fmt: skip
        assert_that(out["events"] | "Buckets" >> beam.Map(lambda kv: kv[0]), equal_to([0, 1, 2]),
                    label="EveryBucketOnce")  # fmt: skip
        reasons = out[DEAD] | beam.FlatMap(lambda kv: kv[1]["reason"].to_pylist())
        assert_that(reasons, equal_to(["null_user_id", "duplicate"]), label="DeadLetters")


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
