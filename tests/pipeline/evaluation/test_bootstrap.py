"""The paired, user-clustered bootstrap: seeded, per-user weights equal an explicitly
resampled table, zero interval for an identical arm, interval above 0 for a better one."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.evaluation import bootstrap as eval_bootstrap
from pipeline.evaluation.queries import compute_metrics
from tests.pipeline.evaluation.test_queries import random_predictions


def diff_row(diffs: pa.Table, arm: str, ref: str, metric: str, slice_: str = "overall") -> dict:
    rows = [
        r
        for r in diffs.to_pylist()
        if (r["arm"], r["reference"], r["metric"], r["slice"]) == (arm, ref, metric, slice_)
    ]
    assert len(rows) == 1
    return rows[0]


def test_identical_arm_has_a_zero_interval():
    preds = random_predictions(0, arms=("ref",))
    twin = preds.set_column(
        preds.schema.get_field_index("arm"), preds.schema.field("arm"), pa.array(["twin"] * preds.num_rows)
    )
    _, diffs = eval_bootstrap.bootstrap(pa.concat_tables([preds, twin]), ("ref",), resamples=200, seed=3)
    for metric in ("auc", "gauc", "gauc_day", "logloss", "ndcg_at_10", "recall_at_10"):
        row = diff_row(diffs, "twin", "ref", metric)
        assert [row[k] for k in ("diff", "lo", "hi", "p_le_0")] == [0.0, 0.0, 0.0, 1.0]


def test_clearly_better_arm_is_above_zero_and_worse_below():
    preds = random_predictions(1, arms=("a", "b", "c"), users=40, events=1500)  # score = label * k + noise
    _, diffs = eval_bootstrap.bootstrap(preds, ("a",), resamples=300, seed=0)
    for metric in ("auc", "gauc", "gauc_day"):
        row = diff_row(diffs, "c", "a", metric)
        assert row["lo"] > 0 and row["diff"] > 0.2
    row = diff_row(diffs, "c", "a", "logloss")
    assert row["hi"] < 0 or row["lo"] > 0  # logloss moves clearly too, in one direction
    intervals, _ = eval_bootstrap.bootstrap(preds, ("a",), resamples=300, seed=0)
    for r in intervals.filter(pc.equal(intervals["slice"], "overall")).to_pylist():
        assert r["lo"] <= r["value"] <= r["hi"], r


def test_seeded():
    preds = random_predictions(2)
    first = eval_bootstrap.bootstrap(preds, ("a",), resamples=100, seed=7)[1]
    again = eval_bootstrap.bootstrap(preds, ("a",), resamples=100, seed=7)[1]
    other = eval_bootstrap.bootstrap(preds, ("a",), resamples=100, seed=8)[1]
    assert first.equals(again)
    assert not first.equals(other)


def test_user_weights_equal_an_explicitly_resampled_table():
    """Each resample weights a user's events by how often the user was drawn: the same
    numbers as the SQL metrics on a table where drawn users are copied in."""
    preds = random_predictions(4, arms=("a", "b"), users=9, events=200)
    prep = eval_bootstrap.stat_functions(preds)
    w = eval_bootstrap._draws(np.random.default_rng(11), 3, len(prep.users))
    assert np.all(w.sum(1) == len(prep.users))
    user_col = preds.column("user_id").to_pylist()
    for b in range(3):
        copies = []
        for k, user in enumerate(prep.users):
            rows = pa.array([i for i, u in enumerate(user_col) if u == user])
            for c in range(int(w[b, k])):
                part = preds.take(rows)
                copies.append(
                    part.set_column(0, preds.schema.field("user_id"), pa.array([f"{user}#{c}"] * len(part)))
                )
        sql = {
            (r["metric"], r["arm"], r["slice"]): r["value"]
            for r in compute_metrics(pa.concat_tables(copies)).to_pylist()
        }
        for (arm, slice_), funcs in prep.stats.items():
            for metric, f in funcs.items():
                if (metric, arm, slice_) in sql:
                    assert f(w[b : b + 1])[0] == pytest.approx(sql[(metric, arm, slice_)], abs=1e-9), (
                        metric,
                        arm,
                        slice_,
                    )


def test_rejects_zero_resamples():
    with pytest.raises(ValueError, match="resamples"):
        eval_bootstrap.resample(eval_bootstrap.stat_functions(random_predictions(0)), 0, seed=0)
