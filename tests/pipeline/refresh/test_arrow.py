"""Columnar pieces of the refresh job: user buckets, the per-user top-N and its combine."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from pipeline.refresh.arrow import (
    bucket_of,
    event_schema,
    oldest_first,
    pack,
    split_by_bucket,
    top_n,
    unpack,
    user_runs,
)
from pipeline.refresh.transforms import TopNCombineFn


def events(n: int = 400, users: int = 25, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "user_id": [f"user-{k}" for k in rng.integers(0, users, n)],
            "item_row": pa.array(rng.integers(0, 50, n).astype(np.int32)),
            "ts": pa.array(rng.integers(0, 40, n).astype(np.int64)),  # many ties in ts
            "y": pa.array(rng.integers(0, 2, n).astype(np.float32)),
        },
        schema=event_schema(),
    )


def reference_top_n(table: pa.Table, n: int) -> dict[str, list[tuple]]:
    """Plain-Python reference: distinct events per user, newest first by (ts desc, other columns asc)."""
    out: dict[str, set] = {}
    for r in table.to_pylist():
        out.setdefault(r["user_id"], set()).add((r["ts"], r["item_row"], r["y"]))
    return {u: sorted(rows, key=lambda e: (-e[0], e[1], e[2]))[:n] for u, rows in out.items()}


def as_dict(table: pa.Table) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for r in table.to_pylist():
        out.setdefault(r["user_id"], []).append((r["ts"], r["item_row"], r["y"]))
    return out


def test_bucket_of_is_stable_across_processes_and_slices():
    ids = pa.array([f"u{k}" for k in range(1000)] + ["", "héllo"])
    here = bucket_of(ids, 97)
    code = (
        "import pyarrow as pa; from pipeline.refresh.arrow import bucket_of; "
        "print(bucket_of(pa.array([f'u{k}' for k in range(1000)] + ['', 'héllo']), 97).tolist())"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert [int(x) for x in other.strip()[1:-1].split(",")] == here.tolist()
    assert bucket_of(ids.slice(500), 97).tolist() == here[500:].tolist()
    assert bucket_of(pa.chunked_array([ids.slice(0, 10), ids.slice(10)]), 97).tolist() == here.tolist()
    counts = np.bincount(here[:1000], minlength=97)
    assert counts.min() > 0 and counts.max() < 30  # spread, ~10.3 per bucket


def test_split_by_bucket_partitions_rows():
    t = events()
    parts = split_by_bucket(t, 7)
    assert sum(p.num_rows for _, p in parts) == t.num_rows
    for b, p in parts:
        assert set(bucket_of(p.column("user_id"), 7).tolist()) == {b}


@pytest.mark.parametrize("n", [1, 3, 100])
def test_top_n_matches_reference_and_drops_duplicates(n):
    t = events()
    t = pa.concat_tables([t, t.slice(0, 50)])  # exact duplicates count once
    got = top_n(t, n)
    assert as_dict(got) == reference_top_n(t, n)
    assert np.all(np.diff(np.asarray(user_runs(got)[1])) <= n)


def test_top_n_ignores_order_and_batch_split():
    t = events(seed=1)
    whole = top_n(t, 4)
    rng = np.random.default_rng(0)
    shuffled = t.take(pa.array(rng.permutation(t.num_rows)))
    pieces = [top_n(shuffled.slice(s, 37), 4) for s in range(0, t.num_rows, 37)]
    assert top_n(pa.concat_tables(pieces), 4).equals(whole)


def test_combine_fn_equals_top_n_of_everything():
    t = events(n=600, seed=2)
    fn = TopNCombineFn(5, compact_rows=64)  # compacts often
    accs = []
    for s in range(0, t.num_rows, 100):
        acc = fn.create_accumulator()
        for k in range(s, min(s + 100, t.num_rows), 9):
            acc = fn.add_input(acc, pack(t.slice(k, 9)))
        accs.append(acc)
        assert sum(x.num_rows for x in acc) <= 64 + 9 + 25 * 5  # bounded: N per user plus one buffer
    merged = fn.merge_accumulators(accs)
    assert fn.extract_output(merged).equals(top_n(t, 5))


def test_oldest_first_orders_each_user_by_time():
    got = oldest_first(top_n(events(seed=3), 6))
    users, offsets = user_runs(got)
    ts = got.column("ts").to_numpy()
    assert users.to_pylist() == sorted(users.to_pylist())
    for a, b in zip(offsets[:-1], offsets[1:]):
        assert np.all(np.diff(ts[a:b]) >= 0)


def test_pack_round_trips_and_compresses():
    t = events(n=5000, seed=4)
    packed = pack(t)
    assert unpack(packed).equals(t) and len(packed) < t.nbytes
    assert unpack(pack(t.slice(0, 0))).schema == t.schema
