"""Train/evaluation splits as pure functions on Arrow tables: a global time split, per-user
meta-learning tasks (support before a time, query after it), and MeLU's MovieLens
protocol with its four cold-start scenarios.

Tasks are columnar: one flat table of support events and one of query events, grouped
by user, with offsets (CSR-style), never a Python object per event.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from meta_embed.tables import TS_TYPE

SCENARIOS: tuple[str, ...] = ("warm_state", "user_cold_state", "item_cold_state", "user_and_item_cold_state")
"""MeLU's scenarios: (existing user, existing item), (new, existing), (existing, new), (new, new)."""


@dataclasses.dataclass(frozen=True)
class Tasks:
    """Per-user support and query sets.

    Task k is user `user_id[k]`; its support events are rows
    `support_offsets[k]:support_offsets[k + 1]` of `support`, its query events rows
    `query_offsets[k]:query_offsets[k + 1]` of `query`. Both tables keep the
    interaction columns (user_id, item_id, ts, label, rating, extras); within a task rows
    are in ascending ts. Tasks are ordered by user_id (lexicographic).
    """

    user_id: pa.Array  # (n_tasks,) string
    support: pa.Table  # (n_support_rows, ...) flat
    support_offsets: np.ndarray  # (n_tasks + 1,) int64
    query: pa.Table  # (n_query_rows, ...) flat
    query_offsets: np.ndarray  # (n_tasks + 1,) int64

    def __post_init__(self) -> None:
        for name, table, offsets in (("support", self.support, self.support_offsets),
                                     ("query", self.query, self.query_offsets)):
            if len(offsets) != len(self.user_id) + 1 or offsets[0] != 0 or offsets[-1] != table.num_rows:
                raise ValueError(f"Tasks.{name}_offsets must have n_tasks + 1 entries from 0 to {table.num_rows}")

    def __len__(self) -> int:
        return len(self.user_id)

    @property
    def n_support(self) -> np.ndarray:
        """(n_tasks,) support size per task."""
        return np.diff(self.support_offsets)

    @property
    def n_query(self) -> np.ndarray:
        """(n_tasks,) query size per task."""
        return np.diff(self.query_offsets)

    def support_task(self) -> np.ndarray:
        """(n_support_rows,) task index of each support row."""
        return np.repeat(np.arange(len(self)), self.n_support)

    def query_task(self) -> np.ndarray:
        """(n_query_rows,) task index of each query row."""
        return np.repeat(np.arange(len(self)), self.n_query)

    def task(self, k: int) -> tuple[pa.Table, pa.Table]:
        """(support, query) of task k."""
        s, q = self.support_offsets, self.query_offsets
        return self.support.slice(s[k], s[k + 1] - s[k]), self.query.slice(q[k], q[k + 1] - q[k])

    def take(self, tasks: np.ndarray) -> Tasks:
        """The tasks at indices `tasks` (e.g. a training batch), in that order."""
        idx = np.asarray(tasks, dtype=np.int64)
        sup_rows, sup_off = _gather(self.support_offsets, idx)
        q_rows, q_off = _gather(self.query_offsets, idx)
        return Tasks(self.user_id.take(pa.array(idx)), self.support.take(pa.array(sup_rows)), sup_off,
                     self.query.take(pa.array(q_rows)), q_off)


def _gather(offsets: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the groups `idx` of a CSR layout, and their new offsets."""
    lengths = offsets[idx + 1] - offsets[idx]
    new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    rows = np.repeat(offsets[idx] - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
    return rows.astype(np.int64), new_offsets


def to_ts(value: dt.datetime | str | int | float | pa.Scalar | np.datetime64) -> pa.TimestampScalar:
    """A timestamp[us, UTC] scalar from a datetime (naive = UTC), ISO-8601 text, epoch
    seconds, numpy datetime64 or an Arrow scalar."""
    if isinstance(value, pa.Scalar):
        return pc.cast(value, TS_TYPE)
    if isinstance(value, np.datetime64):
        value = value.astype("datetime64[us]").astype(dt.datetime)
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = dt.datetime.fromtimestamp(value, tz=dt.timezone.utc)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return pa.scalar(value, TS_TYPE)
    raise TypeError(f"cannot read a timestamp from {value!r} ({type(value).__name__})")


def _ts_micros(table: pa.Table) -> np.ndarray:
    return np.asarray(pc.cast(table["ts"], pa.int64()), dtype=np.int64)


def time_split(interactions: pa.Table, cutoff) -> tuple[pa.Table, pa.Table]:
    """(events with ts < cutoff, events with ts >= cutoff)."""
    cut = to_ts(cutoff)
    ts = interactions["ts"]
    return interactions.filter(pc.less(ts, cut)), interactions.filter(pc.greater_equal(ts, cut))


def _by_user(interactions: pa.Table) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Rows sorted by (user_id, ts, item_id); the group index of each row and group starts."""
    table = interactions.sort_by([("user_id", "ascending"), ("ts", "ascending"), ("item_id", "ascending")])
    users = table["user_id"].combine_chunks()
    change = np.asarray(pc.not_equal(users[1:], users[:-1]), dtype=bool) if len(users) > 1 else np.zeros(0, bool)
    group = np.concatenate([[0], np.cumsum(change)]).astype(np.int64) if len(users) else np.zeros(0, np.int64)
    starts = np.concatenate([[0], np.flatnonzero(change) + 1]).astype(np.int64) if len(users) else np.zeros(0, np.int64)
    return table, group, starts


def _tasks(table: pa.Table, group: np.ndarray, starts: np.ndarray, in_support: np.ndarray,
           in_query: np.ndarray, include: np.ndarray) -> Tasks:
    """Tasks from row masks over a `_by_user` table; `include` selects groups."""
    n_groups = len(starts)
    sup = in_support & include[group]
    qry = in_query & include[group]
    sup_n = np.bincount(group[sup], minlength=n_groups)[include]
    qry_n = np.bincount(group[qry], minlength=n_groups)[include]
    users = table["user_id"].combine_chunks().take(pa.array(starts[include]))
    return Tasks(
        users, table.take(pa.array(np.flatnonzero(sup))), np.concatenate([[0], np.cumsum(sup_n)]).astype(np.int64),
        table.take(pa.array(np.flatnonzero(qry))), np.concatenate([[0], np.cumsum(qry_n)]).astype(np.int64),
    )


def user_tasks(interactions: pa.Table, t, max_support: int | None, end=None,
               min_support: int = 0, min_query: int = 0) -> Tasks:
    """One task per user: support = the user's `max_support` most recent events with
    ts < t (all of them if None), query = events with t <= ts (< end if given).

    Users are kept when they have >= min_support support and >= min_query query events;
    with the defaults every user with an event before `end` is kept (cold users have an
    empty support set, users with nothing after t an empty query set).
    """
    if max_support is not None and max_support <= 0:
        raise ValueError(f"max_support must be > 0 or None, got {max_support}")
    if min_support < 0 or min_query < 0:
        raise ValueError(f"min_support and min_query must be >= 0, got {min_support}, {min_query}")
    t_us = to_ts(t).value
    if end is not None:
        end_ts = to_ts(end)
        if end_ts.value <= t_us:
            raise ValueError(f"end {end_ts} must be after t {to_ts(t)}")
        interactions = interactions.filter(pc.less(interactions["ts"], end_ts))
    table, group, starts = _by_user(interactions)
    before = _ts_micros(table) < t_us
    n_before = np.bincount(group[before], minlength=len(starts))  # a prefix of each group (sorted by ts)
    cap = n_before if max_support is None else np.minimum(n_before, max_support)
    pos = np.arange(table.num_rows) - starts[group]
    in_support = before & (pos >= (n_before - cap)[group])
    n_after = np.bincount(group, minlength=len(starts)) - n_before
    include = (cap >= min_support) & (n_after >= min_query)
    return _tasks(table, group, starts, in_support, ~before, include)


@dataclasses.dataclass(frozen=True)
class MeluSplit:
    """MeLU's protocol: tasks plus which users are new and each query event's scenario."""

    tasks: Tasks
    user_is_new: np.ndarray  # (n_tasks,) bool
    query_item_is_new: np.ndarray  # (n_query_rows,) bool
    query_scenario: pa.Array  # (n_query_rows,) string, one of SCENARIOS

    def scenario_mask(self, scenario: str) -> np.ndarray:
        """(n_query_rows,) bool: the query events of `scenario`."""
        if scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
        return np.asarray(pc.equal(self.query_scenario, scenario), dtype=bool)


def melu_split(interactions: pa.Table, items: pa.Table, seed: int, min_ratings: int = 13,
               max_ratings: int = 100, n_query: int = 10, new_user_fraction: float = 0.2,
               new_item_year: int = 1998, new_users_by: str = "joined") -> MeluSplit:
    """MeLU's MovieLens protocol.

    Users with min_ratings..max_ratings ratings are kept; each gets `n_query` query events
    drawn at random (seeded), the rest is support. The `new_user_fraction` of kept users
    who joined last (first rating; `new_users_by="random"` draws them instead) are new
    users; items released in `new_item_year` or later are new items (unknown year:
    existing). Each query event gets the scenario of (user, item) in SCENARIOS.
    """
    if not 0 < n_query < min_ratings <= max_ratings:
        raise ValueError(f"need 0 < n_query < min_ratings <= max_ratings, got {n_query}, {min_ratings}, {max_ratings}")
    if not 0 <= new_user_fraction <= 1:
        raise ValueError(f"new_user_fraction must be in [0, 1], got {new_user_fraction}")
    if new_users_by not in ("joined", "random"):
        raise ValueError(f"new_users_by must be 'joined' or 'random', got {new_users_by!r}")
    rng = np.random.default_rng(seed)
    table, group, starts = _by_user(interactions)
    counts = np.bincount(group, minlength=len(starts))
    include = (counts >= min_ratings) & (counts <= max_ratings)
    order = np.lexsort((rng.random(table.num_rows), group))  # rows shuffled within each group
    rank = np.empty(table.num_rows, dtype=np.int64)
    rank[order] = np.arange(table.num_rows) - starts[group[order]]
    tasks = _tasks(table, group, starts, rank >= n_query, rank < n_query, include)

    kept = np.flatnonzero(include)
    n_new = int(round(new_user_fraction * len(kept)))
    if new_users_by == "joined":  # first rating = ts of each group's first row; ties by user_id
        newest_first = kept[np.argsort(-_ts_micros(table)[starts[kept]], kind="stable")]
    else:
        newest_first = rng.permutation(kept)
    user_is_new = np.isin(kept, newest_first[:n_new])

    years = items["year"].take(pc.index_in(tasks.query["item_id"], value_set=items["item_id"]))
    item_is_new = np.asarray(pc.fill_null(pc.greater_equal(years, new_item_year), False), dtype=bool)
    code = user_is_new[tasks.query_task()].astype(np.int64) + 2 * item_is_new
    scenario = pa.array(np.asarray(SCENARIOS, dtype=object)[code], pa.string())
    return MeluSplit(tasks, user_is_new, item_is_new, scenario)
