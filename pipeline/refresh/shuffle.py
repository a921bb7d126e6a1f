"""A file-backed exchange of event tables between the read and merge stages, for local runners.

The local FnApiRunner holds a shuffle in its own process, decoded and re-encoded (two
copies at once, plus allocator slack): at 1M users that is about 1.2 GB of a 4 GB
budget. With `Spill`, each read bundle buffers its bucket tables and writes them to
files under the run's staging directory once `limit` bytes are buffered (and when the
bundle ends), each bucket's tables packed once per file, uncompressed (compressing
many small tables one by one cost as much as reading them); only (bucket, path) pairs
go through Beam's GroupByKey. Files
of a failed or retried bundle are never referenced (Beam drops that bundle's output)
and go away with the staging directory. Distributed runners keep Beam's own shuffle.

File format: a sequence of (8-byte little-endian length, packed table) records.
"""

from __future__ import annotations

import struct

import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.refresh.arrow import pack, unpack

_LEN = struct.Struct("<Q")
SHUFFLE_DIR = "_shuffle"  # under the run's staging directory


class Spill:
    """Buffers event tables per bucket; writes one file per bucket when `limit` bytes are buffered."""

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
        """Write every buffered bucket to its own file, packed once; returns (bucket, path) pairs."""
        out = []
        for bucket, tables in sorted(self._parts.items()):
            path = FileSystems.join(self.directory, f"{self._flushes:05d}-{bucket:05d}.bin")
            blob = pack(pa.concat_tables(tables).combine_chunks(), compression=None)  # a local file
            with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
                fh.write(_LEN.pack(len(blob)))
                fh.write(blob)
            out.append((bucket, path))
        self._parts, self._size = {}, 0
        self._flushes += 1
        return out


def read_spilled(path: str) -> list[bytes]:
    """The packed tables of one spill file."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        data = fh.read()
    blobs, pos = [], 0
    while pos < len(data):
        (n,) = _LEN.unpack_from(data, pos)
        if pos + _LEN.size + n > len(data):
            raise ValueError(
                f"{path}: truncated shuffle file (record at byte {pos} needs {n} bytes); re-run the job"
            )
        blobs.append(data[pos + _LEN.size : pos + _LEN.size + n])
        pos += _LEN.size + n
    return blobs


def tables_of(ref: bytes | str) -> list[pa.Table]:
    """The event tables behind a shuffled value: packed bytes (Beam shuffle) or a spill file path."""
    if isinstance(ref, bytes):
        return [unpack(ref)]
    return [unpack(blob) for blob in read_spilled(ref)]
