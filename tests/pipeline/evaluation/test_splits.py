"""Splits: time split, per-user tasks (no leakage, capped support) and MeLU's protocol."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from meta_embed.tables import TS_TYPE
from pipeline.evaluation.splits import SCENARIOS, melu_split, time_split, to_ts, user_tasks

T0 = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)


def day(d: float) -> dt.datetime:
    return T0 + dt.timedelta(days=d)


def table(rows: list[tuple[str, str, float]]) -> pa.Table:
    """(user, item, day) rows -> interactions."""
    return pa.table({
        "user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
        "ts": pa.array([day(r[2]) for r in rows], TS_TYPE),
        "label": pa.array([float(i % 2) for i in range(len(rows))], pa.float32()),
        "rating": pa.array([float(1 + i % 5) for i in range(len(rows))], pa.float32()),
    })


def random_events(n_users: int, seed: int, max_events: int = 120) -> pa.Table:
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, max_events, n_users)
    users = np.repeat([f"u{k:03d}" for k in range(n_users)], counts)
    return pa.table({
        "user_id": users, "item_id": [f"i{k}" for k in rng.integers(0, 300, len(users))],
        "ts": pa.array(to_ts(T0).value + rng.integers(0, 400 * 86400, len(users)) * 1_000_000, TS_TYPE),
        "label": pa.array(rng.integers(0, 2, len(users)).astype(np.float32)),
        "rating": pa.array(rng.integers(1, 6, len(users)).astype(np.float32)),
    })


def test_time_split_partitions_at_the_cutoff():
    t = table([("a", "x", 0), ("a", "y", 5), ("b", "x", 5), ("b", "z", 9)])
    before, after = time_split(t, day(5))
    assert before["item_id"].to_pylist() == ["x"] and after.num_rows == 3
    assert to_ts("2020-01-06T00:00:00Z") == to_ts(day(5)) == to_ts(day(5).replace(tzinfo=None))


def test_support_is_the_most_recent_n_before_t():
    t = table([("a", f"i{k}", k) for k in range(8)] + [("b", "late", 20), ("c", "old", 1)])
    tasks = user_tasks(t, day(5), max_support=3)
    assert tasks.user_id.to_pylist() == ["a", "b", "c"]
    sup, qry = tasks.task(0)
    assert sup["item_id"].to_pylist() == ["i2", "i3", "i4"]  # capped to the 3 most recent, oldest first
    assert qry["item_id"].to_pylist() == ["i5", "i6", "i7"]  # ts == t belongs to the query
    assert tasks.n_support.tolist() == [3, 0, 1] and tasks.n_query.tolist() == [3, 1, 0]
    bounded = user_tasks(t, day(5), max_support=None, end=day(7), min_support=1, min_query=1)
    assert bounded.user_id.to_pylist() == ["a"] and bounded.n_support.tolist() == [5]
    assert bounded.task(0)[1]["item_id"].to_pylist() == ["i5", "i6"]
    with pytest.raises(ValueError, match="max_support"):
        user_tasks(t, day(5), max_support=0)


def test_no_query_event_precedes_a_support_event_of_its_user():
    t = random_events(60, seed=1)
    tasks = user_tasks(t, day(200), max_support=20)
    s_ts = np.asarray(pc.cast(tasks.support["ts"], pa.int64()))
    q_ts = np.asarray(pc.cast(tasks.query["ts"], pa.int64()))
    last_support = np.full(len(tasks), np.iinfo(np.int64).min)
    np.maximum.at(last_support, tasks.support_task(), s_ts)
    first_query = np.full(len(tasks), np.iinfo(np.int64).max)
    np.minimum.at(first_query, tasks.query_task(), q_ts)
    assert (last_support < to_ts(day(200)).value).all() and (first_query >= to_ts(day(200)).value).all()
    assert tasks.n_support.max() == 20
    users = np.asarray(tasks.user_id.to_pylist(), dtype=object)
    assert (np.asarray(tasks.support["user_id"].to_pylist()) == users[tasks.support_task()]).all()
    assert (np.asarray(tasks.query["user_id"].to_pylist()) == users[tasks.query_task()]).all()
    uncapped = user_tasks(t, day(200), max_support=None)
    assert uncapped.support.num_rows + uncapped.query.num_rows == t.num_rows


def test_take_selects_a_batch_of_tasks():
    tasks = user_tasks(random_events(10, seed=2), day(200), max_support=5)
    batch = tasks.take(np.array([7, 2]))
    assert batch.user_id.to_pylist() == [tasks.user_id[7].as_py(), tasks.user_id[2].as_py()]
    for k, original in enumerate([7, 2]):
        assert batch.task(k)[0].equals(tasks.task(original)[0]) and batch.task(k)[1].equals(tasks.task(original)[1])


def melu_fixture() -> tuple[pa.Table, pa.Table]:
    """Users u00..u09 with 13..100 ratings (joined on day k), plus too light and too heavy users."""
    rows, counts = [], [13, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    for k, n in enumerate(counts):
        rows += [(f"u{k:02d}", f"i{j % 40}", k + j / 1000) for j in range(n)]
    rows += [("light", f"i{j}", 1) for j in range(12)] + [("heavy", f"i{j % 40}", 1 + j / 1000) for j in range(101)]
    items = pa.table({"item_id": [f"i{j}" for j in range(40)],
                      "year": pa.array([1990 if j % 2 else 1998 for j in range(40)], pa.int32())})
    return table(rows), items


def test_melu_split_protocol():
    inter, items = melu_fixture()
    split = melu_split(inter, items, seed=3)
    tasks = split.tasks
    assert tasks.user_id.to_pylist() == [f"u{k:02d}" for k in range(10)]  # 13..100 ratings only
    assert (tasks.n_query == 10).all()
    assert (tasks.n_support == np.array([13, 20, 30, 40, 50, 60, 70, 80, 90, 100]) - 10).all()
    assert split.user_is_new.tolist() == [False] * 8 + [True] * 2  # the 20% who joined last
    for k in range(len(tasks)):  # support and query partition each user's events
        sup, qry = tasks.task(k)
        assert sup.num_rows + qry.num_rows == len(set(sup["ts"].to_pylist()) | set(qry["ts"].to_pylist()))
    new_item = np.asarray(pc.is_in(tasks.query["item_id"], pa.array([f"i{j}" for j in range(0, 40, 2)])))
    assert (split.query_item_is_new == new_item).all()
    user_new = split.user_is_new[tasks.query_task()]
    expected = np.asarray(SCENARIOS, dtype=object)[user_new + 2 * new_item]
    assert split.query_scenario.to_pylist() == expected.tolist()
    assert {s: int(split.scenario_mask(s).sum()) for s in SCENARIOS}.keys() == set(SCENARIOS)


def test_melu_split_is_seeded():
    inter, items = melu_fixture()
    a, b, c = (melu_split(inter, items, seed=s) for s in (3, 3, 4))
    assert a.tasks.query.equals(b.tasks.query) and not a.tasks.query.equals(c.tasks.query)
    random_new = melu_split(inter, items, seed=3, new_users_by="random")
    assert random_new.user_is_new.sum() == 2
    with pytest.raises(ValueError, match="n_query < min_ratings"):
        melu_split(inter, items, seed=0, n_query=13)
