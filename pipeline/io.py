"""Parquet input/output held to the explicit schemas of `meta_embed.schemas`: reading
files, shard folders or globs with the schema checked up front and corrupt files named,
writing with an exact schema, and the dead-letter table.

Every other stage reads through `read_table`; record validation lives in
`pipeline.validate`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from meta_embed.schemas import DEAD_LETTER, SchemaError, check_schema

class CorruptInputError(ValueError):
    """A file exists but cannot be read as Parquet (truncated, corrupt or not Parquet)."""


def list_parquet_files(path: str | os.PathLike[str]) -> list[str]:
    """The Parquet files behind `path`: one file, every `*.parquet` under a directory
    (recursively, skipping names starting with '.' or '_'), or the matches of a glob."""
    text = os.fspath(path)
    if any(ch in text for ch in "*?["):
        files = sorted(f for f in glob.glob(text, recursive=True) if os.path.isfile(f))
    elif os.path.isdir(text):
        files = sorted(
            str(p) for p in Path(text).rglob("*.parquet")
            if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(text).parts)
        )
    elif os.path.isfile(text):
        files = [text]
    else:
        raise FileNotFoundError(f"{text}: no such file or directory; "
                                f"pass a Parquet file, a directory of shards or a glob")
    if not files:
        raise FileNotFoundError(f"{text}: matched no Parquet files (expected *.parquet shards)")
    return files


def _open(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        raise CorruptInputError(
            f"{path}: not a readable Parquet file ({e}); it may be truncated or still being written. "
            f"Re-create it from its source, or remove it from the input."
        ) from e


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
        check_schema(_open(f).schema_arrow, schema, f)
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f, columns=list(columns) if columns else None, filters=filter))
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
            raise CorruptInputError(
                f"{f}: Parquet data could not be decoded ({e}); re-create the file from its source."
            ) from e
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
                f"validate the rows first (pipeline.validate.validate_interactions)"
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


def interactions_path(data_dir: str | os.PathLike[str]) -> Path:
    """The interactions of a data folder: `interactions.parquet` as written by `prepare`,
    or the shard folder `interactions/` as written by `synth` (pass it to `read_table`)."""
    base = Path(data_dir)
    for candidate in (base / "interactions.parquet", base / "interactions"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{base}: holds neither interactions.parquet nor interactions/; "
                            f"create it with `meta-embed data prepare` or `meta-embed data synth`")
