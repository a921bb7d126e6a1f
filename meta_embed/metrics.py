"""Small, pure evaluation metrics on NumPy arrays: ROC AUC (pooled or per group, ties
counted as one half, fully vectorized), log loss and mean squared error."""

from __future__ import annotations

import numpy as np


def _average_ranks(groups: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks of `scores` within each group (ties get their average rank).

    Returns (order, ranks): ranks[i] belongs to element order[i].
    """
    order = np.lexsort((scores, groups))
    g, s = groups[order], scores[order]
    n = len(order)
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = g[1:] != g[:-1]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    position = np.arange(n) - group_start + 1.0  # rank ignoring ties
    new_run = new_group.copy()
    new_run[1:] |= s[1:] != s[:-1]
    run = np.cumsum(new_run) - 1
    run_mean = np.bincount(run, weights=position) / np.bincount(run)
    return order, run_mean[run]


def grouped_auc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """ROC AUC of every group id 0..G-1 (Mann-Whitney U with average ranks for ties).

    NaN for a group that lacks positives or negatives.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels) > 0.5
    groups = np.asarray(groups, dtype=np.int64)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    if len(scores) == 0:
        return np.full(n_groups, np.nan)
    order, ranks = _average_ranks(groups, scores)
    g, pos = groups[order], labels[order].astype(np.float64)
    n_pos = np.bincount(g, weights=pos, minlength=n_groups)
    n_neg = np.bincount(g, weights=1.0 - pos, minlength=n_groups)
    rank_sum = np.bincount(g, weights=ranks * pos, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Pooled ROC AUC; NaN when only one class is present."""
    return (
        float(grouped_auc(scores, labels, np.zeros(len(scores), dtype=np.int64))[0])
        if len(scores)
        else float("nan")
    )


def mean_group_auc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Unweighted mean of the per-group AUCs over groups that have both classes."""
    per = grouped_auc(scores, labels, groups)
    per = per[~np.isnan(per)]
    return float(per.mean()) if len(per) else float("nan")


def logloss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of logits (numerically stable)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))) if len(z) else float("nan")


def mse(pred: np.ndarray, target: np.ndarray) -> float:
    d = np.asarray(pred, dtype=np.float64) - np.asarray(target, dtype=np.float64)
    return float(np.mean(d * d)) if len(d) else float("nan")
