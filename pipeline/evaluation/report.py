"""The evaluation report: the targets of the evaluation checked against the measured
numbers, and report.md with its plots (the costs per arm come from `costs`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import types
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.evaluation import plots, targets
from pipeline.evaluation.melu import PUBLISHED, SCENARIO_NAMES
from pipeline.evaluation.queries import METRICS, SLICES, calibration, compute_metrics
from pipeline.evaluation.replay import ARMS, Period

SLICE_NAMES = [s for s, _, _ in SLICES]


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _ci(v: float, lo: float, hi: float, signed: bool = False) -> str:
    if v is None or math.isnan(v):
        return "n/a"
    f = "+.4f" if signed else ".4f"
    return f"{v:{f}} [{lo:{f}}, {hi:{f}}]"


@dataclasses.dataclass(frozen=True)
class Summary:
    """Everything the report shows."""

    cfg: Any
    period: Period
    test: pa.Table
    metrics: pa.Table
    intervals: pa.Table
    differences: pa.Table
    costs: dict
    melu: tuple[dict, ...]
    melu_info: dict
    tuned: dict  # Tuned as a dict: cfg, epochs, val_score, trials, seconds
    tuned_no_id: dict  # the same for wd_no_id
    meta: dict
    daily: pa.Table
    calibration: pa.Table

    def diff(self, arm: str, ref: str, slice_: str, metric: str = "gauc") -> dict | None:
        for r in self.differences.to_pylist():
            if (r["arm"], r["reference"], r["slice"], r["metric"]) == (arm, ref, slice_, metric):
                return r
        return None

    def targets(self) -> tuple[dict, ...]:
        """The evaluation's targets, each with the measured numbers, whether it is met, and a verdict."""
        return targets.check(self.differences.to_pylist(), self.melu)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def _metric_table(s: Summary, metric: str, arms: list[str]) -> list[str]:
    iv = {(r["arm"], r["slice"]): r for r in s.intervals.to_pylist() if r["metric"] == metric}
    n = {
        r["slice"]: (r["n_users"], r["n_events"])
        for r in s.metrics.to_pylist()
        if r["metric"] == metric and r["arm"] == "wd_static"
    }
    rows = []
    for sl in SLICE_NAMES:
        if sl not in n:
            continue
        cells = [
            _ci(iv[(a, sl)]["value"], iv[(a, sl)]["lo"], iv[(a, sl)]["hi"]) if (a, sl) in iv else "n/a"
            for a in arms
        ]
        rows.append([sl, str(n[sl][0]), str(n[sl][1])] + cells)
    return _table(["slice", "users", "events"] + arms, rows)


def _diff_table(s: Summary, metric: str, arms: list[str]) -> list[str]:
    rows = []
    for sl in SLICE_NAMES:
        for a in arms:
            cells = []
            for ref in ("wd_static", "wd_retrained"):
                d = s.diff(a, ref, sl, metric)
                cells.append("—" if d is None else _ci(d["diff"], d["lo"], d["hi"], signed=True))
            if any(c != "—" for c in cells):
                rows.append([sl, a] + cells)
    return _table(["slice", "arm", "vs wd_static", "vs wd_retrained"], rows)


def _target_lines(s: Summary) -> list[str]:
    rows = [[("(stretch) " if t["stretch"] else "") + t["target"], t["measured"],
             {True: "yes", False: "**no**", None: "n/a"}[t["met"]]] for t in s.targets()]  # fmt: skip
    return _table(["target", "measured (diff [95% interval])", "met"], rows) + [
        "",
        "In plain words:",
        "",
        *[f"- {t['name']}: {t['verdict']}." for t in s.targets()],
        "",
        "`gauc` pools each user's events over the whole test period, so for an arm whose scores change "
        "from night to night it also compares items scored by different snapshots, which no served "
        "ranking does; `gauc_day` compares items only within one user's day.",
        "",
    ]


def _decomposition_lines(s: Summary) -> list[str]:
    diffs = s.differences.to_pylist()
    header = ["cohort"] + [label for label, _, _ in targets.DECOMPOSITION]
    lines = [
        "Differences with paired 95% intervals. The first column is the shared model alone (no "
        "personalization on either side); the next two are what personalization adds on top of "
        "each shared model; the last is the sum of both gaps.",
        "",
    ]
    for metric in ("gauc", "gauc_day"):
        lines += [f"{metric}:", ""] + _table(header, targets.decomposition(diffs, metric)) + [""]
    return lines


def _setup_lines(s: Summary) -> list[str]:
    t = s.test
    new = pc.sum(pc.not_equal(t.column("cohort"), "existing_at_T0")).as_py() or 0
    days = len(s.period.points)
    return [
        f"- Dataset: `{s.cfg.dataset}`; T0 = {s.period.t0.isoformat()} (the {s.cfg.t0_quantile:.0%} quantile "
        "of event "
        f"times); W&D validation period [{s.period.valid_start.isoformat()}, T0) (from the "
        f"{s.cfg.valid_quantile:.0%} quantile).",
        f"- Test period [T0, {s.period.end.isoformat()}): {days} refresh points (T0, then every 00:00 UTC), "
        f"{t.num_rows} events from {len(pc.unique(t.column('user_id')))} users; "
        f"{new / max(t.num_rows, 1):.1%} of the "
        "events come from users with no event before T0.",
        f"- Intervals: paired, user-clustered bootstrap, {s.cfg.resamples} resamples, seed {s.cfg.seed}; "
        "95% percentile intervals.",
    ]


def _cost_lines(s: Summary) -> list[str]:
    rows = []
    for arm in ARMS:
        c = s.costs.get(arm)
        if c is None:
            continue
        refresh = "—"
        if "nightly_refresh_mean_s" in c:
            refresh = (
                f"full at T0: {c['refresh_full_s']:.1f}s ({c['refresh_full_s_per_1k_users']:.2f}s per 1k "
                "users); "
                f"nightly: {c['nightly_refresh_mean_s']:.1f}s for {c['nightly_users_adapted_mean']:.0f} "
                "adapted users "
                f"({c['nightly_refresh_s_per_1k_users']:.2f}s per 1k users in the snapshot)"
            )
        elif "refresh_full_s" in c:
            refresh = f"once at T0: {c['refresh_full_s']:.1f}s"
        if "retrain_mean_s" in c:
            refresh = (
                f"{c['retrains']} weekly retrains, {c['retrain_mean_s']:.0f}s each "
                f"(nightly would be ~{c['nightly_equivalent_s']:.0f}s over the period)"
            )
        rows.append([arm, f"{c['training_s']:.0f}s", refresh, str(c["serving_bytes_per_user"])])
    return _table(["arm", "training (at T0)", "refresh / retrain", "serving bytes per user"], rows)


def _melu_lines(s: Summary) -> list[str]:
    ours = sorted({r["model"] for r in s.melu})
    header = (
        ["scenario"]
        + [f"published {m}" for m in PUBLISHED]
        + [f"ours: {m}" for m in ours]
        + ["test ratings / users"]
    )
    rows = []
    for sc, name in SCENARIO_NAMES.items():
        got = {r["model"]: r for r in s.melu if r["scenario"] == sc}
        cells = ["/".join(f"{v:.4f}" for v in PUBLISHED[m][sc]) for m in PUBLISHED]
        cells += [
            f"{_fmt(got[m]['mae'])}/{_fmt(got[m]['ndcg_at_1'])}/{_fmt(got[m]['ndcg_at_3'])}" for m in ours
        ]
        first = got[ours[0]]
        rows.append([name] + cells + [f"{first['n_ratings']} / {first['n_users']}"])
    return _table(header, rows)


def write(s: Summary, out: Path) -> Path:
    """report.md and its PNGs under `out`."""
    arms = [a for a in ARMS if a in set(s.intervals.column("arm").to_pylist())]
    present = [sl for sl in SLICE_NAMES if sl in set(s.intervals.column("slice").to_pylist())]
    users = {
        r["slice"]: r["n_users"]
        for r in s.metrics.to_pylist()
        if r["metric"] == "gauc" and r["arm"] == "wd_static"
    }
    for metric in ("gauc", "auc", "ndcg_at_10"):
        plots.by_slice(s.intervals, present, metric, users, out / f"{metric}_by_slice.png")
    for metric in ("gauc", "gauc_day"):
        plots.differences(
            s.differences, present, metric, "wd_static", users, out / f"{metric}_vs_wd_static.png"
        )
    day_events = {
        int(r["slice"].split()[1]): r["n_events"] for r in s.daily.to_pylist() if r["arm"] == "wd_static"
    }
    plots.by_day(s.daily, "gauc", day_events, out / "gauc_by_day.png")
    plots.calibration(s.calibration, out / "calibration.png")
    lines = [f"# Offline A/B evaluation: nightly meta-embedding refresh vs wide & deep ({s.cfg.dataset})", ""]
    if s.cfg.note:
        lines += [f"> {s.cfg.note}", ""]
    lines += ["## Setup", ""] + _setup_lines(s) + [""]
    lines += ["## Targets", ""] + _target_lines(s)
    lines += ["## Where the gap is: shared model and personalization lift", ""] + _decomposition_lines(s)
    lines += ["## GAUC by slice (95% intervals)", ""] + _metric_table(s, "gauc", arms) + [""]
    lines += ["![GAUC by slice](gauc_by_slice.png)", "", "## GAUC differences against the baselines", ""]
    lines += [
        "![GAUC minus wd_static](gauc_vs_wd_static.png)",
        "",
        "![GAUC per user-day minus wd_static](gauc_day_vs_wd_static.png)",
        "",
    ]
    lines += _diff_table(s, "gauc", arms) + [""]
    for metric in METRICS:
        if metric == "gauc":
            continue
        lines += [f"## {metric} by slice", ""] + _metric_table(s, metric, arms) + [""]
        lines += [f"Differences ({metric}):", ""] + _diff_table(s, metric, arms) + [""]
    lines += ["![AUC by slice](auc_by_slice.png)", "", "![NDCG@10 by slice](ndcg_at_10_by_slice.png)", ""]
    lines += [
        "## Across refresh points",
        "",
        "![GAUC by day](gauc_by_day.png)",
        "",
        "## Calibration",
        "",
        "![calibration](calibration.png)",
        "",
    ]
    lines += ["## Wide & deep baseline", ""] + _wd_lines(s) + [""]
    lines += ["## Cost", ""] + _cost_lines(s) + [""]
    if s.melu:
        lines += ["## MeLU protocol (MovieLens regression, four scenarios): MAE / nDCG@1 / nDCG@3", ""]
        lines += _melu_lines(s) + ["", MELU_NOTE.format(**s.melu_info.get("counts", {})), ""]
    lines += ["## Models at T0", ""] + [
        f"- meta ({m}): validation AUC {v['val_auc']:.4f} (held-out users before T0), "
        f"best epoch {v['best_epoch']}, {v['seconds']:.0f}s"
        for m, v in s.meta.items()
    ]
    lines += [
        "",
        "How to read this report, the protocol, and what was tried where a target is missed: "
        "`docs/evaluation.md`.",
        "",
        f"Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; config: `config.json`.",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _wd_lines(s: Summary) -> list[str]:
    lines = []
    for arm, t in (("wd_static", s.tuned), ("wd_no_id", s.tuned_no_id)):
        if not t:
            continue
        c = t["cfg"]
        lines += [
            f"`{arm}`: chosen on the validation period: lr={c['lr']:g}, embedding_dim={c['embedding_dim']}, "
            f"{t['epochs']} epochs; validation AUC **{t['val_score']:.4f}**. Cost: tuning "
            f"{t['seconds']:.0f}s, "
            f"refit on all events before T0 {s.costs[arm]['fit_s']:.0f}s. Other settings: hidden "
            f"{c['hidden']}, "
            f"crosses {c['crosses']}, init_std {c['init_std']}, oov_rate {c['oov_rate']}, batch "
            f"{c['batch_size']}, patience {c['patience']}, user ids "
            f"{'yes' if c.get('user_ids', True) else 'no'}.",
            "",
        ]
        rows = [[f"{r['lr']:g}", str(r["embedding_dim"]), f"{r['val_score']:.4f}", str(r["epochs"]),
                 f"{r['seconds']:.0f}"] for r in t["trials"]]  # fmt: skip
        lines += _table(["lr", "embedding_dim", "validation AUC", "best epoch", "seconds"], rows) + [""]
    return lines


def _period(d: dict) -> Period:
    ts = lambda v: dt.datetime.fromisoformat(str(v))  # noqa: E731
    return Period(ts(d["valid_start"]), ts(d["t0"]), ts(d["end"]), tuple(ts(p) for p in d["points"]))


def render(out: str | Path) -> tuple[Path, Summary]:
    """(Re-)write report.md and the plots of a finished run from the files under `out`."""
    out = Path(out)
    cfg = types.SimpleNamespace(**json.loads((out / "config.json").read_text())["config"])
    saved = json.loads((out / "summary.json").read_text())
    preds = out / "predictions.parquet"
    test = pq.read_table(preds, columns=["user_id", "cohort", "arm"], filters=[("arm", "=", "wd_static")])
    summary = Summary(
        cfg,
        _period(saved["period"]),
        test,
        pq.read_table(out / "metrics.parquet"),
        pq.read_table(out / "intervals.parquet"),
        pq.read_table(out / "differences.parquet"),
        saved["costs"],
        tuple(saved.get("melu", ())),
        saved.get("melu_info", {}),
        saved["tuned"],
        saved.get("tuned_no_id", {}),
        saved["meta"],
        compute_metrics(preds, ("gauc",), by_day=True),
        calibration(preds),
    )
    return write(summary, out), summary


MELU_NOTE = (
    "Published numbers are MeLU's (KDD 2019) MovieLens-1M table; ours use the same protocol shape on the "
    "files available here ({users} users with 13-100 ratings, {new_users} of them new; {training_ratings} "
    "training ratings; {query_ratings} query ratings). MeLU also used director and actor features that "
    "these files lack, and its scenario query sets were built per scenario; ours assign each of a user's "
    "10 random query ratings to the scenario of its item, and nDCG averages users with at least 3 query "
    "items in the scenario."
)
