"""The evaluation's targets and the decomposition of the gap to wide-and-deep, read off
the paired bootstrap's difference table (`bootstrap.bootstrap`, references in
`evaluation_config.REFERENCES`).

Each target names a metric, an arm, a reference arm, a slice and the test its difference
must pass; `check` gives each one's measured difference, whether it is met, and a verdict
in one plain line. The decomposition splits "meta vs W&D" into the shared model (zero-step
`meta_init` against W&D without user ids, `wd_no_id`) and the personalization lift on top
of it (`meta_refresh - meta_init` against `wd_static - wd_no_id`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

from pipeline.evaluation.melu import PUBLISHED, SCENARIO_NAMES

Row = dict  # a row of the differences table: metric, slice, arm, reference, diff, lo, hi, p_le_0


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    text: str
    metric: str
    arm: str
    reference: str
    slice: str
    test: Callable[[Row], bool]
    stretch: bool = False


TARGETS = (
    Target("shared model", "meta_init - wd_no_id, GAUC overall: >= -0.002", "gauc", "meta_init", "wd_no_id",
           "overall", lambda r: r["diff"] >= -0.002),
    Target("overall, per user-day", "meta_refresh - wd_static, gauc_day overall: 95% interval above 0",
           "gauc_day", "meta_refresh", "wd_static", "overall", lambda r: r["lo"] > 0),
    Target("overall, pooled", "meta_refresh - wd_static, GAUC overall: interval includes or exceeds 0",
           "gauc", "meta_refresh", "wd_static", "overall", lambda r: r["hi"] >= 0),
    Target("new users' later days", "meta_refresh - wd_static, gauc_day joined_later_days: >= +0.02, "
           "interval above 0", "gauc_day", "meta_refresh", "wd_static", "joined_later_days",
           lambda r: r["diff"] >= 0.02 and r["lo"] > 0),
    Target("users existing at T0", "meta_refresh - wd_static, gauc_day existing_at_T0: interval includes or "
           "exceeds 0", "gauc_day", "meta_refresh", "wd_static", "existing_at_T0", lambda r: r["hi"] >= 0),
    Target("first day", "meta_refresh - popularity, GAUC joined_first_day: >= 0", "gauc", "meta_refresh",
           "popularity", "joined_first_day", lambda r: r["diff"] >= 0),
    Target("stretch, vs retrained W&D", "meta_refresh - wd_retrained, gauc_day overall: interval above 0",
           "gauc_day", "meta_refresh", "wd_retrained", "overall", lambda r: r["lo"] > 0, stretch=True),
)  # fmt: skip
"""The replay's targets (ML-1M, default T0)."""

COHORTS = ("overall", "existing_at_T0", "joined_first_day", "joined_later_days")
DECOMPOSITION = (
    ("shared model: meta_init - wd_no_id", "meta_init", "wd_no_id"),
    ("meta lift: meta_refresh - meta_init", "meta_refresh", "meta_init"),
    ("W&D lift: wd_static - wd_no_id", "wd_static", "wd_no_id"),
    ("meta_refresh - wd_static", "meta_refresh", "wd_static"),
)
"""The columns of the decomposition: label, arm, reference."""


def find(differences: Iterable[Row], metric: str, arm: str, reference: str, slice_: str) -> Row | None:
    for r in differences:
        if (r["metric"], r["arm"], r["reference"], r["slice"]) == (metric, arm, reference, slice_):
            return r
    return None


def interval(r: Row) -> str:
    return f"{r['diff']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}]"


def _verdict(t: Target, r: Row, met: bool) -> str:
    lead = "leads" if r["diff"] > 0 else "trails"
    return (f"{'met' if met else 'missed'}: {t.arm} {lead} {t.reference} by {abs(r['diff']):.4f} "
            f"{t.metric} on {t.slice} (95% interval [{r['lo']:+.4f}, {r['hi']:+.4f}])")  # fmt: skip


def check(differences: list[Row], melu_rows: Iterable[dict] = ()) -> tuple[dict, ...]:
    """Every target: name, target, measured, met (None when its slice is empty), verdict, stretch."""
    out = []
    for t in TARGETS:
        r = find(differences, t.metric, t.arm, t.reference, t.slice)
        if r is None or not math.isfinite(r["diff"]):  # no user (or user-day) with both labels
            why = "slice empty" if r is None else f"no {t.metric} defined on it"
            out.append({"name": t.name, "target": t.text, "measured": f"not measured ({why})",
                        "met": None, "verdict": f"not measured: {why}",
                        "stretch": t.stretch})  # fmt: skip
            continue
        met = bool(t.test(r))
        out.append({"name": t.name, "target": t.text, "measured": interval(r), "met": met,
                    "verdict": _verdict(t, r, met), "stretch": t.stretch})  # fmt: skip
    melu_rows = list(melu_rows)
    if melu_rows:
        steps = max(int(r["model"].split("-")[1]) for r in melu_rows if r["model"].startswith("meta-"))
        for scenario in ("user_cold_state", "user_and_item_cold_state"):
            mae = next(
                r["mae"] for r in melu_rows if r["model"] == f"meta-{steps}" and r["scenario"] == scenario
            )
            ref = PUBLISHED["MeLU-5"][scenario][0]
            met = bool(mae <= ref)
            out.append({
                "name": f"MeLU, {SCENARIO_NAMES[scenario]}",
                "target": f"MeLU protocol, {SCENARIO_NAMES[scenario]}: MAE (meta-{steps}) <= MeLU-5's {ref}",
                "measured": f"{mae:.4f}", "met": met, "stretch": False,
                "verdict": f"{'met' if met else 'missed'}: MAE {mae:.4f} against MeLU-5's published {ref}",
            })  # fmt: skip
    return tuple(out)


def decomposition(differences: list[Row], metric: str) -> list[list[str]]:
    """Rows (cohort, then one interval per DECOMPOSITION column) of `metric`."""
    rows = []
    for cohort in COHORTS:
        cells = [find(differences, metric, arm, ref, cohort) for _, arm, ref in DECOMPOSITION]
        if any(c is not None for c in cells):
            rows.append([cohort] + ["n/a" if c is None else interval(c) for c in cells])
    return rows
