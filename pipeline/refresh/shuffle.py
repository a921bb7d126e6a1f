"""A file-backed exchange of event tables between the read and merge stages, for local runners.

The local FnApiRunner holds a shuffle in its own process, decoded and re-encoded (two
copies at once, plus allocator slack): at 1M users that is about 1.2 GB of a 4 GB
budget. With `Spill`, each read bundle buffers its bucket tables and, once `limit` bytes
are buffered (and when the bundle ends), writes them all to one file, each bucket's
tables packed once and uncompressed (compressing many small tables one by one cost as
much as reading them). Only (bucket, reference) pairs go through Beam's GroupByKey, a
reference being `PATH#OFFSET:LENGTH`: the bucket's byte range in the file. One file per
flush, not per bucket and flush: the files grow with the events, not with events x
buckets (at 3M users that was tens of thousands of files). Files of a failed or retried
bundle are never referenced (Beam drops that bundle's output) and go away with the
staging directory. Distributed runners keep Beam's own shuffle.
"""

from __future__ import annotations

import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.refresh.arrow import pack, unpack

SHUFFLE_DIR = "_shuffle"  # under the run's staging directory


class Spill:
    """Buffers event tables per bucket; writes them to one file when `limit` bytes are buffered."""

    def __init__(self, directory: str, limit: int = 64 << 20):
        self.directory, self.limit = directory, limit
        self._parts: dict[int, list[pa.Table]] = {}
        self._size, self._flushes = 0, 0

    def add(self, bucket: int, table: pa.Table) -> list[tuple[int, str]]:
        """Buffer one table; returns the (bucket, path) of files written, if this filled the buffer."""
        self._parts.setdefault(bucket, []).append(table)
        self._size += table.nbytes
        return self.flush() if self._size >= self.limit else []

    def flush(self) -> list[tuple[int, str]]:
        """Write every buffered bucket into one file; returns (bucket, reference) pairs."""
        path = FileSystems.join(self.directory, f"{self._flushes:05d}.bin")
        out, offset = [], 0
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            for bucket, tables in sorted(self._parts.items()):
                blob = pack(pa.concat_tables(tables).combine_chunks(), compression=None)  # a local file
                fh.write(blob)
                out.append((bucket, f"{path}#{offset}:{len(blob)}"))
                offset += len(blob)
        self._parts, self._size = {}, 0
        self._flushes += 1
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


def tables_of(ref: bytes | str) -> list[pa.Table]:
    """The event tables behind a shuffled value: packed bytes (Beam shuffle) or a spill reference."""
    return [unpack(ref if isinstance(ref, bytes) else read_spilled(ref))]
