"""Columnar tasks: grouping by user in time order, the most-recent-N cap, padding, and
cutting timelines into support/query at per-user positions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from meta_embed.features import FeatureSpec, fit_spec, movielens_template
from meta_embed.tables import INTERACTIONS, ITEMS, USERS
from meta_embed.tasks import FeatureTables, build_tasks, cut, episodes, group_events, pad


@pytest.fixture(scope="module")
def small():
    users = pa.table(
        {
            "user_id": ["a", "b", "c"],
            "age": pa.array([20, 30, 40], pa.int32()),
            "gender": ["F", "M", "F"],
            "occupation": ["x", "y", "x"],
            "zip_prefix": ["1", "2", "3"],
        },
        schema=USERS,
    )
    items = pa.table(
        {
            "item_id": [f"i{k}" for k in range(6)],
            "title": ["t"] * 6,
            "year": pa.array([1990] * 6, pa.int32()),
            "genres": [["Drama"]] * 6,
        },
        schema=ITEMS,
    )
    # user, item, ts (seconds), label; deliberately not in time order
    rows = [
        ("b", "i1", 50, 1.0),
        ("a", "i0", 30, 0.0),
        ("a", "i1", 10, 1.0),
        ("z", "i2", 5, 1.0),
        ("a", "i2", 20, 1.0),
        ("b", "i3", 40, 0.0),
        ("a", "i3", 40, 0.0),
        ("a", "i9", 50, 1.0),
    ]
    events = pa.table(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "ts": pa.array([r[2] * 1_000_000 for r in rows], pa.int64()).cast(INTERACTIONS.field("ts").type),
            "label": pa.array([r[3] for r in rows], pa.float32()),
            "rating": pa.array([None] * len(rows), pa.float32()),
        },
        schema=INTERACTIONS,
    )
    spec: FeatureSpec = fit_spec(movielens_template(), users, items)
    return spec, FeatureTables.build(spec, users, items), events


def test_group_events_orders_each_user_oldest_first_and_drops_others(small):
    spec, tables, events = small
    block = group_events(events, pa.array(["a", "b", "c"]), tables, spec)
    assert block.offsets.tolist() == [0, 5, 7, 7]  # "z" is not asked for; "c" has no events
    assert (block.ts[:5] // 1_000_000).tolist() == [10, 20, 30, 40, 50]
    assert block.item_rows[:5].tolist() == [1, 2, 0, 3, 6]  # "i9" is unknown -> default row 6
    assert block.target[:5].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert block.item_rows[5:].tolist() == [3, 1]


def test_max_support_keeps_the_most_recent_events(small):
    spec, tables, events = small
    tasks = build_tasks(events, None, tables, spec, max_support=2, user_ids=pa.array(["a", "b"]))
    assert tasks.support.lengths.tolist() == [2, 2]
    assert (tasks.support.ts[:2] // 1_000_000).tolist() == [40, 50]
    assert tasks.user_rows.tolist() == [0, 1]


def test_pad_places_events_and_masks_the_rest(small):
    spec, tables, events = small
    block = group_events(events, pa.array(["a", "b", "c"]), tables, spec)
    p = pad(block, np.array([1, 2, 0]))
    assert p.mask.tolist() == [[True, True, False, False, False], [False] * 5, [True] * 5]
    assert p.items[0].tolist() == [3, 1, 0, 0, 0]
    assert p.y[0].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    assert p.items[2].tolist() == block.item_rows[:5].tolist()


def test_cut_splits_timelines_at_per_user_positions(small):
    spec, tables, events = small
    timelines = build_tasks(events, None, tables, spec, user_ids=pa.array(["a", "b", "c"]))
    tasks = cut(timelines, np.array([0, 1, 2]), np.array([3, 0, 0]), max_support=2, max_query=1)
    assert tasks.user_ids.to_pylist() == ["a", "b", "c"]
    assert tasks.support.lengths.tolist() == [2, 0, 0]  # a: events 1..2 (cap 2 before position 3)
    assert (tasks.support.ts // 1_000_000).tolist() == [20, 30]
    assert tasks.query.lengths.tolist() == [1, 1, 0]  # the next event only (max_query = 1)
    assert (tasks.query.ts // 1_000_000).tolist() == [40, 40]
    ep = episodes(tasks, np.array([0, 1]))
    assert ep.support.mask.sum(1).tolist() == [2, 0]
    with pytest.raises(ValueError, match="split position"):
        cut(timelines, np.array([1]), np.array([3]))


def test_unknown_user_ids_get_the_default_row(small):
    _, tables, _ = small
    assert tables.user_rows(pa.array(["c", "nobody", "a"])).tolist() == [2, 3, 0]
