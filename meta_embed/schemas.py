"""Explicit Arrow schemas of the tables every stage reads and writes, and the checks
that hold an input file to them (failing up front, naming the file and the column)."""

from __future__ import annotations

import pyarrow as pa

TS_TYPE = pa.timestamp("us", tz="UTC")

INTERACTIONS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("label", pa.float32(), nullable=False),
        pa.field("rating", pa.float32(), nullable=True),
    ]
)
"""One event: `label` is 1.0 if the rating is >= 4 else 0.0; `rating` is kept (nullable).
Extra (context) columns may follow these."""

USERS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("age", pa.int32(), nullable=True),
        pa.field("gender", pa.string(), nullable=True),
        pa.field("occupation", pa.string(), nullable=True),
        pa.field("zip_prefix", pa.string(), nullable=True),
    ]
)

ITEMS = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=True),
        pa.field("year", pa.int32(), nullable=True),
        pa.field("genres", pa.list_(pa.string()), nullable=True),
    ]
)

DEAD_LETTER = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=True),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("record", pa.string(), nullable=True),
    ]
)
"""A rejected input record: where it came from, its row number, why, and its content as JSON."""


class SchemaError(ValueError):
    """An input file does not have the columns or types a stage needs."""


def check_schema(actual: pa.Schema, expected: pa.Schema, path: str) -> None:
    """Fail if `actual` lacks a column of `expected` or holds it with another type.

    Extra columns are allowed (they may be context features). Integer widths and
    string/large_string are not interchangeable here: writers must cast explicitly.
    """
    for field in expected:
        idx = actual.get_field_index(field.name)
        if idx < 0:
            raise SchemaError(
                f"{path}: missing column '{field.name}' (expected {field.type}); "
                f"found columns {actual.names}. Write the file with the schema in meta_embed/schemas.py."
            )
        got = actual.field(idx).type
        if not got.equals(field.type):
            raise SchemaError(
                f"{path}: column '{field.name}' has type {got}, expected {field.type}. "
                f"Cast it before writing (see meta_embed/schemas.py)."
            )
