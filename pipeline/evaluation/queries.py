"""The predictions table of the offline A/B replay and the metrics over it, as named
DuckDB SQL queries.

Every arm writes one row per test event into one Parquet table (`PREDICTIONS`). A
*slice* is a set of events that every arm is compared on: all events, one activity
bucket (`segment`: the user's number of events before the refresh point that served
the event) or one cohort (users who existed at T0, or joined after it: their first
day, later days). The queries read a view `sliced` (the table with a `slice` column,
one copy of an event per slice it belongs to) and return tidy rows
(arm, slice, value, n_events, n_users).

Scores are logits. `rank` is the 0-based position of the event's item among the
day's candidates (the full catalog minus items the user had seen before the refresh
point), ties counted against the item.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from meta_embed.tables import TS_TYPE

PREDICTIONS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("label", pa.float32(), nullable=False),
        pa.field("arm", pa.string(), nullable=False),
        pa.field("segment", pa.string(), nullable=False),
        pa.field("cohort", pa.string(), nullable=False),
        pa.field("refresh_point", TS_TYPE, nullable=False),
        pa.field("day", pa.int32(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("rank", pa.int32(), nullable=True),
        pa.field("n_candidates", pa.int32(), nullable=True),
    ]
)

BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("0", 0, 0),
    ("1-5", 1, 5),
    ("6-20", 6, 20),
    ("21-100", 21, 100),
    (">100", 101, None),
)
"""Activity buckets: (name, lowest, highest or None) events before the refresh point."""

COHORTS = ("existing_at_T0", "joined_first_day", "joined_later_days")

SLICES: tuple[tuple[str, str | None, tuple[str, ...]], ...] = (
    ("overall", None, ()),
    *((f"bucket {name}", "segment", (name,)) for name, _, _ in BUCKETS),
    ("existing_at_T0", "cohort", ("existing_at_T0",)),
    ("joined_after_T0", "cohort", ("joined_first_day", "joined_later_days")),
    ("joined_first_day", "cohort", ("joined_first_day",)),
    ("joined_later_days", "cohort", ("joined_later_days",)),
)
"""(slice name, column, values): the events whose column holds one of the values (None: all)."""

K = 10  # cut-off of the ranking metrics


def sliced_view_sql(source: str = "predictions") -> str:
    """SQL of the `sliced` view over the relation `source`."""
    parts = []
    for name, column, values in SLICES:
        where = "" if column is None else f" WHERE {column} IN ({', '.join(repr(v) for v in values)})"
        parts.append(f"SELECT '{name}' AS slice, * FROM {source}{where}")
    return "CREATE OR REPLACE TEMP VIEW sliced AS\n" + "\nUNION ALL\n".join(parts)


_AUC_PARTS = """
ranked AS (
    SELECT arm, slice, user_id, day, label,
           rank() OVER (PARTITION BY {by} ORDER BY score)
             + (count(*) OVER (PARTITION BY {by}, score) - 1) / 2.0 AS r
    FROM sliced),
groups AS (
    SELECT arm, slice, {key} count(*) AS n,
           count(*) FILTER (WHERE label > 0.5) AS pos, count(*) FILTER (WHERE label <= 0.5) AS neg,
           sum(r) FILTER (WHERE label > 0.5) AS rpos
    FROM ranked GROUP BY ALL),
aucs AS (
    SELECT *, CASE WHEN pos > 0 AND neg > 0 THEN (rpos - pos * (pos + 1) / 2.0) / (pos * neg) END AS auc
    FROM groups)"""

_WEIGHTED_MEAN = """
SELECT arm, slice,
       sum(n * auc) FILTER (WHERE auc IS NOT NULL) / sum(n) FILTER (WHERE auc IS NOT NULL) AS value,
       coalesce(sum(n) FILTER (WHERE auc IS NOT NULL), 0) AS n_events,
       count(DISTINCT user_id) FILTER (WHERE auc IS NOT NULL) AS n_users
FROM aucs GROUP BY ALL"""
"""The groups' AUCs averaged with weights = their events, over groups with both classes."""

QUERIES: dict[str, str] = {
    # Mann-Whitney AUC over all events of the slice; tied scores share their average rank.
    "auc": "WITH"
    + _AUC_PARTS.format(by="arm, slice", key="")
    + """
SELECT a.arm, a.slice, a.auc AS value, a.n AS n_events, u.n_users
FROM aucs a
JOIN (SELECT arm, slice, count(DISTINCT user_id) AS n_users FROM sliced GROUP BY ALL) u USING (arm, slice)""",
    # Per-user AUC averaged with weights = the user's events, over users with both classes.
    "gauc": "WITH" + _AUC_PARTS.format(by="arm, slice, user_id", key="user_id,") + _WEIGHTED_MEAN,
    # The same per user-day (user x refresh point), weighted by the user-day's events: only
    # items scored by one snapshot are compared, as in one served ranking.
    "gauc_day": "WITH"
    + _AUC_PARTS.format(by="arm, slice, user_id, day", key="user_id, day,")
    + _WEIGHTED_MEAN,
    # Mean binary cross-entropy of sigmoid(score), in the stable form softplus(s) - y s.
    "logloss": """
SELECT arm, slice, avg(greatest(score, 0) + ln(1 + exp(-abs(score))) - label * score) AS value,
       count(*) AS n_events, count(DISTINCT user_id) AS n_users
FROM sliced GROUP BY ALL""",
    # Per user-day with >= 1 positive: DCG of the positives in the top K over the ideal DCG.
    "ndcg_at_10": f"""
WITH days AS (
    SELECT arm, slice, user_id, day, count(*) FILTER (WHERE label > 0.5) AS npos,
           coalesce(sum(1 / log2(rank + 2)) FILTER (WHERE label > 0.5 AND rank < {K}), 0) AS dcg
    FROM sliced GROUP BY ALL HAVING npos > 0)
SELECT arm, slice,
       avg(dcg / list_sum(list_transform(range(least(npos, {K})), lambda j: 1 / log2(j + 2)))) AS value,
       sum(npos) AS n_events, count(DISTINCT user_id) AS n_users
FROM days GROUP BY ALL""",
    # Per user-day with >= 1 positive: the share of its positives ranked in the top K.
    "recall_at_10": f"""
WITH days AS (
    SELECT arm, slice, user_id, day, count(*) FILTER (WHERE label > 0.5) AS npos,
           count(*) FILTER (WHERE label > 0.5 AND rank < {K}) AS hits
    FROM sliced GROUP BY ALL HAVING npos > 0)
SELECT arm, slice, avg(hits / npos) AS value, sum(npos) AS n_events, count(DISTINCT user_id) AS n_users
FROM days GROUP BY ALL""",
}
"""Named metric queries over the `sliced` view; each returns arm, slice, value, n_events, n_users."""

METRICS = tuple(QUERIES)
METRICS_SCHEMA = pa.schema(
    [
        ("metric", pa.string()),
        ("arm", pa.string()),
        ("slice", pa.string()),
        ("value", pa.float64()),
        ("n_events", pa.int64()),
        ("n_users", pa.int64()),
    ]
)

SEGMENTS_SQL = """
WITH points AS (
    SELECT DISTINCT user_id, refresh_point FROM test),
counts AS (
    SELECT p.user_id, p.refresh_point, count(h.user_id) AS n_before
    FROM points p LEFT JOIN history h ON h.user_id = p.user_id AND h.ts < p.refresh_point
    GROUP BY ALL),
first AS (
    SELECT user_id, min(ts) AS first_ts FROM history GROUP BY ALL)
SELECT t.*, c.n_before,
       CASE {buckets} END AS segment,
       CASE WHEN f.first_ts IS NOT NULL AND f.first_ts < $t0 THEN 'existing_at_T0'
            WHEN c.n_before = 0 THEN 'joined_first_day' ELSE 'joined_later_days' END AS cohort
FROM test t JOIN counts c USING (user_id, refresh_point) LEFT JOIN first f USING (user_id)
""".format(
    buckets=" ".join(
        f"WHEN c.n_before >= {lo}"
        + (f" AND c.n_before <= {hi}" if hi is not None else "")
        + f" THEN '{name}'"
        for name, lo, hi in BUCKETS
    )
)
"""Segments of test events: `test` (user_id, refresh_point, ...) and `history` (user_id, ts:
every event, test period included) -> test + n_before, segment, cohort. `$t0` is T0."""


def connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    con.execute(
        "SET threads = 1"
    )  # one thread: float sums in one order, so a rerun gives bit-identical metrics
    return con


def assign_segments(test: pa.Table, history: pa.Table, t0) -> pa.Table:
    """`test` events (with a refresh_point column) plus n_before, segment and cohort."""
    con = connect()
    con.register("test", test)
    con.register("history", history.select(["user_id", "ts"]))
    return con.sql(SEGMENTS_SQL, params={"t0": t0}).to_arrow_table()


CALIBRATION_SQL = """
WITH p AS (SELECT arm, label, 1 / (1 + exp(-score)) AS prob FROM predictions)
SELECT arm, least(floor(prob * $bins), $bins - 1)::INTEGER AS bin,
       avg(prob) AS predicted, avg(label) AS observed, count(*) AS n_events
FROM p GROUP BY ALL ORDER BY arm, bin"""
"""Reliability of sigmoid(score): per arm and probability bin, mean prediction and positive rate."""

DAILY_VIEW_SQL = """CREATE OR REPLACE TEMP VIEW sliced AS
SELECT 'day ' || lpad(day::VARCHAR, 3, '0') AS slice, * FROM predictions"""
"""Slices by refresh point instead of by segment (metrics across refresh points)."""


def _open(predictions: pa.Table | str | Path) -> duckdb.DuckDBPyConnection:
    con = connect()
    if isinstance(predictions, pa.Table):
        con.register("predictions", predictions)
    else:
        con.execute(f"CREATE VIEW predictions AS SELECT * FROM read_parquet('{Path(predictions)}')")
    return con


def calibration(predictions: pa.Table | str | Path, bins: int = 10) -> pa.Table:
    """arm, bin, predicted, observed, n_events (see CALIBRATION_SQL)."""
    return _open(predictions).sql(CALIBRATION_SQL, params={"bins": bins}).to_arrow_table()


def compute_metrics(
    predictions: pa.Table | str | Path, metrics: tuple[str, ...] = METRICS, by_day: bool = False
) -> pa.Table:
    """Tidy table (metric, arm, slice, value, n_events, n_users) of the named queries;
    slices are SLICES, or one per refresh point ('day 000', ...) with `by_day`."""
    con = _open(predictions)
    con.execute(DAILY_VIEW_SQL if by_day else sliced_view_sql())
    parts = []
    for name in metrics:
        if name not in QUERIES:
            raise ValueError(f"unknown metric {name!r}; known: {sorted(QUERIES)}")
        rel = con.sql(f"SELECT '{name}' AS metric, * FROM ({QUERIES[name]}) ORDER BY arm, slice")
        parts.append(rel.to_arrow_table().cast(METRICS_SCHEMA))
    return pa.concat_tables(parts)
