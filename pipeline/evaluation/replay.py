"""The nightly replay of the offline A/B evaluation.

Time is cut at T0 (a quantile of the event timestamps); the test period is
[T0, T0 + days). Refresh points are T0 and every 00:00 UTC after it inside the test
period; the events of day d, [point d, point d + 1), are scored with what each arm
knew at point d:

- `meta_refresh` (and `meta_refresh_weights`, `meta_refresh_user_ids`: the meta models in
  the weights mode and with a user-id embedding): the snapshot that the real refresh job
  (Beam, incremental mode) published at point d from the events before it;
- `meta_static`: the snapshot published at T0; `meta_init`: zero-step embeddings;
- `wd_no_id`: the same wide-and-deep without any user-id input, fitted at T0 (its shared
  part alone: what the meta model's zero-step scores are compared with);
- `wd_static`: the wide-and-deep model fitted at T0; `wd_retrained`: refitted from
  scratch on every event before the point, every `retrain_every` days;
- `popularity`: each item's smoothed positive rate before T0 (a sanity reference).

Each day's positives are ranked against the full catalog minus the items the user had
seen before the point (for every arm the same candidates), which gives `rank`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from meta_embed import baseline, snapshot
from meta_embed.checkpoint import load
from meta_embed.inference import catalog_vectors, user_inputs, zero_step
from meta_embed.tables import TS_TYPE, data_table
from meta_embed.tasks import FeatureTables
from pipeline.evaluation.queries import PREDICTIONS, assign_segments
from pipeline.refresh.refresh_config import RefreshConfig
from pipeline.refresh.refresh_job import refresh

UTC = dt.UTC
ARMS = (
    "popularity",
    "wd_static",
    "wd_no_id",
    "wd_retrained",
    "meta_refresh",
    "meta_static",
    "meta_init",
    "meta_refresh_weights",
    "meta_refresh_user_ids",
)
"""The arms the replay scores every test event with, in the order reports list them."""
VARIANT_ARMS = {"weights": "meta_refresh_weights", "user_ids": "meta_refresh_user_ids"}
"""The refreshed arm of each extra meta model (variant -> arm), where it was trained."""


@dataclasses.dataclass(frozen=True)
class Period:
    """Validation start, T0, the end of the test period and the refresh points."""

    valid_start: dt.datetime
    t0: dt.datetime
    end: dt.datetime
    points: tuple[dt.datetime, ...]


def _us(t: dt.datetime) -> int:
    return int(round(t.timestamp() * 1_000_000))


def _ts(table: pa.Table) -> np.ndarray:
    return table.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False)


def make_period(
    interactions: pa.Table, days: int, t0_quantile: float = 0.8, valid_quantile: float = 0.7
) -> Period:
    """T0 and the validation start are timestamps of events (discrete quantiles)."""
    ts = _ts(interactions)
    q = np.quantile(ts, [valid_quantile, t0_quantile], method="inverted_cdf")
    valid_start, t0 = (dt.datetime.fromtimestamp(int(v) / 1e6, UTC) for v in q)
    end = t0 + dt.timedelta(days=days)
    midnight = dt.datetime(t0.year, t0.month, t0.day, tzinfo=UTC) + dt.timedelta(days=1)
    points = [t0]
    while midnight < end:
        points.append(midnight)
        midnight += dt.timedelta(days=1)
    return Period(valid_start, t0, end, tuple(points))


def before(table: pa.Table, t: dt.datetime) -> pa.Table:
    return table.filter(pc.less(table.column("ts"), pa.scalar(t, TS_TYPE)))


def replay_events(interactions: pa.Table, period: Period) -> pa.Table:
    """Events of the test period with the refresh point that serves them, its day index,
    the user's events before that point (n_before), segment and cohort."""
    ts = _ts(interactions)
    keep = (ts >= _us(period.t0)) & (ts < _us(period.end))
    test = interactions.filter(pa.array(keep)).select(["user_id", "item_id", "ts", "label"])
    points = np.array([_us(p) for p in period.points])
    day = np.searchsorted(points, _ts(test), side="right") - 1
    test = test.append_column("refresh_point", pa.array(points[day], pa.int64()).cast(TS_TYPE))
    test = test.append_column("day", pa.array(day.astype(np.int32)))
    out = assign_segments(test, interactions, period.t0)
    return out.sort_by(
        [("day", "ascending"), ("user_id", "ascending"), ("ts", "ascending"), ("item_id", "ascending")]
    )


class MetaScorer:
    """Logits of a meta-embedding checkpoint: embedding -> global block against the catalog."""

    def __init__(self, checkpoint: str | Path, users: pa.Table, items: pa.Table, catalog: pa.Array):
        ckpt = load(checkpoint)
        self.model, self.mode = ckpt.model, ckpt.model_cfg.embedding_mode
        self.tables = FeatureTables.build(ckpt.spec, users, items)
        rows = torch.from_numpy(self.tables.item_rows(catalog))
        self.v = catalog_vectors(self.model, self.tables.items)[rows]  # (catalog, item_dim)

    def zero_step(self, user_ids: pa.Array) -> np.ndarray:
        """Cold (zero-step) embeddings (users, D) from the users' features, each read as a new
        user (out-of-vocabulary id, where the spec has one): no personalization at all."""
        rows = torch.from_numpy(self.tables.user_rows(user_ids))
        new = torch.ones(len(rows), dtype=torch.bool)
        with torch.no_grad():
            return zero_step(self.model, user_inputs(self.model, self.tables.users, rows, new))

    def lookup(self, snap: pa.Table, user_ids: pa.Array) -> np.ndarray:
        """Embeddings of `user_ids` from a snapshot table; users it lacks get zero-step ones."""
        idx = pc.index_in(user_ids, value_set=snap.column("user_id").combine_chunks()).fill_null(-1)
        idx = idx.to_numpy(zero_copy_only=False)
        out = self.zero_step(user_ids)
        if (idx >= 0).any():
            out[idx >= 0] = snapshot.embeddings_of(snap)[idx[idx >= 0]]
        return out

    def matrix(self, e: np.ndarray, chunk: int = 64) -> np.ndarray:
        """(users, catalog) logits of embeddings e (users, D)."""
        parts = []
        with torch.no_grad():
            for s in range(0, len(e), chunk):
                eb = torch.from_numpy(e[s : s + chunk]).unsqueeze(1)  # (u, 1, D)
                v = self.v.unsqueeze(0).expand(eb.shape[0], *self.v.shape)  # (u, I, item_dim)
                parts.append(self.model.global_block(eb, v).numpy())
        return np.concatenate(parts) if parts else np.zeros((0, self.v.shape[0]), np.float32)


def wd_matrix(
    model: baseline.WideDeep, user_ids: pa.Array, catalog: pa.Array, chunk: int = 1 << 16
) -> np.ndarray:
    """(users, catalog) logits of the wide-and-deep model (unknown ids -> OOV)."""
    u_idx, u_row = model.users.index(user_ids), model.tables.user_rows(user_ids)
    i_idx, i_row = model.items.index(catalog), model.tables.item_rows(catalog)
    n_users, n_items = len(user_ids), len(catalog)
    pairs = baseline.EventIndex(
        np.repeat(u_idx, n_items), np.tile(i_idx, n_users), np.repeat(u_row, n_items), np.tile(i_row, n_users)
    )
    return baseline.predict(model, pairs, chunk).reshape(n_users, n_items)


def popularity_logits(events: pa.Table, catalog: pa.Array, smoothing: float = 10.0) -> np.ndarray:
    """(catalog,) logit of each item's positive rate, shrunk toward the global rate with
    `smoothing` pseudo-events: the sanity reference that a real model must beat."""
    y = events.column("label").to_numpy(zero_copy_only=False).astype(np.float64)
    prior = float(y.mean()) if len(y) else 0.5
    idx = (
        pc.index_in(events.column("item_id"), value_set=catalog).fill_null(-1).to_numpy(zero_copy_only=False)
    )
    ok = idx >= 0
    pos = np.bincount(idx[ok], weights=y[ok], minlength=len(catalog))
    n = np.bincount(idx[ok], minlength=len(catalog))
    rate = (pos + smoothing * prior) / (n + smoothing * 1.0)
    return np.log(rate / (1 - rate)).astype(np.float32)


def rank_in_catalog(
    scores: np.ndarray, seen: np.ndarray, row: np.ndarray, col: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """0-based rank of each event's item (row = user-day, col = catalog item) among the
    candidates of its row (items not seen before; the event's own item always counts),
    ties counted against the item; and the number of candidates."""
    cand = ~seen
    cand[row, col] = True
    s = scores[row, col]  # (events,)
    ahead = (scores[row] >= s[:, None]) & cand[row]  # (events, catalog)
    return (ahead.sum(1) - 1).astype(np.int32), cand[row].sum(1).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class ReplaySetup:
    """What the replay needs: data, the period and the trained models."""

    data_dir: Path  # interactions.parquet, users.parquet, items.parquet
    interactions: pa.Table
    users: pa.Table
    items: pa.Table
    period: Period
    checkpoints: dict[str, Path]  # variant -> checkpoint ("activation" required; see VARIANT_ARMS)
    wd_static: baseline.WideDeep
    wd_no_id: baseline.WideDeep
    retrain: Callable[[pa.Table], baseline.FitResult]  # fit W&D on the events before a point
    workdir: Path
    beam_args: tuple[str, ...]
    retrain_every: int = 7
    device: str = "cpu"  # where the nightly refreshes adapt (`--device`)


@dataclasses.dataclass
class ReplayLog:
    """Costs measured during the replay."""

    refreshes: list[dict] = dataclasses.field(default_factory=list)
    retrains: list[dict] = dataclasses.field(default_factory=list)
    scoring_seconds: float = 0.0


def _refresh(setup: ReplaySetup, variant: str, point: dt.datetime, log: ReplayLog, day: int) -> pa.Table:
    d = setup.data_dir
    cfg = RefreshConfig(
        interactions=str(data_table(d, "interactions")),
        users=str(data_table(d, "users")),
        items=str(data_table(d, "items")),
        checkpoint=str(setup.checkpoints[variant]),
        as_of=point,
        out=str(setup.workdir / f"snapshots-{variant}"),
        incremental=True,
        keep=2,
        device=setup.device,
    )
    result = refresh(cfg, list(setup.beam_args))
    log.refreshes.append(
        {
            "variant": variant,
            "day": day,
            "as_of": point.isoformat(),
            "run": result.mode,
            "seconds": result.seconds,
            "runner": result.runner,
            **result.counts,
        }
    )
    return snapshot.read_dir(result.snapshot_dir, memory_map=False)[0]


def _seen(interactions: pa.Table, point: dt.datetime, users: pa.Array, catalog: pa.Array) -> np.ndarray:
    """(users, catalog) whether the user had an event with the item before `point`."""
    hist = before(interactions, point)
    hist = hist.filter(pc.is_in(hist.column("user_id"), value_set=users))
    seen = np.zeros((len(users), len(catalog)), dtype=bool)
    r = pc.index_in(hist.column("user_id"), value_set=users).to_numpy(zero_copy_only=False)
    c = pc.index_in(hist.column("item_id"), value_set=catalog).fill_null(-1).to_numpy(zero_copy_only=False)
    seen[r[c >= 0], c[c >= 0]] = True
    return seen


def _day_rows(
    events: pa.Table, arm: str, scores: np.ndarray, seen: np.ndarray, row: np.ndarray, col: np.ndarray
) -> pa.Table:
    rank, n_cand = rank_in_catalog(scores, seen, row, col)
    cols = {
        name: events.column(name)
        for name in ("user_id", "item_id", "ts", "label", "segment", "cohort", "refresh_point", "day")
    }
    cols |= {
        "arm": pa.array([arm] * events.num_rows, pa.string()),
        "score": pa.array(scores[row, col], pa.float32()),
        "rank": pa.array(rank),
        "n_candidates": pa.array(n_cand),
    }
    return pa.table({f.name: cols[f.name] for f in PREDICTIONS}).cast(PREDICTIONS)


def _day_models(
    setup: ReplaySetup, d: int, point: dt.datetime, log: ReplayLog, state: dict
) -> dict[str, pa.Table]:
    """Refresh every meta checkpoint at `point`, retrain W&D when due; returns the snapshots."""
    snaps = {variant: _refresh(setup, variant, point, log, d) for variant in setup.checkpoints}
    if d == 0:
        state["static_snapshot"] = snaps["activation"]
        state["wd_retrained"] = setup.wd_static
    elif d % setup.retrain_every == 0:
        fit = setup.retrain(before(setup.interactions, point))
        state["wd_retrained"] = fit.model
        log.retrains.append(
            {
                "day": d,
                "as_of": point.isoformat(),
                "seconds": fit.seconds,
                "epochs": fit.epochs,
                "events": before(setup.interactions, point).num_rows,
            }
        )
    return snaps


def replay(
    setup: ReplaySetup,
    test: pa.Table,
    progress: Callable[[int, dict], None] | None = None,
) -> tuple[pa.Table, ReplayLog]:
    """Score every test event with every arm, day by day; returns (PREDICTIONS table, costs)."""
    catalog = pc.unique(
        pa.chunked_array(setup.items.column("item_id").chunks + test.column("item_id").chunks)
    )
    scorers = {
        variant: MetaScorer(path, setup.users, setup.items, catalog)
        for variant, path in setup.checkpoints.items()
    }
    log, state, parts = ReplayLog(), {}, []
    popular = popularity_logits(before(setup.interactions, setup.period.t0), catalog)
    days = test.column("day").to_numpy()
    for d, point in enumerate(setup.period.points):
        snaps = _day_models(setup, d, point, log, state)
        events = test.filter(pa.array(days == d))
        if events.num_rows == 0:
            continue
        start = time.perf_counter()
        users = pc.unique(events.column("user_id"))
        row = pc.index_in(events.column("user_id"), value_set=users).to_numpy(zero_copy_only=False)
        col = pc.index_in(events.column("item_id"), value_set=catalog).to_numpy(zero_copy_only=False)
        seen = _seen(setup.interactions, point, users, catalog)
        act = scorers["activation"]
        matrices = {
            "popularity": np.broadcast_to(popular, (len(users), len(catalog))),
            "wd_static": wd_matrix(setup.wd_static, users, catalog),
            "wd_no_id": wd_matrix(setup.wd_no_id, users, catalog),
            "wd_retrained": wd_matrix(state["wd_retrained"], users, catalog),
            "meta_refresh": act.matrix(act.lookup(snaps["activation"], users)),
            "meta_static": act.matrix(act.lookup(state["static_snapshot"], users)),
            "meta_init": act.matrix(act.zero_step(users)),
        }
        for variant, arm in VARIANT_ARMS.items():
            if variant in scorers:
                matrices[arm] = scorers[variant].matrix(scorers[variant].lookup(snaps[variant], users))
        parts += [_day_rows(events, arm, m, seen, row, col) for arm, m in matrices.items()]
        log.scoring_seconds += time.perf_counter() - start
        if progress is not None:
            progress(d, {"events": events.num_rows, "users": len(users)})
    return (pa.concat_tables(parts) if parts else PREDICTIONS.empty_table()), log
