"""Paired, user-clustered bootstrap of the replay metrics, in NumPy.

Users, not events, are resampled: a resample draws the test users with replacement
and weights every event of a user by the number of times the user was drawn. The
same draws are used for every arm (paired), so the interval of a difference between
two arms reflects only how the arms differ on the same users. Each metric is written
as a function of per-user weights W (resamples, users), which makes 1000 resamples a
few matrix products (AUC: a weighted Mann-Whitney sum over score-sorted events). With
W = 1 the functions give the point estimates, which must equal the SQL queries of
`pipeline.evaluation.queries` (the tests cross-check them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from meta_embed.metrics import grouped_auc
from pipeline.evaluation.queries import METRICS, SLICES, K

Stat = Callable[[np.ndarray], np.ndarray]
"""W (resamples, users) -> metric value per resample (resamples,)."""


def _col(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


def _codes(table: pa.Table, name: str) -> tuple[np.ndarray, list]:
    enc = table.column(name).combine_chunks().dictionary_encode()
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary.to_pylist()


def _weighted_auc(user: np.ndarray, score: np.ndarray, y: np.ndarray) -> Stat:
    """AUC under per-user weights: sum over (pos, neg) pairs of w_p w_n [s_p > s_n] (ties 1/2)."""
    order = np.argsort(score, kind="mergesort")
    u, s, yy = user[order], score[order], y[order] > 0.5
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]]) if len(s) else np.zeros(0, np.int64)

    def stat(w: np.ndarray) -> np.ndarray:
        if not len(s):
            return np.full(w.shape[0], np.nan)
        ew = w[:, u]  # (resamples, events)
        pos = np.add.reduceat(ew * yy, starts, axis=1)  # (resamples, tie groups)
        neg = np.add.reduceat(ew * ~yy, starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg
        num = (pos * (below + 0.5 * neg)).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return num / (pos.sum(1) * neg.sum(1))

    return stat


def _ratio(num: np.ndarray, den: np.ndarray) -> Stat:
    def stat(w: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (w @ num) / (w @ den)

    return stat


def _group_auc(key: np.ndarray, score: np.ndarray, y: np.ndarray, n_users: int) -> Stat:
    """AUC per group of events, averaged with weights = the group's events over groups with
    both classes. `key` (events, k): the group of each event, its first column the user."""
    groups, event_group = np.unique(key, axis=0, return_inverse=True)
    event_group = event_group.reshape(-1)
    auc = grouped_auc(score, y, event_group)
    n = np.where(np.isnan(auc), 0.0, np.bincount(event_group, minlength=len(groups)))
    by_user = lambda v: np.bincount(groups[:, 0], weights=v, minlength=n_users)  # noqa: E731
    return _ratio(by_user(n * np.nan_to_num(auc)), by_user(n))


def _stats(
    user: np.ndarray, day: np.ndarray, y: np.ndarray, score: np.ndarray, rank: np.ndarray, n_users: int
) -> dict[str, Stat]:
    """The metric functions of one (arm, slice): events of users `user` (global indices)."""
    loss = np.maximum(score, 0) + np.log1p(np.exp(-np.abs(score))) - y * score
    pos = y > 0.5
    ud_key, ud = (
        np.unique(np.stack([user[pos], day[pos]], 1), axis=0, return_inverse=True)
        if pos.any()
        else (np.zeros((0, 2), np.int64), np.zeros(0, np.int64))
    )
    ud = ud.reshape(-1)
    r = rank[pos]
    npos = np.bincount(ud, minlength=len(ud_key)).astype(np.float64)
    hits = np.bincount(ud, weights=(r < K).astype(np.float64), minlength=len(ud_key))
    dcg = np.bincount(
        ud, weights=np.where(r < K, 1.0 / np.log2(np.minimum(r, K) + 2.0), 0.0), minlength=len(ud_key)
    )
    ideal = np.cumsum(1.0 / np.log2(np.arange(K) + 2.0))[np.minimum(npos, K).astype(np.int64) - 1]
    day_user = ud_key[:, 0].astype(np.int64)
    per_user = lambda v: np.bincount(day_user, weights=v, minlength=n_users)  # noqa: E731
    days = per_user(np.ones(len(ud_key)))
    return {
        "auc": _weighted_auc(user, score, y),
        "gauc": _group_auc(user[:, None], score, y, n_users),
        "gauc_day": _group_auc(np.stack([user, day], 1), score, y, n_users),
        "logloss": _ratio(
            np.bincount(user, weights=loss, minlength=n_users), np.bincount(user, minlength=n_users)
        ),
        "ndcg_at_10": _ratio(per_user(dcg / ideal), days),
        "recall_at_10": _ratio(per_user(hits / np.maximum(npos, 1.0)), days),
    }


@dataclasses.dataclass(frozen=True)
class Prepared:
    """The metric functions of every (arm, slice) over one shared user index."""

    users: list
    stats: dict[tuple[str, str], dict[str, Stat]]


def stat_functions(table: pa.Table) -> Prepared:
    """Arrays of a PREDICTIONS table grouped into per-(arm, slice) metric functions."""
    user, users = _codes(table, "user_id")
    arm, arms = _codes(table, "arm")
    y = _col(table, "label").astype(np.float64)
    score = _col(table, "score").astype(np.float64)
    rank = (
        table.column("rank").fill_null(np.iinfo(np.int32).max).to_numpy(zero_copy_only=False).astype(np.int64)
    )
    day = _col(table, "day").astype(np.int64)
    stats: dict[tuple[str, str], dict[str, Stat]] = {}
    for name, column, values in SLICES:
        in_slice = (
            np.ones(table.num_rows, bool)
            if column is None
            else np.asarray(
                pc.is_in(table.column(column), value_set=pa.array(values, pa.string())), dtype=bool
            )
        )
        for a, arm_name in enumerate(arms):
            m = in_slice & (arm == a)
            if m.any():
                stats[(arm_name, name)] = _stats(user[m], day[m], y[m], score[m], rank[m], len(users))
    return Prepared(users, stats)


def point_estimates(prep: Prepared) -> pa.Table:
    """(metric, arm, slice, value) with every user weighted once: the NumPy twin of the SQL."""
    ones = np.ones((1, len(prep.users)))
    rows = [
        {"metric": m, "arm": a, "slice": s, "value": float(f[m](ones)[0])}
        for (a, s), f in prep.stats.items()
        for m in METRICS
    ]
    return pa.Table.from_pylist(rows)


def _draws(rng: np.random.Generator, b: int, n_users: int) -> np.ndarray:
    """(b, users) how often each user is drawn in each of b resamples."""
    picks = rng.integers(0, n_users, size=(b, n_users))
    return np.stack([np.bincount(p, minlength=n_users) for p in picks]).astype(np.float64)


def resample(
    prep: Prepared, resamples: int, seed: int, chunk: int = 50
) -> dict[tuple[str, str, str], np.ndarray]:
    """(arm, slice, metric) -> values over `resamples` user-clustered resamples, the same
    draws for every arm and slice."""
    if resamples <= 0:
        raise ValueError(f"resamples must be > 0, got {resamples}")
    rng = np.random.default_rng(seed)
    out: dict[tuple[str, str, str], list[np.ndarray]] = {}
    for start in range(0, resamples, chunk):
        w = _draws(rng, min(chunk, resamples - start), len(prep.users))
        for (a, s), funcs in prep.stats.items():
            for m, f in funcs.items():
                out.setdefault((a, s, m), []).append(f(w))
    return {k: np.concatenate(v) for k, v in out.items()}


def _interval(values: np.ndarray) -> tuple[float, float]:
    ok = values[~np.isnan(values)]
    if not len(ok):
        return float("nan"), float("nan")
    lo, hi = np.percentile(ok, [2.5, 97.5])
    return float(lo), float(hi)


def bootstrap(
    table: pa.Table, references: tuple[str, ...], resamples: int = 1000, seed: int = 0
) -> tuple[pa.Table, pa.Table]:
    """(intervals, differences) of a PREDICTIONS table.

    intervals: metric, arm, slice, value, lo, hi (95% percentile interval of the arm's metric).
    differences: metric, slice, arm, reference, diff, lo, hi, p_le_0 (share of resamples
    where arm - reference <= 0), for every arm against every reference arm present.
    """
    prep = stat_functions(table)
    point = {(r["arm"], r["slice"], r["metric"]): r["value"] for r in point_estimates(prep).to_pylist()}
    draws = resample(prep, resamples, seed)
    intervals = [
        {
            "metric": m,
            "arm": a,
            "slice": s,
            "value": point[(a, s, m)],
            **dict(zip(("lo", "hi"), _interval(v))),
        }
        for (a, s, m), v in draws.items()
    ]
    diffs = []
    for (a, s, m), v in draws.items():
        for ref in references:
            if ref == a or (ref, s, m) not in draws:
                continue
            d = v - draws[(ref, s, m)]
            lo, hi = _interval(d)
            ok = d[~np.isnan(d)]
            diffs.append(
                {
                    "metric": m,
                    "slice": s,
                    "arm": a,
                    "reference": ref,
                    "diff": point[(a, s, m)] - point[(ref, s, m)],
                    "lo": lo,
                    "hi": hi,
                    "p_le_0": float((ok <= 0).mean()) if len(ok) else float("nan"),
                }
            )
    return pa.Table.from_pylist(intervals), pa.Table.from_pylist(diffs)
