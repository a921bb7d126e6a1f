"""Targets read off a hand-made difference table: each one's test on its own row, the
verdict line, an empty slice reported as not measured, and the decomposition's cells."""

from __future__ import annotations

from pipeline.evaluation.targets import TARGETS, check, decomposition


def row(metric, arm, reference, slice_, diff, lo, hi):
    return {"metric": metric, "arm": arm, "reference": reference, "slice": slice_, "diff": diff, "lo": lo,
            "hi": hi, "p_le_0": 0.5}  # fmt: skip


def test_each_target_is_judged_on_its_own_row():
    rows = [
        row("gauc", "meta_init", "wd_no_id", "overall", -0.0015, -0.004, 0.001),  # within -0.002: met
        row("gauc_day", "meta_refresh", "wd_static", "overall", 0.003, -0.0001, 0.006),  # interval touches 0
        row("gauc", "meta_refresh", "wd_static", "overall", -0.004, -0.008, 0.0),  # hi = 0: includes 0
        row("gauc_day", "meta_refresh", "wd_static", "joined_later_days", 0.025, 0.01, 0.04),
        row("gauc_day", "meta_refresh", "wd_static", "existing_at_T0", -0.01, -0.02, -0.001),
        row("gauc_day", "meta_refresh", "wd_retrained", "overall", *[float("nan")] * 3),  # no user-day
        # first day: no rows (an empty slice)
    ]
    got = {t["name"]: t for t in check(rows)}
    assert [t.name for t in TARGETS] == list(got)
    assert [got[t.name]["met"] for t in TARGETS] == [True, False, True, True, False, None, None]
    assert got["shared model"]["verdict"] == (
        "met: meta_init trails wd_no_id by 0.0015 gauc on overall (95% interval [-0.0040, +0.0010])"
    )
    assert (
        got["first day"]["measured"] == "not measured (slice empty)"
        and got["stretch, vs retrained W&D"]["stretch"]
        and got["stretch, vs retrained W&D"]["verdict"] == "not measured: no gauc_day defined on it"
    )


def test_melu_targets_use_the_most_steps():
    melu = [{"model": f"meta-{k}", "scenario": s, "mae": mae} for k, mae in ((1, 0.70), (5, 0.80))
            for s in ("user_cold_state", "user_and_item_cold_state")]  # fmt: skip
    got = check([], melu)[-2:]
    assert [t["met"] for t in got] == [False, True]  # 0.80 > MeLU-5's 0.7854; 0.80 <= 0.9235
    assert got[0]["verdict"] == "missed: MAE 0.8000 against MeLU-5's published 0.7854"


def test_decomposition_rows_by_cohort():
    rows = [row("gauc", "meta_init", "wd_no_id", "overall", -0.01, -0.02, 0.0),
            row("gauc", "wd_static", "wd_no_id", "overall", 0.006, 0.004, 0.008)]  # fmt: skip
    assert decomposition(rows, "gauc") == [
        ["overall", "-0.0100 [-0.0200, +0.0000]", "n/a", "+0.0060 [+0.0040, +0.0080]", "n/a"]
    ]
    assert decomposition(rows, "gauc_day") == []
