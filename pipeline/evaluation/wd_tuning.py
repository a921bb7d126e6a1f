"""Tuning and fitting the wide-and-deep baseline for the replay.

The learning rate and the id-embedding size are chosen on the validation period
[valid_start, T0) with a model trained on the events before valid_start (early stopping
on validation AUC, or -MAE in regression mode). The chosen configuration is then fitted
on every event before T0 for the number of epochs early stopping picked: the model that
serves the test period never saw a test event, and no choice looked at one.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable

import pyarrow as pa

from meta_embed.baseline import FitResult, fit
from meta_embed.config import WideDeepConfig
from meta_embed.features import FeatureSpec


@dataclasses.dataclass(frozen=True)
class Tuned:
    """The chosen configuration, its validation score and what tuning cost."""

    cfg: WideDeepConfig
    epochs: int
    val_score: float
    trials: tuple[dict, ...]  # lr, embedding_dim, val_score, epochs, seconds per grid point
    seconds: float


def tune(
    base: WideDeepConfig,
    spec: FeatureSpec,
    users: pa.Table,
    items: pa.Table,
    train: pa.Table,
    valid: pa.Table,
    lrs: tuple[float, ...],
    dims: tuple[int, ...],
    log: Callable[[str], None] | None = None,
) -> Tuned:
    """Grid search over (lr, embedding_dim) with early stopping on `valid`."""
    start, trials, best = time.perf_counter(), [], None
    for lr, dim in itertools.product(lrs, dims):
        cfg = dataclasses.replace(base, lr=lr, embedding_dim=dim)
        result = fit(cfg, spec, users, items, train, valid)
        trials.append(
            {
                "lr": lr,
                "embedding_dim": dim,
                "val_score": result.val_score,
                "epochs": result.epochs,
                "seconds": result.seconds,
            }
        )
        if log is not None:
            log(
                f"W&D lr={lr:g} dim={dim}: validation {result.val_score:.4f} at epoch {result.epochs} "
                f"({result.seconds:.0f}s)"
            )
        if best is None or result.val_score > best[2]:
            best = (cfg, result.epochs, result.val_score)
    assert best is not None, "empty grid"
    return Tuned(best[0], best[1], best[2], tuple(trials), time.perf_counter() - start)


def refit(tuned: Tuned, spec: FeatureSpec, users: pa.Table, items: pa.Table, train: pa.Table) -> FitResult:
    """The tuned configuration fitted on `train` for the tuned number of epochs."""
    return fit(tuned.cfg, spec, users, items, train, epochs=tuned.epochs)
