"""MeLU's MovieLens protocol as a pure function on Arrow tables: per-user support and
query sets, new users and new items, and the four cold-start scenarios.

Tasks are columnar: one flat table of support events and one of query events, grouped
by user, with offsets (CSR-style), never a Python object per event.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
        for name, table, offsets in (
            ("support", self.support, self.support_offsets),
            ("query", self.query, self.query_offsets),
        ):
            if len(offsets) != len(self.user_id) + 1 or offsets[0] != 0 or offsets[-1] != table.num_rows:
                raise ValueError(
                    f"Tasks.{name}_offsets must have n_tasks + 1 entries from 0 to {table.num_rows}"
                )

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


def _ts_micros(table: pa.Table) -> np.ndarray:
    return np.asarray(pc.cast(table["ts"], pa.int64()), dtype=np.int64)


def _by_user(interactions: pa.Table) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Rows sorted by (user_id, ts, item_id); the group index of each row and group starts."""
    table = interactions.sort_by([("user_id", "ascending"), ("ts", "ascending"), ("item_id", "ascending")])
    users = table["user_id"].combine_chunks()
    change = (
        np.asarray(pc.not_equal(users[1:], users[:-1]), dtype=bool) if len(users) > 1 else np.zeros(0, bool)
    )
    group = np.concatenate([[0], np.cumsum(change)]).astype(np.int64) if len(users) else np.zeros(0, np.int64)
    starts = (
        np.concatenate([[0], np.flatnonzero(change) + 1]).astype(np.int64)
        if len(users)
        else np.zeros(0, np.int64)
    )
    return table, group, starts


def _tasks(
    table: pa.Table,
    group: np.ndarray,
    starts: np.ndarray,
    in_support: np.ndarray,
    in_query: np.ndarray,
    include: np.ndarray,
) -> Tasks:
    """Tasks from row masks over a `_by_user` table; `include` selects groups."""
    n_groups = len(starts)
    sup = in_support & include[group]
    qry = in_query & include[group]
    sup_n = np.bincount(group[sup], minlength=n_groups)[include]
    qry_n = np.bincount(group[qry], minlength=n_groups)[include]
    users = table["user_id"].combine_chunks().take(pa.array(starts[include]))
    return Tasks(
        users,
        table.take(pa.array(np.flatnonzero(sup))),
        np.concatenate([[0], np.cumsum(sup_n)]).astype(np.int64),
        table.take(pa.array(np.flatnonzero(qry))),
        np.concatenate([[0], np.cumsum(qry_n)]).astype(np.int64),
    )


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


def melu_split(
    interactions: pa.Table,
    items: pa.Table,
    seed: int,
    min_ratings: int = 13,
    max_ratings: int = 100,
    n_query: int = 10,
    new_user_fraction: float = 0.2,
    new_item_year: int = 1998,
    new_users_by: str = "joined",
) -> MeluSplit:
    """MeLU's MovieLens protocol.

    Users with min_ratings..max_ratings ratings are kept; each gets `n_query` query events
    drawn at random (seeded), the rest is support. The `new_user_fraction` of kept users
    who joined last (first rating; `new_users_by="random"` draws them instead) are new
    users; items released in `new_item_year` or later are new items (unknown year:
    existing). Each query event gets the scenario of (user, item) in SCENARIOS.
    """
    if not 0 < n_query < min_ratings <= max_ratings:
        raise ValueError(
            f"need 0 < n_query < min_ratings <= max_ratings, got {n_query}, {min_ratings}, {max_ratings}"
        )
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
