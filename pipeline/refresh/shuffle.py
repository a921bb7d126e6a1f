"""How a read bundle's per-bucket tables reach the join: `BucketBuffer`.

A read DoFn adds each (bucket, table) piece to its bundle's buffer; once `limit` bytes
are buffered, and when the bundle ends, every bucket's pieces are concatenated and
emitted once. The pieces grow as row groups x buckets (both grow with the users), so
packing or writing each piece alone grew as users squared; a flush emits one value per
bucket instead.

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

from pipeline.refresh.arrow import pack, unpack

SHUFFLE_DIR = "_shuffle"  # under the run's staging directory


class BucketBuffer:
    """Buffers tables per bucket; emits one value per bucket when `limit` bytes are buffered
    and on `flush`: packed bytes, or a spill-file reference when `directory` is set."""

    def __init__(self, directory: str | None = None, limit: int = 64 << 20):
        self.directory, self.limit = directory, limit
        self._parts: dict[int, list[pa.Table]] = {}
        self._size, self._flushes = 0, 0

    def add(self, bucket: int, table: pa.Table) -> list[tuple[int, bytes | str]]:
        """Buffer one table; returns what a flush emitted, if this filled the buffer."""
        self._parts.setdefault(bucket, []).append(table)
        self._size += table.nbytes
        return self.flush() if self._size >= self.limit else []

    def flush(self) -> list[tuple[int, bytes | str]]:
        """Emit every buffered bucket once: (bucket, packed bytes) or (bucket, spill reference)."""
        merged = [(b, pa.concat_tables(tables).combine_chunks()) for b, tables in sorted(self._parts.items())]
        self._parts, self._size = {}, 0
        if not merged:
            return []
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
