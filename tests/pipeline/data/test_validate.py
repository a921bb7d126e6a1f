"""The dead-letter validation of interactions: one reason per bad row, counted exactly, the
first of duplicates kept, typed and text inputs parsed leniently, vectorized."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa

from meta_embed.tables import INTERACTIONS, TS_TYPE
from pipeline.data.validate import REASONS, parse_float, parse_timestamp, validate_interactions

UTC = dt.UTC


def raw_with_one_bad_row_per_reason() -> pa.Table:
    return pa.table(
        {
            "user_id": ["u1", None, "u3", "u4", "u5", "u5b", "u6", "u6b", "u7", "u8", "u1", "u9"],
            "item_id": ["i1", "i2", " ", "i4", "i5", "i5", "i6", "i6", "i7", "i8", "i1", "i9"],
            "ts": [
                "881250949",
                "881250949",
                "881250949",
                "",
                "yesterday",
                "999999999999",
                "881250949",
                "881250949",
                "881250949",
                "881250949",
                "881250949",
                "2020-01-02T03:04:05Z",
            ],
            "label": ["1", "1", "1", "1", "1", "1", "1", "1", "nan", "2", "1", "0"],
            "rating": ["4", "4", "4", "4", "4", "4", "x", "7", "4", "4", "4", None],
            "device": ["a", "b", "c", "d", "e", "e2", "f", "f2", "g", "h", "a", "j"],
        }
    )


def test_dead_letter_counts_exact_one_per_reason():
    good, dead, counts = validate_interactions(
        raw_with_one_bad_row_per_reason(), "events.csv", row_offset=100
    )
    assert counts == dict.fromkeys(REASONS, 1)
    assert dead["reason"].to_pylist() == list(REASONS)  # rows 1..10 fail in priority order
    assert dead["row"].to_pylist() == list(range(101, 111))
    assert set(dead["source"].to_pylist()) == {"events.csv"}
    assert json.loads(dead["record"][7].as_py()) == {
        "user_id": "u7",
        "item_id": "i7",
        "ts": "881250949",
        "label": "nan",
        "rating": "4",
        "device": "g",
    }
    assert good.schema.names == INTERACTIONS.names + ["device"]
    assert good.select(INTERACTIONS.names).schema.equals(INTERACTIONS, check_metadata=False)
    assert good.to_pylist() == [
        {
            "user_id": "u1",
            "item_id": "i1",
            "ts": dt.datetime(1997, 12, 4, 15, 55, 49, tzinfo=UTC),
            "label": 1.0,
            "rating": 4.0,
            "device": "a",
        },
        {
            "user_id": "u9",
            "item_id": "i9",
            "ts": dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC),
            "label": 0.0,
            "rating": None,
            "device": "j",
        },
    ]


def test_a_row_failing_several_checks_is_reported_once():
    raw = pa.table({"user_id": [None], "item_id": [None], "ts": [None], "label": [float("inf")]})
    good, dead, counts = validate_interactions(raw, "s")
    assert good.num_rows == 0 and dead["reason"].to_pylist() == ["null_user_id"] and sum(counts.values()) == 1
    assert json.loads(dead["record"][0].as_py())["label"] == "inf"  # JSON without bare NaN/Infinity


def test_typed_inputs_and_duplicates_keep_the_first():
    t = dt.datetime(2021, 5, 1, 12, tzinfo=UTC)
    raw = pa.table(
        {
            "user_id": pa.array([7, 7, 7, 8]),
            "item_id": pa.array([1, 1, 1, 1]),
            "ts": pa.array([t, t, t + dt.timedelta(seconds=1), t], pa.timestamp("ns", tz="UTC")),
            "label": pa.array([1, 1, 1, 0], pa.int8()),
        }
    )
    good, dead, counts = validate_interactions(raw, "s")
    assert good["user_id"].to_pylist() == ["7", "7", "8"] and dead["row"].to_pylist() == [1]
    assert counts["duplicate"] == 1 and good["rating"].null_count == 3
    assert good.schema.field("ts").type == TS_TYPE


def test_validation_of_a_large_batch_is_vectorized():
    n = 200_000
    raw = pa.table(
        {
            "user_id": pa.array(np.arange(n) % 1000),
            "item_id": pa.array(np.arange(n)),
            "ts": pa.array(np.full(n, 1.6e9)),
            "label": pa.array(np.where(np.arange(n) == 5, 3.0, 1.0)),
        }
    )
    good, dead, counts = validate_interactions(raw, "big")
    assert good.num_rows == n - 1 and counts["label_out_of_domain"] == 1


def test_text_parsers():
    ts = parse_timestamp(
        pa.array(["2020-01-01", "2020-01-01T01:00:00.5+01:00", "1.5", "2019-02-30", "x", None, " "])
    )
    assert ts.to_pylist() == [
        dt.datetime(2020, 1, 1, tzinfo=UTC),
        dt.datetime(2020, 1, 1, 0, 0, 0, 500000, tzinfo=UTC),
        dt.datetime(1970, 1, 1, 0, 0, 1, 500000, tzinfo=UTC),
        None,
        None,
        None,
        None,
    ]
    assert parse_float(pa.array([" 2 ", "1e3", "a", "", None])).to_pylist() == [2.0, 1000.0, None, None, None]


def test_duplicates_are_exactly_the_repeats_of_an_earlier_row():
    """Rows sharing a ts are compared on every column; a row is a duplicate iff an earlier
    row equals it (checked against a plain Python reference on many tied timestamps)."""
    rng = np.random.default_rng(7)
    n = 3000
    ts = rng.integers(0, 40, n) * 1_000_000 + 1_600_000_000_000_000
    users, items, labels = (rng.integers(0, k, n) for k in (5, 4, 2))
    rows = list(zip(users.astype(str), items.astype(str), ts, labels))
    table = pa.table(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "ts": pa.array([int(r[2]) for r in rows], pa.int64()).cast(TS_TYPE),
            "label": [float(r[3]) for r in rows],
        }
    )
    seen, expected = set(), []
    for r in rows:
        expected.append(r in seen)
        seen.add(r)
    got = validate_interactions(table, "t")
    assert got.counts["duplicate"] == sum(expected) > 0
    assert got.dead.column("row").to_pylist() == [i for i, dup in enumerate(expected) if dup]
