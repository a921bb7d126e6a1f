"""Input discovery for the refresh job: list the Parquet files behind a path, check
every file's schema before any work starts, cut the files into row-group chunks the
pipeline reads in parallel, and fingerprint the inputs for the manifest.

Local paths go through `meta_embed.tables`; paths with a scheme
(gs://, s3://, hdfs://) through Beam's `FileSystems`, so workers on a cluster read the
same files the launcher checked.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from meta_embed import tables
from meta_embed.features import FeatureSpec
from meta_embed.tables import INTERACTIONS, ITEMS, USERS, SchemaError, check_schema, list_parquet_files


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One row group of one input file: the unit of parallel reading."""

    path: str
    row_group: int
    row_offset: int  # rows of the file before this row group (for dead-letter row numbers)
    rows: int


def _remote(path: str) -> bool:
    return "://" in path


def list_files(path: str) -> list[str]:
    """The Parquet files of a file, directory (a prefix, with or without its `/`) or glob, sorted."""
    if not _remote(path):
        return list_parquet_files(path)
    pattern = path
    if not any(ch in path for ch in "*?[") and not (path.endswith(".parquet") and FileSystems.exists(path)):
        pattern = path.rstrip("/") + "/*.parquet"  # a folder of shards
    found = sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)
    if not found:
        raise FileNotFoundError(f"{path}: matched no Parquet files (expected *.parquet shards)")
    return found


def open_parquet(path: str) -> pq.ParquetFile:
    """Open a Parquet file, local or on an object store (through Beam's FileSystems)."""
    source = FileSystems.open(path, compression_type="uncompressed") if _remote(path) else path
    return tables.open_parquet(source, path)


def expected_schema(base: pa.Schema, key: str, columns: Sequence[str]) -> pa.Schema:
    """The columns a stage needs: `key` and `columns`, typed as in `base` where it lists them."""
    fields = []
    for name in dict.fromkeys([key, *columns]):  # the key may also be a feature column
        idx = base.get_field_index(name)
        fields.append(base.field(idx) if idx >= 0 else pa.field(name, pa.null()))
    return pa.schema(fields)


def check_file(path: str, schema: pa.Schema) -> pq.ParquetFile:
    """Open `path` and check its schema; a null-typed expected field only has to be present."""
    pf = open_parquet(path)
    actual = pf.schema_arrow
    typed = pa.schema([f for f in schema if not pa.types.is_null(f.type)])
    check_schema(actual, typed, path)
    for field in schema:
        if actual.get_field_index(field.name) < 0:
            raise SchemaError(
                f"{path}: missing column '{field.name}'; found columns {actual.names}. "
                "Fix the input or the feature spec."
            )
    return pf


def chunks(files: Sequence[str], schema: pa.Schema) -> list[Chunk]:
    """Check every file's schema (all of them, before any data is read) and list its row groups."""
    out = []
    for path in files:
        meta = check_file(path, schema).metadata
        offset = 0
        for rg in range(meta.num_row_groups):
            rows = meta.row_group(rg).num_rows
            out.append(Chunk(path, rg, offset, rows))
            offset += rows
    return out


def interaction_schema(spec: FeatureSpec) -> pa.Schema:
    return pa.schema(list(INTERACTIONS) + [pa.field(c.name, pa.null()) for c in spec.context])


def user_schema(spec: FeatureSpec) -> pa.Schema:
    return expected_schema(USERS, spec.user_key, [c.name for c in spec.user])


def item_schema(spec: FeatureSpec) -> pa.Schema:
    return expected_schema(ITEMS, spec.item_key, [c.name for c in spec.item])


def read_all(files: Sequence[str], columns: Sequence[str]) -> pa.Table:
    """Read `columns` of every file into one table (for small tables such as items)."""
    tables = []
    for path in files:
        try:
            tables.append(open_parquet(path).read(columns=list(columns)))
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as err:
            raise tables.decode_error(path, err) from err
    return pa.concat_tables(tables, promote_options="default")


def first_event_time(files: Sequence[str]) -> dt.datetime | None:
    """The earliest `ts` of the interaction files, from the row groups' statistics (reading
    the column only where a row group has none); None when there are no events."""
    first = None
    for path in files:
        pf = open_parquet(path)
        col = pf.schema_arrow.get_field_index("ts")
        for rg in range(pf.metadata.num_row_groups):
            group = pf.metadata.row_group(rg)
            if group.num_rows == 0:
                continue
            stats = group.column(col).statistics
            if stats is not None and stats.has_min_max:
                low = stats.min
            else:
                low = pc.min(pf.read_row_group(rg, columns=["ts"]).column("ts")).as_py()
            if low is not None and (first is None or low < first):
                first = low
    return first


def fingerprint(files: Sequence[str]) -> str:
    """A hash of the files' names, sizes and modification times (cheap; changes when a file does)."""
    h = hashlib.sha256()
    for path in sorted(files):
        if _remote(path):
            meta = FileSystems.match([path])[0].metadata_list[0]
            size, mtime = meta.size_in_bytes, meta.last_updated_in_seconds
        else:
            st = os.stat(path)
            size, mtime, path = st.st_size, st.st_mtime_ns / 1e9, os.path.abspath(path)
        h.update(f"{path}\0{size}\0{mtime:.6f}\n".encode())
    return h.hexdigest()[:16]
