"""The PNG plots of the evaluation report (matplotlib, no display needed), made for a reader:
every arm in its own colour and marker, slices labelled with their user counts, human
titles, and axes scaled to the slices that can tell arms apart (a slice of a handful of
users has intervals wide enough to hide every difference; its bars are clipped, and said so).

- `by_slice`: a metric by slice, each arm with its 95% interval;
- `differences`: each arm minus a reference arm, per slice, with intervals and a zero line:
  the plot the targets are about;
- `by_day`: a metric across refresh points, with each day's events beneath;
- `calibration`: predicted probability against the observed positive rate.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from pipeline.evaluation.replay import ARMS  # noqa: E402

STYLE = {  # arm -> (colour, marker): W&D arms in greys and black, meta arms in colours, popularity red
    "popularity": ("#d62728", "x"),
    "wd_static": ("#4d4d4d", "s"),
    "wd_no_id": ("#a6a6a6", "D"),
    "wd_retrained": ("#000000", "^"),
    "meta_refresh": ("#1f77b4", "o"),
    "meta_static": ("#17becf", "v"),
    "meta_init": ("#ff7f0e", "P"),
    "meta_refresh_weights": ("#2ca02c", "*"),
    "meta_refresh_user_ids": ("#9467bd", "p"),
}
NAMES = {
    "gauc": "GAUC (per-user AUC, event-weighted)",
    "gauc_day": "GAUC per user-day",
    "auc": "AUC (pooled)",
    "ndcg_at_10": "NDCG@10 against the catalog",
    "recall_at_10": "recall@10 against the catalog",
    "logloss": "log loss",
}
MIN_USERS = 30  # slices with fewer users do not set the axis


def _rows(table: pa.Table, **where) -> list[dict]:
    return [r for r in table.to_pylist() if all(r[k] == v for k, v in where.items())]


def _labels(slices: list[str], users: dict[str, int]) -> list[str]:
    return [f"{s}\n({users.get(s, 0):,} users)" for s in slices]


def _limits(rows: list[dict], users: dict[str, int], lo: str, hi: str) -> tuple[float, float] | None:
    """Axis limits that hold the intervals of the slices with at least MIN_USERS users."""
    ends = [
        v for r in rows if users.get(r["slice"], 0) >= MIN_USERS for v in (r[lo], r[hi]) if np.isfinite(v)
    ]
    if not ends:
        return None
    a, b = min(ends), max(ends)
    pad = 0.08 * (b - a or 1e-3)
    return a - pad, b + pad


def _points(ax, rows_by_arm: dict[str, list[dict]], slices: list[str], value: str, lo: str, hi: str) -> None:
    width = 0.8 / max(len(rows_by_arm), 1)
    for k, (arm, rows) in enumerate(rows_by_arm.items()):
        got = {r["slice"]: r for r in rows}
        xs = [i + (k - (len(rows_by_arm) - 1) / 2) * width for i, s in enumerate(slices) if s in got]
        vals = [got[s] for s in slices if s in got]
        y = np.array([v[value] for v in vals])
        err = np.maximum([[v[value] - v[lo] for v in vals], [v[hi] - v[value] for v in vals]], 0)
        color, marker = STYLE.get(arm, ("#8c564b", "o"))
        ax.errorbar(xs, y, yerr=err, fmt=marker, ms=5, capsize=2, lw=1, color=color, label=arm)


def _finish(fig, ax, slices: list[str], users: dict[str, int], limits, title: str, ylabel: str, path: Path):
    ax.set_xticks(range(len(slices)))
    ax.set_xticklabels(_labels(slices, users), fontsize=7)
    ax.set_ylabel(ylabel)
    if limits is not None:
        ax.set_ylim(*limits)
        small = [s for s in slices if users.get(s, 0) < MIN_USERS]
        if small:
            title += (
                f"\n(axis fitted to slices of {MIN_USERS}+ users; intervals of {', '.join(small)} clipped)"
            )
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=4, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def by_slice(intervals: pa.Table, slices: list[str], metric: str, users: dict[str, int], path: Path) -> Path:
    """Each arm's `metric` by slice with 95% interval bars; `users` gives each slice's user count."""
    rows = {a: _rows(intervals, arm=a, metric=metric) for a in ARMS}
    rows = {a: r for a, r in rows.items() if r}
    fig, ax = plt.subplots(figsize=(11, 4.5), dpi=90)
    _points(ax, rows, slices, "value", "lo", "hi")
    limits = _limits([r for rs in rows.values() for r in rs], users, "lo", "hi")
    title = f"{NAMES.get(metric, metric)} by slice, 95% user-clustered bootstrap intervals"
    return _finish(fig, ax, slices, users, limits, title, NAMES.get(metric, metric), path)


def differences(diffs: pa.Table, slices: list[str], metric: str, reference: str, users: dict[str, int],
                path: Path) -> Path:  # fmt: skip
    """Each arm minus `reference` on `metric`, per slice, with paired 95% intervals and a zero line."""
    rows = {a: _rows(diffs, arm=a, reference=reference, metric=metric) for a in ARMS if a != reference}
    rows = {a: r for a, r in rows.items() if r}
    fig, ax = plt.subplots(figsize=(11, 4.5), dpi=90)
    ax.axhline(0.0, color="#4d4d4d", lw=1)
    _points(ax, rows, slices, "diff", "lo", "hi")
    limits = _limits([r for rs in rows.values() for r in rs], users, "lo", "hi")
    title = f"Each arm minus {reference}: {NAMES.get(metric, metric)}, paired 95% intervals (above 0: better)"
    return _finish(fig, ax, slices, users, limits, title, f"difference in {metric}", path)


def by_day(daily: pa.Table, metric: str, events: dict[int, int], path: Path) -> Path:
    """The metric of each arm at each refresh point, over the day's events (bars beneath)."""
    fig, (ax, bars) = plt.subplots(2, 1, figsize=(11, 5), dpi=90, sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})  # fmt: skip
    for arm in ARMS:
        rows = sorted(_rows(daily, arm=arm, metric=metric), key=lambda r: r["slice"])
        if rows:
            color, marker = STYLE.get(arm, ("#8c564b", "o"))
            days = [int(r["slice"].split()[1]) for r in rows]
            ax.plot(days, [r["value"] for r in rows], marker=marker, ms=3, lw=1, color=color, label=arm)
    ax.set_ylabel(NAMES.get(metric, metric))
    ax.set_title(
        f"{NAMES.get(metric, metric)} of each day's events, scored with that night's models", fontsize=10
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=4)
    days = sorted(events)
    bars.bar(days, [events[d] for d in days], color="#bbbbbb")
    bars.set_ylabel("test events")
    bars.set_xlabel("refresh point (day of the test period); a day of few events gives a noisy point")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def calibration(cal: pa.Table, path: Path) -> Path:
    """Reliability diagram: mean predicted probability against the observed positive rate."""
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=90)
    ax.plot([0, 1], [0, 1], ls="--", color="#bbbbbb", lw=1)
    for arm in ARMS:
        rows = _rows(cal, arm=arm)
        if rows:
            color, marker = STYLE.get(arm, ("#8c564b", "o"))
            ax.plot([r["predicted"] for r in rows], [r["observed"] for r in rows], marker=marker, ms=4, lw=1,
                    color=color, label=arm)  # fmt: skip
    ax.set_xlabel("mean predicted P(label = 1) in the bin")
    ax.set_ylabel("observed positive rate in the bin")
    ax.set_title("Calibration: 10 probability bins (on the diagonal: calibrated)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
