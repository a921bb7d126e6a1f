"""Adaptation of one bucket of users: the pure core of the refresh job's adapt DoFn.

`load_adapt_state` loads the checkpoint once (refusing one from another feature spec or
another model version) and runs the item tower over every item once, so an item's
vector never depends on which users share a batch. `adapt_bucket` takes a bucket's
most recent events (at most N per user), its users' feature rows and, in incremental
mode, the previous snapshot's rows, and returns the bucket's snapshot rows:

- users with events are adapted with the batched MAML inner loop (`inference.adapt_users`);
- users with a features row but no events get the zero-step (cold) embedding (`inference.zero_step`);
- users whose support set is unchanged since the previous snapshot are carried forward.

Every row also lists the items the user has seen (`seen_items`): the distinct items of
the user's events in the bucket, newest first, at most `settings.seen_items`.

Batches are formed deterministically (users sorted by support length, then user id).
The work runs on `settings.device`, resolved where the step runs (a worker's `auto` is
CUDA when that worker has it); embeddings come back to the CPU for the snapshot rows.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from meta_embed import snapshot, storage
from meta_embed.checkpoint import Checkpoint, CheckpointError, load
from meta_embed.devices import resolve_device
from meta_embed.features import encode, encode_with_default, to_device
from meta_embed.inference import adapt_users, catalog_vectors, user_inputs, zero_step
from meta_embed.tables import TS_TYPE, unique_ids
from meta_embed.tasks import EventBlock
from pipeline.refresh.arrow import oldest_first, user_runs
from pipeline.refresh.inputs import read_all


@dataclasses.dataclass(frozen=True)
class AdaptSettings:
    """What the adapt step needs to know, fixed by the launcher (picklable, small)."""

    checkpoint: str
    spec_hash: str
    model_version: str
    item_files: tuple[str, ...]
    meta: snapshot.SnapshotMeta
    max_support: int
    batch_size: int = 64
    cold_users: bool = True
    torch_threads: int = 1
    seen_items: int = 50
    device: str = "cpu"  # auto, cpu or cuda (`--device`)
    s3: tuple[tuple[str, str], ...] = ()  # the launcher's s3:// settings (`storage.overrides`)
    users: str = "users table"  # where the feature rows come from (`--users`), for messages


@dataclasses.dataclass(frozen=True)
class AdaptState:
    """A loaded checkpoint, its model on `device`, plus the item vectors of every item
    (last row = unknown item), there too."""

    ckpt: Checkpoint
    catalog: torch.Tensor  # (items + 1, item_dim)
    item_ids: pa.Array  # (items,) string: the id of each catalog row
    device: torch.device


@dataclasses.dataclass
class BucketCounts:
    """rows = adapted + zero_step + carried_forward; cold = rows without events (either path)."""

    with_events: int = 0
    adapted: int = 0  # users with events, run through the inner loop
    carried_forward: int = 0  # rows copied from the previous snapshot
    cold: int = 0  # users with a features row and no events
    without_features: int = 0  # users with events but no features row (default features)
    zero_step: int = 0  # cold users whose zero-step embedding was computed in this run
    nonfinite: int = 0  # rows whose embedding is NaN or inf (the run must not publish)


def load_adapt_state(settings: AdaptSettings) -> AdaptState:
    """Load the checkpoint onto `settings.device` and precompute item vectors; refuses a
    checkpoint that does not match, and a device this machine does not have."""
    device = resolve_device(settings.device)
    storage.configure(**dict(settings.s3))
    ckpt = load(settings.checkpoint, expect_spec_hash=settings.spec_hash)
    if ckpt.model_version != settings.model_version:
        raise CheckpointError(
            f"{settings.checkpoint}: model_version is now {ckpt.model_version}, but the job "
            f"started with {settings.model_version}; the checkpoint changed during the run. Re-run."
        )
    spec = ckpt.spec
    items = read_all(settings.item_files, [spec.item_key] + [c.name for c in spec.item])
    item_ids = items.column(spec.item_key).combine_chunks().cast(pa.string())
    model = ckpt.model.to(device)  # loaded on the CPU (version checked there), moved in place
    catalog = catalog_vectors(model, to_device(encode_with_default(items, spec.item, "items"), device))
    return AdaptState(ckpt, catalog, item_ids, device)


def seen_items(offsets: np.ndarray, item_row: np.ndarray, n_items: int, cap: int) -> tuple[np.ndarray, ...]:
    """Per user run [offsets[u], offsets[u+1]) of events, oldest first: the distinct item rows
    below `n_items` (known items), newest first, at most `cap`. Returns (lengths (users,),
    the rows of every user concatenated)."""
    n_users = len(offsets) - 1
    user = np.repeat(np.arange(n_users), np.diff(offsets))
    pos = np.arange(len(item_row))
    order = np.lexsort((-pos, item_row, user))  # each (user, item): its newest event first
    newest = np.ones(len(order), bool)
    newest[1:] = (np.diff(user[order]) != 0) | (np.diff(item_row[order]) != 0)
    keep = order[newest]
    keep = keep[item_row[keep] < n_items]
    keep = keep[np.lexsort((-pos[keep], user[keep]))]  # by user, newest first
    rank = np.arange(len(keep)) - np.searchsorted(user[keep], user[keep])
    keep = keep[rank < cap]
    return np.bincount(user[keep], minlength=n_users), item_row[keep]


def _index(values: pa.Array, known: pa.Array) -> np.ndarray:
    """Position of each value in `known`, -1 where absent."""
    return pc.index_in(values, value_set=known).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _event_block(state: AdaptState, events: pa.Table) -> EventBlock:
    spec = state.ckpt.spec
    ctx = encode(events, spec.context, "interactions") if spec.context else None
    _, offsets = user_runs(events)
    return EventBlock(
        offsets,
        events.column("item_row").to_numpy().astype(np.int64),
        events.column("y").to_numpy().astype(np.float32),
        events.column("ts").to_numpy(),
        ctx,
    )


def _carried(
    previous: pa.Table | None, users: pa.Array, n_support: np.ndarray, last_ts: pa.Array
) -> np.ndarray:
    """Row of `previous` to carry forward for each user, or -1: same support size and newest event."""
    if previous is None or previous.num_rows == 0:
        return np.full(len(users), -1, dtype=np.int64)
    prev = _index(users, previous.column("user_id").combine_chunks())
    found = prev >= 0
    p = np.where(found, prev, 0)
    same_n = previous.column("n_support").to_numpy()[p] == n_support
    prev_ts = previous.column("last_event_ts").combine_chunks().take(pa.array(p))
    same_ts = pc.fill_null(pc.equal(prev_ts, last_ts), False).to_numpy(zero_copy_only=False)
    same_ts |= np.asarray(prev_ts.is_null()) & np.asarray(last_ts.is_null())
    return np.where(found & same_n & same_ts, prev, -1)


def adapt_bucket(
    state: AdaptState,
    settings: AdaptSettings,
    events: pa.Table,
    users: pa.Table,
    previous: pa.Table | None = None,
) -> tuple[pa.Table, BucketCounts]:
    """Snapshot rows (sorted by user_id) of one bucket and what happened to its users."""
    key = state.ckpt.spec.user_key
    events = oldest_first(events)
    ev_users, offsets = user_runs(events)
    no_rows = pa.array([], pa.string())
    feature_ids = unique_ids(users.column(key), f"{settings.users}: '{key}'") if users.num_rows else no_rows
    everyone = pa.concat_arrays([ev_users, feature_ids]) if settings.cold_users else ev_users
    ids = pc.unique(everyone)
    ids = ids.take(pc.sort_indices(ids))
    ev = _index(ids, ev_users)  # (users,) row in the event block or -1
    feat = _index(ids, feature_ids)
    rows = np.where(feat >= 0, feat, len(feature_ids))  # missing features -> default row
    n_support = np.where(ev >= 0, np.diff(offsets)[np.maximum(ev, 0)] if len(ev_users) else 0, 0).astype(
        np.int32
    )
    ts = events.column("ts").to_numpy()
    last = ts[offsets[1:][np.maximum(ev, 0)] - 1] if len(ev_users) else np.zeros(len(ids), np.int64)
    last_ts = pa.array(last, pa.int64(), mask=ev < 0).cast(TS_TYPE)
    carry = _carried(previous, ids, n_support, last_ts)
    todo = carry < 0
    model = state.ckpt.model
    with torch.no_grad():
        encoded = to_device(encode_with_default(users, state.ckpt.spec.user, "users"), state.device)
        x = user_inputs(model, encoded, torch.as_tensor(rows, device=state.device))
    emb = np.zeros((len(ids), model.cfg.embedding_dim), dtype=np.float32)
    hot = np.flatnonzero(todo & (ev >= 0))
    if len(hot):
        emb[hot] = adapt_users(
            model,
            state.ckpt.maml_cfg,
            x[hot],
            _event_block(state, events),
            ev[hot],
            state.catalog,
            settings.batch_size,
        )
    cold = np.flatnonzero(todo & (ev < 0))
    emb[cold] = zero_step(model, x[cold], settings.batch_size)
    kept = np.flatnonzero(~todo)
    if len(kept):
        emb[kept] = snapshot.embeddings_of(previous)[carry[kept]]
    counts = BucketCounts(
        int((ev >= 0).sum()),
        len(hot),
        len(kept),
        int((ev < 0).sum()),
        int(((ev >= 0) & (feat < 0)).sum()),
        len(cold),
        int((~np.isfinite(emb).all(axis=1)).sum()),
    )
    lengths, rows = seen_items(
        offsets, events.column("item_row").to_numpy(), len(state.item_ids), settings.seen_items
    )
    ends = np.cumsum(lengths, dtype=np.int32)
    by_user = pa.ListArray.from_arrays(  # one list per event user, then an empty one for the rest
        pa.array(np.concatenate([[0], ends, ends[-1:] if len(ends) else [0]]), pa.int32()),
        state.item_ids.take(pa.array(rows, pa.int64())),
    )
    seen = by_user.take(pa.array(np.where(ev >= 0, ev, len(ev_users))))
    return snapshot.to_table(settings.meta, ids, emb, n_support, last_ts, seen), counts
