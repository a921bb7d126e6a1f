"""The PNG plots of the evaluation report (matplotlib, no display needed): a metric by
slice with 95% interval bars per arm, a metric across refresh points, and calibration."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from pipeline.evaluation.replay import ARMS  # noqa: E402

COLORS = dict(zip(ARMS, ("#d62728", "#7f7f7f", "#2b2b2b", "#1f77b4", "#9ecae1", "#ff7f0e", "#2ca02c")))


def _rows(table: pa.Table, **where) -> list[dict]:
    return [r for r in table.to_pylist() if all(r[k] == v for k, v in where.items())]


def by_slice(intervals: pa.Table, slices: list[str], metric: str, path: Path) -> Path:
    """Grouped points with 95% interval bars: one group per slice, one colour per arm."""
    arms = [a for a in ARMS if _rows(intervals, arm=a, metric=metric)]
    fig, ax = plt.subplots(figsize=(10, 4), dpi=90)
    width = 0.8 / max(len(arms), 1)
    for k, arm in enumerate(arms):
        got = {r["slice"]: r for r in _rows(intervals, arm=arm, metric=metric)}
        xs = [i + (k - (len(arms) - 1) / 2) * width for i, s in enumerate(slices) if s in got]
        vals = [got[s] for s in slices if s in got]
        y = np.array([v["value"] for v in vals])
        err = np.array([[v["value"] - v["lo"] for v in vals], [v["hi"] - v["value"] for v in vals]])
        ax.errorbar(xs, y, yerr=np.maximum(err, 0), fmt="o", ms=4, capsize=2, color=COLORS[arm], label=arm)
    ax.set_xticks(range(len(slices)))
    ax.set_xticklabels(slices, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel(metric.upper())
    ax.set_title(f"{metric.upper()} by slice (95% user-clustered bootstrap intervals)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def by_day(daily: pa.Table, metric: str, path: Path) -> Path:
    """The metric of each arm at each refresh point (events of that day)."""
    fig, ax = plt.subplots(figsize=(10, 3.5), dpi=90)
    for arm in ARMS:
        rows = sorted(_rows(daily, arm=arm, metric=metric), key=lambda r: r["slice"])
        if rows:
            ax.plot(
                [int(r["slice"].split()[1]) for r in rows],
                [r["value"] for r in rows],
                marker=".",
                lw=1,
                color=COLORS[arm],
                label=arm,
            )
    ax.set_xlabel("refresh point (day of the test period)")
    ax.set_ylabel(metric.upper())
    ax.set_title(f"{metric.upper()} of each day's events, scored with that night's models")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def calibration(cal: pa.Table, path: Path) -> Path:
    """Reliability diagram: mean predicted probability against the observed positive rate."""
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=90)
    ax.plot([0, 1], [0, 1], ls="--", color="#bbbbbb", lw=1)
    for arm in ARMS:
        rows = _rows(cal, arm=arm)
        if rows:
            ax.plot(
                [r["predicted"] for r in rows],
                [r["observed"] for r in rows],
                marker="o",
                ms=3,
                lw=1,
                color=COLORS[arm],
                label=arm,
            )
    ax.set_xlabel("mean predicted P(label = 1)")
    ax.set_ylabel("observed positive rate")
    ax.set_title("Calibration (10 probability bins)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
