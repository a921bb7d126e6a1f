"""How a read bundle's rows reach the join: `BucketBuffer`.

A read DoFn adds each batch it read (unsplit) to its bundle's buffer; once `limit` bytes
are buffered, and when the bundle ends, the buffered rows are split by user bucket at
once and each bucket is emitted once. Splitting every batch on its own made pieces that
grow as batches x buckets, both of which grow with the users: at 3M users the users
table (733 row groups) came to a million pieces of three rows, 2.8 GB per worker; a
flush now makes one piece per bucket.

Two ways out:
- Beam's shuffle (distributed runners): (bucket, Arrow IPC bytes with zstd).
- Spill files (local runners, `directory` set): the local FnApiRunner holds a shuffle in
  its own process, decoded and re-encoded (at 1M users about 1.2 GB of a 4 GB budget).
  A flush writes one file, each bucket's table packed uncompressed (zstd cost as much CPU
  as reading the events, for a local file), and emits (bucket, `PATH#OFFSET:LENGTH`): the
  bucket's byte range. Files of a failed or retried bundle are never referenced (Beam
  drops that bundle's output) and go away with the staging directory.
"""

from __future__ import annotations

import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.refresh.arrow import pack, split_by_bucket, unpack

SHUFFLE_DIR = "_shuffle"  # under the run's staging directory


class BucketBuffer:
    """Buffers tables with a user column `key`; emits one value per user bucket once `limit`
    bytes are buffered and on `flush`: packed bytes, or a spill reference when `directory`
    is set."""

    def __init__(
        self, buckets: int, key: str = "user_id", directory: str | None = None, limit: int = 64 << 20
    ):
        self.buckets, self.key, self.directory, self.limit = buckets, key, directory, limit
        self._tables: list[pa.Table] = []
        self._size, self._flushes = 0, 0

    def add(self, table: pa.Table) -> list[tuple[int, bytes | str]]:
        """Buffer one table; returns what a flush emitted, if this filled the buffer."""
        if table.num_rows:
            self._tables.append(table)
            self._size += table.nbytes
        return self.flush() if self._size >= self.limit else []

    def flush(self) -> list[tuple[int, bytes | str]]:
        """Split the buffered rows by bucket and emit each bucket once."""
        if not self._tables:
            return []
        merged = split_by_bucket(pa.concat_tables(self._tables).combine_chunks(), self.buckets, self.key)
        self._tables, self._size = [], 0
        if self.directory is None:
            return [(b, pack(table)) for b, table in merged]
        path = FileSystems.join(self.directory, f"{self._flushes:05d}.bin")
        self._flushes += 1
        out, offset = [], 0
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            for bucket, table in merged:
                blob = pack(table, compression=None)  # a local file
                fh.write(blob)
                out.append((bucket, f"{path}#{offset}:{len(blob)}"))
                offset += len(blob)
        return out


def read_spilled(ref: str) -> bytes:
    """The packed table a reference `PATH#OFFSET:LENGTH` names."""
    path, _, span = ref.rpartition("#")
    offset, length = (int(x) for x in span.split(":"))
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        fh.seek(offset)
        data = fh.read(length)
    if len(data) != length:
        raise ValueError(
            f"{path}: truncated shuffle file (bytes {offset}-{offset + length} needed, {len(data)} there); "
            "re-run the job"
        )
    return data


def table_of(ref: bytes | str) -> pa.Table:
    """The table behind a shuffled value: packed bytes (Beam's shuffle) or a spill reference."""
    return unpack(ref if isinstance(ref, bytes) else read_spilled(ref))
