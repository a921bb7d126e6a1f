"""The tables every stage reads and writes: their explicit Arrow schemas, and the one
way to read and write them.

- Schemas: INTERACTIONS, USERS, ITEMS and DEAD_LETTER (`check_schema` holds a file to one).
- Reading: `read_table` takes a Parquet file, a folder of shards or a glob, checks every
  file's schema before reading any data, and names the file that is missing a column or
  cannot be decoded (`open_parquet` for one file, local or an already opened remote one).
- Writing: `write_table` casts to the exact schema and replaces the file atomically.
- A prepared data folder: `data_table(folder, name)` finds `name.parquet` or `name/`.
- Ids: `unique_ids` refuses a features table that lists an id twice, naming it.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from meta_embed import storage

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


class CorruptInputError(ValueError):
    """A file exists but cannot be read as Parquet (truncated, corrupt or not Parquet)."""


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
                f"found columns {actual.names}. Write the file with the schema in meta_embed/tables.py."
            )
        got = actual.field(idx).type
        if not got.equals(field.type):
            raise SchemaError(
                f"{path}: column '{field.name}' has type {got}, expected {field.type}. "
                f"Cast it before writing (see meta_embed/tables.py)."
            )


def list_parquet_files(path: str | os.PathLike[str]) -> list[str]:
    """The Parquet files behind `path`: one file, every `*.parquet` under a directory
    (recursively, skipping names starting with '.' or '_'), or the matches of a glob."""
    text = os.fspath(path)
    if any(ch in text for ch in "*?["):
        files = sorted(f for f in glob.glob(text, recursive=True) if os.path.isfile(f))
    elif os.path.isdir(text):
        files = sorted(
            str(p)
            for p in Path(text).rglob("*.parquet")
            if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(text).parts)
        )
    elif os.path.isfile(text):
        files = [text]
    else:
        raise FileNotFoundError(
            f"{text}: no such file or directory; pass a Parquet file, a directory of shards or a glob"
        )
    if not files:
        raise FileNotFoundError(f"{text}: matched no Parquet files (expected *.parquet shards)")
    return files


def open_parquet(source: str | os.PathLike[str] | IO[bytes], name: str | None = None) -> pq.ParquetFile:
    """Open one Parquet file: a local path, or a file object already opened on a remote
    store (then `name` is its URL, for messages). An unreadable one raises
    `CorruptInputError` naming it."""
    name = name or os.fspath(source)  # type: ignore[arg-type]
    try:
        return pq.ParquetFile(source)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as err:
        raise CorruptInputError(
            f"{name}: not a readable Parquet file ({err}); it may be truncated or still being written. "
            "Re-create it from its source, or remove it from the input."
        ) from err


def decode_error(name: str, err: Exception, where: str = "") -> CorruptInputError:
    """The error for Parquet data that could not be decoded, naming the file (and row group)."""
    return CorruptInputError(
        f"{name}: Parquet data{where} could not be decoded ({err}); re-create the file from its source."
    )


def read_table(
    path: str | os.PathLike[str],
    schema: pa.Schema,
    columns: Sequence[str] | None = None,
    filter: Any = None,
) -> pa.Table:
    """Read a Parquet file, a directory of shards or a glob into one table.

    Every file's schema is checked against `schema` before any data is read (a
    `SchemaError` names the file and column); unreadable files raise
    `CorruptInputError` naming the file. `filter` is a `pyarrow.compute.Expression` or
    DNF list as accepted by `pyarrow.parquet.read_table`. Columns of `schema` come
    first, in schema order, followed by any extra columns.
    """
    files = list_parquet_files(path)
    for f in files:
        check_schema(open_parquet(f).schema_arrow, schema, f)
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f, columns=list(columns) if columns else None, filters=filter))
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as err:
            raise decode_error(f, err) from err
    table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    first = [n for n in schema.names if n in table.column_names]
    return table.select(first + [n for n in table.column_names if n not in first])


def conform(table: pa.Table, schema: pa.Schema, what: str = "table") -> pa.Table:
    """`table` with the columns of `schema` cast to their exact types (extra columns are
    kept after them); fails naming the column when one is missing or a non-nullable one
    holds nulls."""
    arrays, fields = [], []
    for field in schema:
        if field.name not in table.column_names:
            raise SchemaError(
                f"{what}: missing column '{field.name}' (expected {field.type}); found {table.column_names}"
            )
        col = table[field.name].cast(field.type)
        if not field.nullable and col.null_count:
            raise SchemaError(
                f"{what}: column '{field.name}' holds {col.null_count} nulls but is not nullable; "
                f"validate the rows first (pipeline.data.validate.validate_interactions)"
            )
        arrays.append(col)
        fields.append(field)
    for name in table.column_names:
        if name not in schema.names:
            arrays.append(table[name])
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema.metadata))


def write_table(table: pa.Table, path: str | os.PathLike[str], schema: pa.Schema) -> Path:
    """Write `table` conformed to `schema` (see `conform`) to `path` atomically (a
    temporary file renamed into place); parent directories are created."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = conform(table, schema, str(out))
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(data, tmp)
    os.replace(tmp, out)
    return out


def write_dead_letter(rows: pa.Table | Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write dead-letter rows (a table or dicts with source/row/reason/record) in the
    DEAD_LETTER schema; an empty input still writes a (zero-row) file."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows), schema=DEAD_LETTER)
    return write_table(table.select(DEAD_LETTER.names), path, DEAD_LETTER)


def data_table(folder: str | os.PathLike[str], name: str) -> Path | str:
    """Table `name` of a prepared data folder: `name.parquet` (as `data prepare` writes it)
    or the shard folder `name/` (as `data synth` writes interactions). A folder on an
    object store gives the table's URL."""
    for candidate in (storage.join(folder, f"{name}.parquet"), storage.join(folder, name)):
        if storage.exists(candidate):
            return candidate if storage.is_remote(candidate) else Path(candidate)
    raise FileNotFoundError(
        f"{folder}: holds neither {name}.parquet nor {name}/; create the folder with "
        "`meta-embed data prepare` or `meta-embed data synth`, or pass the table's path"
    )


def unique_ids(ids: pa.Array | pa.ChunkedArray, what: str) -> pa.Array:
    """`ids` as one string array, refusing a null or an id listed twice (`what` names the
    table and column in the message)."""
    arr = (ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids).cast(pa.string())
    if arr.null_count:
        raise ValueError(f"{what}: {arr.null_count} rows have no id; every row needs one")
    if pc.count_distinct(arr).as_py() != len(arr):
        counts = pc.value_counts(arr)
        dupes = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
        raise ValueError(
            f"{what}: id {dupes[0].as_py()!r} appears more than once ({len(dupes)} ids repeat); "
            "ids must be unique: deduplicate the table"
        )
    return arr
