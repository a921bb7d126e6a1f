"""The named SQL metrics of the replay on a tiny Parquet fixture with hand-computed
answers, cross-checked against the NumPy implementation; segment assignment."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.evaluation import bootstrap as eval_bootstrap
from pipeline.evaluation.queries import METRICS, PREDICTIONS, assign_segments, compute_metrics

T = dt.datetime(2000, 1, 1, 12, tzinfo=dt.UTC)

# (user, item, day, label, score, rank); u1 is a new user on its first day, u2 a heavy user.
EVENTS = [
    ("u1", "i1", 0, 1.0, 2.0, 0),
    ("u1", "i2", 0, 0.0, 1.0, 1),
    ("u1", "i3", 0, 1.0, 0.5, 12),
    ("u2", "i1", 0, 0.0, 3.0, 0),
    ("u2", "i4", 0, 1.0, 1.0, 3),
    ("u2", "i5", 1, 1.0, -1.0, 9),
    ("u2", "i6", 1, 0.0, -1.0, 4),
]
WHO = {"u1": ("0", "joined_first_day"), "u2": (">100", "existing_at_T0")}


def table(events=EVENTS, arm: str = "a", who=WHO) -> pa.Table:
    rows = [
        dict(
            user_id=u,
            item_id=i,
            ts=T + dt.timedelta(days=d),
            label=y,
            arm=arm,
            segment=who[u][0],
            cohort=who[u][1],
            refresh_point=T + dt.timedelta(days=d),
            day=d,
            score=s,
            rank=r,
            n_candidates=50,
        )
        for u, i, d, y, s, r in events
    ]
    return pa.Table.from_pylist(rows, schema=PREDICTIONS)


def values(metrics: pa.Table, arm: str, slice_: str) -> dict[str, float]:
    return {r["metric"]: r["value"] for r in metrics.to_pylist() if r["arm"] == arm and r["slice"] == slice_}


@pytest.fixture()
def fixture_path(tmp_path):
    path = tmp_path / "predictions.parquet"
    pq.write_table(table(), path)
    return path


def test_hand_computed_overall(fixture_path):
    got = values(compute_metrics(fixture_path), "a", "overall")
    # AUC: 4 positives x 3 negatives; winning pairs 2 + 1 + 1.5 + 0.5 (ties count one half).
    assert got["auc"] == pytest.approx(5 / 12)
    # GAUC: u1 0.5 over 3 events, u2 1.5/4 over 4 events.
    assert got["gauc"] == pytest.approx((3 * 0.5 + 4 * 0.375) / 7)
    # Per user-day: u1 d0 0.5 (3 events), u2 d0 0 (2), u2 d1 a tie, 0.5 (2); u2's cross-day pairs drop out.
    assert got["gauc_day"] == pytest.approx((3 * 0.5 + 2 * 0.0 + 2 * 0.5) / 7)
    losses = [math.log1p(math.exp(-s)) if y else math.log1p(math.exp(s)) for _, _, _, y, s, _ in EVENTS]
    assert got["logloss"] == pytest.approx(sum(losses) / len(losses))
    # NDCG@10 per user-day with positives: u1 d0 ranks {0, 12}; u2 d0 rank 3; u2 d1 rank 9.
    ndcg = [1 / (1 + 1 / math.log2(3)), 1 / math.log2(5), 1 / math.log2(11)]
    assert got["ndcg_at_10"] == pytest.approx(sum(ndcg) / 3)
    assert got["recall_at_10"] == pytest.approx((0.5 + 1 + 1) / 3)


def test_slices_hold_their_events(fixture_path):
    metrics = compute_metrics(fixture_path)
    assert values(metrics, "a", "bucket 0")["auc"] == pytest.approx(0.5)
    assert values(metrics, "a", "bucket >100")["auc"] == pytest.approx(0.375)
    assert values(metrics, "a", "joined_first_day")["auc"] == pytest.approx(0.5)
    assert values(metrics, "a", "joined_after_T0") == values(metrics, "a", "joined_first_day")
    counts = {(r["metric"], r["slice"]): (r["n_events"], r["n_users"]) for r in metrics.to_pylist()}
    assert counts[("logloss", "overall")] == (7, 2)
    assert counts[("logloss", "existing_at_T0")] == (4, 1)
    assert not any(sl == "joined_later_days" for _, sl in counts)  # no such events


def test_gauc_skips_single_class_users():
    events = EVENTS + [("u3", "i1", 0, 1.0, 5.0, 0), ("u3", "i2", 0, 1.0, 4.0, 1)]
    got = values(compute_metrics(table(events, who=WHO | {"u3": ("0", "joined_first_day")})), "a", "overall")
    assert got["gauc"] == pytest.approx(3 / 7)


def random_predictions(seed: int, arms=("a", "b", "c"), users: int = 12, events: int = 300) -> pa.Table:
    rng = np.random.default_rng(seed)
    segs = ["0", "1-5", "6-20", "21-100", ">100"]
    cohorts = ["existing_at_T0", "joined_first_day", "joined_later_days"]
    user = rng.integers(0, users, events)
    day = rng.integers(0, 4, events)
    label = (rng.random(events) < 0.5).astype(np.float32)
    parts = []
    for k, arm in enumerate(arms):
        score = np.round(label * k + rng.normal(size=events), 1).astype(np.float32)  # rounding makes ties
        parts.append(
            pa.table(
                {
                    "user_id": pa.array([f"u{u}" for u in user]),
                    "item_id": pa.array([f"i{j}" for j in range(events)]),
                    "ts": pa.array(
                        [T + dt.timedelta(days=int(d)) for d in day], PREDICTIONS.field("ts").type
                    ),
                    "label": label,
                    "arm": pa.array([arm] * events),
                    "segment": pa.array([segs[(u + d) % 5] for u, d in zip(user, day)]),
                    "cohort": pa.array([cohorts[u % 3] for u in user]),
                    "refresh_point": pa.array(
                        [T + dt.timedelta(days=int(d)) for d in day], PREDICTIONS.field("ts").type
                    ),
                    "day": day.astype(np.int32),
                    "score": score,
                    "rank": rng.integers(0, 20, events).astype(np.int32),
                    "n_candidates": np.full(events, 20, np.int32),
                },
                schema=PREDICTIONS,
            )
        )
    return pa.concat_tables(parts)


@pytest.mark.parametrize("seed", [0, 1])
def test_sql_matches_numpy(seed):
    preds = random_predictions(seed)
    sql = {(r["metric"], r["arm"], r["slice"]): r["value"] for r in compute_metrics(preds).to_pylist()}
    numpy = {
        (r["metric"], r["arm"], r["slice"]): r["value"]
        for r in eval_bootstrap.point_estimates(eval_bootstrap.stat_functions(preds)).to_pylist()
    }
    assert set(sql) == set(numpy)
    assert {m for m, _, _ in sql} == set(METRICS)
    for key, value in sql.items():
        assert numpy[key] == pytest.approx(value, abs=1e-9), key


def test_segments_and_cohorts():
    t0 = T
    hist = (
        [("old", -10), ("old", -5)]
        + [("heavy", -20 + k * 0.1) for k in range(7)]
        + [("new", 1 / 24), ("new", 2 / 24), ("new", 2.5)]
    )
    history = pa.table(
        {
            "user_id": [u for u, _ in hist],
            "ts": pa.array([t0 + dt.timedelta(days=d) for _, d in hist], PREDICTIONS.field("ts").type),
        }
    )
    midnight2 = dt.datetime(2000, 1, 3, tzinfo=dt.UTC)
    test = pa.table(
        {
            "user_id": ["old", "new", "new", "heavy"],
            "ts": pa.array(
                [
                    t0 + dt.timedelta(hours=2),
                    t0 + dt.timedelta(hours=1),
                    t0 + dt.timedelta(days=2.5),
                    t0 + dt.timedelta(hours=3),
                ],
                PREDICTIONS.field("ts").type,
            ),
            "refresh_point": pa.array([t0, t0, midnight2, t0], PREDICTIONS.field("ts").type),
        }
    )
    out = (
        assign_segments(test, history, t0)
        .sort_by([("user_id", "ascending"), ("ts", "ascending")])
        .to_pylist()
    )
    got = [(r["user_id"], r["n_before"], r["segment"], r["cohort"]) for r in out]
    assert got == [
        ("heavy", 7, "6-20", "existing_at_T0"),
        ("new", 0, "0", "joined_first_day"),
        ("new", 2, "1-5", "joined_later_days"),  # two events on its first day, before the 2nd midnight
        ("old", 2, "1-5", "existing_at_T0"),
    ]
