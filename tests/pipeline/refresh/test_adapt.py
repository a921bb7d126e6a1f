"""The adapt step of the refresh job as a pure function and as a DoFn called directly:
equal to meta_embed's own embed_users, independent of batch composition, cold users,
users without features, carry-forward, and the feature-spec check."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from meta_embed import checkpoint, snapshot
from meta_embed.checkpoint import CheckpointError
from meta_embed.tables import INTERACTIONS
from pipeline.refresh.adapt import AdaptSettings, adapt_bucket, load_adapt_state
from pipeline.refresh.arrow import bucket_of, event_schema, pack, top_n, unpack
from pipeline.refresh.inputs import chunks, list_files
from pipeline.refresh.transforms import AdaptUsers, ReadEvents
from tests.pipeline.refresh.refresh_fixtures import (
    AS_OF,
    MAX_SUPPORT,
    good_events,
    make_dataset,
    reference,
    snapshot_rows,
)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("adapt"))


@pytest.fixture(scope="module")
def settings(ds):
    ckpt = checkpoint.load(ds.checkpoint)
    meta = snapshot.SnapshotMeta(
        ckpt.model_version, ckpt.spec.hash, "activation", ckpt.model_cfg.embedding_dim, AS_OF
    )
    return AdaptSettings(
        ds.checkpoint, ckpt.spec.hash, ckpt.model_version, (ds.items,), meta, MAX_SUPPORT, 16
    )


@pytest.fixture(scope="module")
def state(settings):
    return load_adapt_state(settings)


@pytest.fixture(scope="module")
def events(ds, settings):
    """All valid events before AS_OF as one top-N event table, read through ReadEvents."""
    read = ReadEvents((ds.items,), "item_id", int(AS_OF.timestamp() * 1e6), "label", (), MAX_SUPPORT, 1)
    read.setup()
    read.start_bundle()
    files = list_files(ds.interactions)
    out = [t for c in chunks(files, INTERACTIONS) for t in read.process(c) if isinstance(t, tuple)]
    out += [w.value for w in read.finish_bundle()]
    return top_n(pa.concat_tables([unpack(t) for _, t in out]), MAX_SUPPORT)


@pytest.fixture(scope="module")
def whole(state, settings, events, ds):
    return adapt_bucket(state, settings, events, pq.read_table(ds.users))


def test_equals_meta_embed_reference(whole, ds):
    rows, counts = whole
    ref, got = reference(ds), snapshot_rows(rows)
    assert sorted(got) == sorted(ref)
    for user, (emb, n, ts) in ref.items():
        assert got[user][1:] == (n, ts), user
        np.testing.assert_allclose(got[user][0], emb, atol=1e-5, rtol=1e-5)
    assert counts.with_events == counts.adapted == 48 and counts.cold == 3 and counts.without_features == 4
    assert rows["user_id"].to_pylist() == sorted(rows["user_id"].to_pylist())


def test_embeddings_do_not_depend_on_batch_or_bucket_composition(state, settings, events, ds, whole):
    users = pq.read_table(ds.users)
    base = snapshot_rows(whole[0])
    diffs = []
    for batch_size, buckets in ((1, 1), (7, 3), (1000, 5)):
        s = dataclasses.replace(settings, batch_size=batch_size)
        eb, ub = bucket_of(events["user_id"], buckets), bucket_of(users["user_id"], buckets)
        for b in range(buckets):
            rows, _ = adapt_bucket(
                state, s, events.filter(pa.array(eb == b)), users.filter(pa.array(ub == b))
            )
            for user, (emb, n, ts) in snapshot_rows(rows).items():
                assert (n, ts) == base[user][1:]
                diffs.append(float(np.abs(emb - base[user][0]).max()))
    assert max(diffs) <= 1e-6


def test_cold_users_get_the_zero_step_embedding(state, whole, ds):
    import torch

    from meta_embed.features import encode, take

    rows = whole[0].filter(pa.compute.equal(whole[0]["n_support"], 0))
    assert rows["user_id"].to_pylist() == ["c000", "c001", "c002"]
    assert rows["last_event_ts"].null_count == 3
    users = pq.read_table(ds.users).filter(
        pa.compute.is_in(pq.read_table(ds.users)["user_id"], rows["user_id"])
    )
    with torch.no_grad():
        x = state.ckpt.model.user_inputs(take(encode(users, state.ckpt.spec.user), torch.arange(3)))
        zero = state.ckpt.model.meta(x).numpy()
    np.testing.assert_array_equal(snapshot.embeddings_of(rows), zero)


def test_carry_forward_copies_unchanged_users_and_recomputes_changed(state, settings, events, ds, whole):
    prev = whole[0]
    emb = snapshot.embeddings_of(prev).copy()
    emb[:] = 7.0  # a marker: carried rows keep it
    n = prev["n_support"].to_numpy().copy()
    n[0] = n[0] - 1 if n[0] > 1 else 5  # user 0's support changed: must be recomputed
    previous = snapshot.to_table(settings.meta, prev["user_id"], emb, n, prev["last_event_ts"])
    rows, counts = adapt_bucket(state, settings, events, pq.read_table(ds.users), previous.slice(0, 40))
    got = snapshot.embeddings_of(rows)
    # row 0 is c000 (cold, recomputed): 11 adapted + 1 zero-step + 39 carried = 51 rows
    assert (counts.carried_forward, counts.adapted, counts.zero_step, counts.cold) == (39, 11, 1, 3)
    assert np.all(got[1:40] == 7.0) and not np.any(got[0] == 7.0) and not np.any(got[40:] == 7.0)


def test_load_adapt_state_refuses_another_feature_spec(settings):
    with pytest.raises(CheckpointError, match="feature spec"):
        load_adapt_state(dataclasses.replace(settings, spec_hash="0" * 16))


def joined(events: pa.Table, users: pa.Table | None = None) -> dict[str, list[bytes]]:
    """What the join brings AdaptUsers for a bucket: its packed events, users and previous rows."""
    return {"events": [pack(events)], "users": [pack(users)] if users is not None else [], "previous": []}


EMPTY = pack(event_schema().empty_table())


def test_dofn_process_directly_and_fault_hook(settings, events, ds, whole):
    users = pq.read_table(ds.users)
    dofn = AdaptUsers(settings, EMPTY)
    dofn.setup()
    [(bucket, rows)] = list(dofn.process((0, joined(events, users))))
    assert bucket == 0 and rows.equals(whole[0])
    failing = AdaptUsers(settings, EMPTY, fail_after_users=10)
    failing.setup()
    with pytest.raises(RuntimeError, match="injected fault"):
        list(failing.process((0, joined(events, users))))


def test_dofn_merges_a_buckets_events_from_many_values(settings, events, ds, whole):
    """The join may bring a bucket's events as many values (one per read bundle), with a user's
    events spread over them, repeated, and more than N: the merge gives the same rows."""
    users = pq.read_table(ds.users)
    halves = [events.slice(0, events.num_rows // 2), events.slice(events.num_rows // 3)]  # overlapping
    dofn = AdaptUsers(settings, EMPTY)
    dofn.setup()
    parts = {"events": [pack(t) for t in halves], "users": [pack(users.slice(0, 20)), pack(users.slice(20))],
             "previous": []}  # fmt: skip
    [(_, rows)] = list(dofn.process((0, parts)))
    assert rows.equals(whole[0])


def test_dofn_without_feature_rows_uses_defaults(settings, events):
    dofn = AdaptUsers(settings, EMPTY)
    dofn.setup()
    [(_, rows)] = list(dofn.process((0, joined(events))))
    assert (
        rows.num_rows == 48 and rows["n_support"].to_numpy().min() > 0
    )  # no cold users without features rows


def test_dofn_in_a_test_pipeline(settings, events, ds, whole):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    users = pq.read_table(ds.users)
    expected = [(u, n) for u, n in zip(whole[0]["user_id"].to_pylist(), whole[0]["n_support"].to_pylist())]
    with TestPipeline(runner="FnApiRunner") as p:
        rows = (
            p
            | beam.Create([(0, joined(events, users))])
            | beam.ParDo(AdaptUsers(settings, EMPTY))
            | beam.FlatMap(lambda kv: zip(kv[1]["user_id"].to_pylist(), kv[1]["n_support"].to_pylist()))
        )
        assert_that(rows, equal_to(expected))


def test_seen_item_ids_are_the_distinct_recent_items_newest_first(state, settings, events, ds, whole):
    """From the raw interactions: each user's events before AS_OF, newest first, distinct
    known items, the first `seen_items` of them (within the most recent MAX_SUPPORT events)."""
    known = set(pq.read_table(ds.items)["item_id"].to_pylist())
    by_user = collections.defaultdict(list)
    for e in sorted(good_events(ds).to_pylist(), key=lambda e: e["ts"], reverse=True):
        by_user[e["user_id"]].append(e["item_id"])

    def expected(user: str, cap: int) -> list[str]:
        distinct = list(dict.fromkeys(i for i in by_user[user][:MAX_SUPPORT] if i in known))
        return distinct[:cap]

    rows = whole[0]
    for user, seen in zip(rows["user_id"].to_pylist(), rows["seen_item_ids"].to_pylist()):
        assert seen == expected(user, 50), user
    assert any(len(s) < n for s, n in zip(rows["seen_item_ids"].to_pylist(), rows["n_support"].to_pylist()))
    capped, _ = adapt_bucket(
        state, dataclasses.replace(settings, seen_items=3), events, pq.read_table(ds.users)
    )
    for user, seen in zip(capped["user_id"].to_pylist(), capped["seen_item_ids"].to_pylist()):
        assert seen == expected(user, 3), user
