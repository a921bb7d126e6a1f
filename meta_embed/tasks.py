"""Per-user tasks in columnar form, and their padded tensor batches.

A `TaskSet` holds, for U users, a support and a query `EventBlock`: flat event arrays
grouped by user (oldest first) with offsets, so that no Python object exists per event.
`FeatureTables` holds the encoded user and item features once; events refer to rows
of those tables. `episodes(...)` pads a batch of users into (users, slots) tensors with
masks for the batched inner loop.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from meta_embed.devices import CPU
from meta_embed.features import Encoded, FeatureSpec, encode, encode_with_default, take, to_device
from meta_embed.tables import unique_ids


@dataclasses.dataclass(frozen=True)
class FeatureTables:
    """Encoded features of every known user and item; the last row of each is the all-missing default."""

    user_ids: pa.Array
    users: Encoded
    item_ids: pa.Array
    items: Encoded

    @classmethod
    def build(cls, spec: FeatureSpec, users: pa.Table, items: pa.Table) -> FeatureTables:
        return cls(
            unique_ids(users.column(spec.user_key), f"users table '{spec.user_key}'"),
            encode_with_default(users, spec.user, "users table"),
            unique_ids(items.column(spec.item_key), f"items table '{spec.item_key}'"),
            encode_with_default(items, spec.item, "items table"),
        )

    def to(self, device: torch.device) -> FeatureTables:
        """These tables with the encoded features on `device` (the ids stay Arrow arrays)."""
        return dataclasses.replace(
            self, users=to_device(self.users, device), items=to_device(self.items, device)
        )

    def user_rows(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Row of each user id; unknown ids get the default row (len(user_ids))."""
        return _rows(ids, self.user_ids)

    def item_rows(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        return _rows(ids, self.item_ids)


def _rows(ids: pa.Array | pa.ChunkedArray, known: pa.Array) -> np.ndarray:
    idx = pc.index_in(ids.cast(pa.string()), value_set=known)
    return idx.fill_null(len(known)).to_numpy(zero_copy_only=False).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class EventBlock:
    """Events of user k are rows offsets[k]:offsets[k+1], ordered by time (oldest first)."""

    offsets: np.ndarray  # (users + 1,) int64
    item_rows: np.ndarray  # (events,) int64
    target: np.ndarray  # (events,) float32: label (binary) or rating (regression)
    ts: np.ndarray  # (events,) int64 microseconds since the epoch
    context: Encoded | None = None  # (events, ...) encoded context columns

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclasses.dataclass(frozen=True)
class TaskSet:
    """Support and query events of U users; `user_rows` index FeatureTables.users."""

    user_ids: pa.Array
    user_rows: np.ndarray
    support: EventBlock
    query: EventBlock

    def __len__(self) -> int:
        return len(self.user_ids)


def group_events(
    events: pa.Table,
    user_ids: pa.Array,
    tables: FeatureTables,
    spec: FeatureSpec,
    target: str = "label",
    max_per_user: int | None = None,
) -> EventBlock:
    """Group `events` by the users in `user_ids` (others dropped), oldest first, keeping
    at most the most recent `max_per_user` of each user."""
    u = pc.index_in(events.column(spec.user_key), value_set=user_ids).fill_null(-1)
    u = u.to_numpy(zero_copy_only=False).astype(np.int64)
    ts = events.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False)
    keep = np.flatnonzero(u >= 0)
    order = keep[np.lexsort((ts[keep], u[keep]))]
    counts = np.bincount(u[order], minlength=len(user_ids))
    if max_per_user is not None:
        ends = np.cumsum(counts)[u[order]]  # exclusive end of each event's user group
        order = order[ends - np.arange(len(order)) <= max_per_user]
        counts = np.minimum(counts, max_per_user)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    picked = events.take(pa.array(order))
    y = picked.column(target).fill_null(0.0).to_numpy(zero_copy_only=False).astype(np.float32)
    ctx = encode(picked, spec.context, "events") if spec.context else None
    return EventBlock(offsets, tables.item_rows(picked.column(spec.item_key)), y, ts[order], ctx)


def build_tasks(
    support: pa.Table,
    query: pa.Table | None,
    tables: FeatureTables,
    spec: FeatureSpec,
    target: str = "label",
    max_support: int | None = None,
    user_ids: pa.Array | None = None,
) -> TaskSet:
    """Tasks for `user_ids` (default: every user with support or query events)."""
    if user_ids is None:
        cols = [support.column(spec.user_key)] + ([query.column(spec.user_key)] if query is not None else [])
        user_ids = pc.unique(pa.chunked_array([c for col in cols for c in col.chunks], pa.string()))
    user_ids = user_ids.combine_chunks() if isinstance(user_ids, pa.ChunkedArray) else user_ids
    s = group_events(support, user_ids, tables, spec, target, max_support)
    q = group_events(query if query is not None else support.slice(0, 0), user_ids, tables, spec, target)
    return TaskSet(user_ids, tables.user_rows(user_ids), s, q)


@dataclasses.dataclass(frozen=True)
class Padded:
    """Events of a batch of users padded to (users, slots)."""

    items: torch.Tensor  # (users, slots) item rows (0 where padded)
    y: torch.Tensor  # (users, slots) float
    mask: torch.Tensor  # (users, slots) bool
    context: Encoded | None


def pad(block: EventBlock, users: np.ndarray, device: torch.device = CPU) -> Padded:
    """Pad the events of `users` (indices into the block) into rectangular tensors on `device`
    (gathered on the CPU, then moved: the same values on every device)."""
    lengths = block.lengths[users]
    slots = max(int(lengths.max()) if len(users) else 0, 1)
    pos = np.arange(slots)
    mask = pos[None, :] < lengths[:, None]  # (users, slots)
    flat = np.where(mask, block.offsets[users][:, None] + pos[None, :], 0)
    flat_t = torch.from_numpy(flat)
    items = torch.from_numpy(block.item_rows)[flat_t] if len(block.item_rows) else torch.zeros_like(flat_t)
    y = torch.from_numpy(block.target)[flat_t] if len(block.target) else torch.zeros(flat.shape)
    ctx = take(block.context, flat_t) if block.context is not None else None
    mask_t = torch.from_numpy(mask)
    return Padded(
        (items * mask_t).to(device),
        (y * mask_t).to(device),
        mask_t.to(device),
        None if ctx is None else to_device(ctx, device),
    )


@dataclasses.dataclass(frozen=True)
class Episodes:
    """A batch of user tasks as tensors: user rows plus padded support and query events."""

    user_rows: torch.Tensor  # (users,)
    support: Padded
    query: Padded


def episodes(tasks: TaskSet, users: np.ndarray, device: torch.device = CPU) -> Episodes:
    """The tasks of `users` (indices into `tasks`) as a batch of tensors on `device`."""
    return Episodes(
        torch.as_tensor(tasks.user_rows[users], device=device),
        pad(tasks.support, users, device),
        pad(tasks.query, users, device),
    )


def gather(block: EventBlock, idx: np.ndarray, counts: np.ndarray) -> EventBlock:
    """A new block of the events `idx` (flat rows of `block`), the first counts[0] of
    them for its first user, and so on."""
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    ctx = take(block.context, torch.from_numpy(idx)) if block.context is not None else None
    return EventBlock(offsets, block.item_rows[idx], block.target[idx], block.ts[idx], ctx)


def range_index(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(starts[k], starts[k] + lengths[k]) over k, without a loop."""
    ends = np.cumsum(lengths)
    return (np.repeat(starts - (ends - lengths), lengths) + np.arange(ends[-1] if len(ends) else 0)).astype(
        np.int64
    )


def ranges(block: EventBlock, starts: np.ndarray, lengths: np.ndarray) -> EventBlock:
    """The events block[starts[k] : starts[k] + lengths[k]] of each k, as a new block."""
    return gather(block, range_index(starts, lengths), lengths)


def cut(
    timelines: TaskSet,
    users: np.ndarray,
    split: np.ndarray,
    max_support: int | None = None,
    max_query: int | None = None,
) -> TaskSet:
    """Tasks that cut each user's timeline (the support block of `timelines`, oldest first)
    at a position: support = the (at most `max_support`) most recent events before
    `split[k]`, query = the (at most `max_query`) events from `split[k]` on.

    `users` index `timelines`; split[k] is in 0..length (0: a cold user, no support).
    """
    users = np.asarray(users, dtype=np.int64)
    split = np.asarray(split, dtype=np.int64)
    block = timelines.support
    lengths, starts = block.lengths[users], block.offsets[users]
    if np.any(split < 0) or np.any(split > lengths):
        raise ValueError("cut: every split position must lie in 0..timeline length")
    n_support = split if max_support is None else np.minimum(split, max_support)
    n_query = lengths - split if max_query is None else np.minimum(lengths - split, max_query)
    support = ranges(block, starts + split - n_support, n_support)
    query = ranges(block, starts + split, n_query)
    return TaskSet(timelines.user_ids.take(pa.array(users)), timelines.user_rows[users], support, query)
