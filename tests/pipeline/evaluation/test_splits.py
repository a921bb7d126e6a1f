"""MeLU's protocol: who is kept, 10 query ratings per user, new users and items, seeded."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from meta_embed.tables import TS_TYPE
from pipeline.evaluation.splits import SCENARIOS, melu_split

T0 = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def day(d: float) -> dt.datetime:
    return T0 + dt.timedelta(days=d)


def table(rows: list[tuple[str, str, float]]) -> pa.Table:
    """(user, item, day) rows -> interactions."""
    return pa.table(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "ts": pa.array([day(r[2]) for r in rows], TS_TYPE),
            "label": pa.array([float(i % 2) for i in range(len(rows))], pa.float32()),
            "rating": pa.array([float(1 + i % 5) for i in range(len(rows))], pa.float32()),
        }
    )


def melu_fixture() -> tuple[pa.Table, pa.Table]:
    """Users u00..u09 with 13..100 ratings (joined on day k), plus too light and too heavy users."""
    rows, counts = [], [13, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    for k, n in enumerate(counts):
        rows += [(f"u{k:02d}", f"i{j % 40}", k + j / 1000) for j in range(n)]
    rows += [("light", f"i{j}", 1) for j in range(12)] + [
        ("heavy", f"i{j % 40}", 1 + j / 1000) for j in range(101)
    ]
    items = pa.table(
        {
            "item_id": [f"i{j}" for j in range(40)],
            "year": pa.array([1990 if j % 2 else 1998 for j in range(40)], pa.int32()),
        }
    )
    return table(rows), items


def test_melu_split_protocol():
    inter, items = melu_fixture()
    split = melu_split(inter, items, seed=3)
    tasks = split.tasks
    assert tasks.user_id.to_pylist() == [f"u{k:02d}" for k in range(10)]  # 13..100 ratings only
    assert (tasks.n_query == 10).all()
    assert (tasks.n_support == np.array([13, 20, 30, 40, 50, 60, 70, 80, 90, 100]) - 10).all()
    assert split.user_is_new.tolist() == [False] * 8 + [True] * 2  # the 20% who joined last
    sup_ts, qry_ts = tasks.support["ts"].to_pylist(), tasks.query["ts"].to_pylist()
    for k in range(len(tasks)):  # support and query partition each user's events
        sup = sup_ts[tasks.support_offsets[k] : tasks.support_offsets[k + 1]]
        qry = qry_ts[tasks.query_offsets[k] : tasks.query_offsets[k + 1]]
        assert len(sup) + len(qry) == len(set(sup) | set(qry))
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
