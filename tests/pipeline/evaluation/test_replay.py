"""The replay's period, day assignment, catalog ranking, and the MeLU-protocol metrics."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from meta_embed.tables import TS_TYPE
from pipeline.evaluation.melu import MIN_NDCG_ITEMS, ndcg
from pipeline.evaluation.replay import make_period, popularity_logits, rank_in_catalog, replay_events

UTC = dt.UTC


def events(times: list[dt.datetime], users: list[str] | None = None) -> pa.Table:
    users = users or [f"u{k % 3}" for k in range(len(times))]
    return pa.table(
        {
            "user_id": users,
            "item_id": [f"i{k}" for k in range(len(times))],
            "ts": pa.array(times, TS_TYPE),
            "label": pa.array([1.0, 0.0] * (len(times) // 2) + [1.0] * (len(times) % 2), pa.float32()),
        }
    )


def test_period_starts_at_t0_then_every_midnight():
    start = dt.datetime(2000, 1, 1, tzinfo=UTC)
    table = events([start + dt.timedelta(hours=7 * k) for k in range(100)])
    period = make_period(table, days=3, t0_quantile=0.8, valid_quantile=0.7)
    ts = sorted(table["ts"].to_pylist())
    assert period.t0 == ts[79] and period.valid_start == ts[69]  # discrete quantiles: actual event times
    assert period.end == period.t0 + dt.timedelta(days=3)
    assert period.points[0] == period.t0
    assert all(p.hour == 0 and p.minute == 0 for p in period.points[1:])
    assert len(period.points) == 4 and period.points[-1] < period.end
    assert period.points[1] - period.points[0] < dt.timedelta(days=1)


def test_each_test_event_is_served_by_the_last_point_before_it():
    t0 = dt.datetime(2000, 1, 10, 15, tzinfo=UTC)
    times = [t0 - dt.timedelta(days=9 - k) for k in range(8)] + [
        t0,
        t0 + dt.timedelta(hours=8),
        t0 + dt.timedelta(hours=10),
        t0 + dt.timedelta(days=1.5),
    ]
    table = events(times)
    period = make_period(table, days=2, t0_quantile=0.7, valid_quantile=0.5)
    assert period.t0 == t0
    got = replay_events(table, period)
    by_ts = {r["ts"]: (r["day"], r["refresh_point"]) for r in got.to_pylist()}
    midnight = dt.datetime(2000, 1, 11, tzinfo=UTC)
    assert by_ts[t0] == (0, t0)
    assert by_ts[t0 + dt.timedelta(hours=8)] == (0, t0)  # 23:00, before midnight
    assert by_ts[t0 + dt.timedelta(hours=10)] == (1, midnight)
    assert by_ts[t0 + dt.timedelta(days=1.5)] == (2, midnight + dt.timedelta(days=1))
    assert set(got.column_names) >= {"segment", "cohort", "n_before"}


def test_rank_in_catalog_counts_unseen_candidates_and_ties_against_the_item():
    scores = np.array([[0.9, 0.5, 0.7, 0.5, 0.1], [0.2, 0.3, 0.4, 0.5, 0.6]])
    seen = np.array(
        [
            [True, False, False, False, False],  # user 0 saw item 0 (the top score)
            [False, False, False, False, True],
        ]
    )  # user 1 saw item 4, but rates it again today
    rank, n = rank_in_catalog(scores, seen.copy(), np.array([0, 0, 1]), np.array([1, 2, 4]))
    # user 0, item 1 (0.5): item 2 (0.7) and item 3 (0.5, tie) are ahead; item 0 is not a candidate
    assert rank.tolist() == [2, 0, 0]
    assert n.tolist() == [4, 4, 5]


def test_ndcg_gain_and_minimum_items():
    rating = np.array([5.0, 3.0, 1.0, 4.0, 4.0])
    pred = np.array([1.0, 3.0, 2.0, 9.0, 8.0])
    group = np.array([0, 0, 0, 1, 1])
    value, users = ndcg(pred, rating, group, 3)
    gains = np.array([2**3 - 1, 2**1 - 1, 2**5 - 1]) / np.log2([2, 3, 4])  # predicted order 3.0, 2.0, 1.0
    ideal = np.array([2**5 - 1, 2**3 - 1, 2**1 - 1]) / np.log2([2, 3, 4])
    assert MIN_NDCG_ITEMS == 3 and users == 1  # user 1 has only two query items
    assert value == pytest.approx(gains.sum() / ideal.sum())
    assert ndcg(pred, rating, group, 1)[0] == pytest.approx((2**3 - 1) / (2**5 - 1))


def test_popularity_is_the_smoothed_positive_rate():
    table = pa.table({"item_id": ["a", "a", "b"], "label": pa.array([1.0, 1.0, 0.0], pa.float32())})
    got = popularity_logits(table, pa.array(["a", "b", "c"]), smoothing=1.0)
    rate = np.array([(2 + 2 / 3) / 3, (2 / 3) / 2, 2 / 3])  # prior 2/3, one pseudo-event
    np.testing.assert_allclose(got, np.log(rate / (1 - rate)), rtol=1e-6)
