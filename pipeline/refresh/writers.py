"""The refresh job's writers: the snapshot's data files with their summaries
(`publishing.Shard`), the list of summaries the launcher finalizes from (`_shards.json`),
and the dead letters. They write through `meta_embed.storage`, with the launcher's
s3:// settings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from meta_embed import publishing, snapshot, storage
from pipeline.refresh.arrow import bucket_of
from pipeline.refresh.transforms import counter, ms_since


def write_parquet(table: pa.Table, path: str) -> bytes:
    """Write a Parquet file; returns the bytes written. Locally through Beam's FileSystems, a
    temp name then a rename; on an object store one PUT (`storage.write_bytes`), atomic by
    itself (Beam's S3 writer makes a multipart upload of every file: 10x slower here)."""
    data = publishing.parquet_bytes(table)
    if storage.is_remote(path):
        storage.write_bytes(path, data)
        return data
    tmp = f"{path}.tmp-{np.random.default_rng().integers(1 << 62):x}"
    with FileSystems.create(tmp) as out:
        out.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])
    return data


class StoreWriter(beam.DoFn):
    """A DoFn that writes through `meta_embed.storage`, with the launcher's s3:// settings
    (`storage.overrides`: Beam's --s3_* options do not reach its S3 filesystem on the
    local runner's workers)."""

    def __init__(self, s3: tuple[tuple[str, str], ...] = ()):
        self.s3 = s3

    def setup(self) -> None:
        storage.configure(**dict(self.s3))


class WriteParts(StoreWriter):
    """(bucket, rows) -> DIR/part-BUCKET.parquet, and its `publishing.Shard` summary (as a dict);
    a retried bucket overwrites its own file. The summary counts rows outside the bucket."""

    def __init__(self, directory: str, meta: snapshot.SnapshotMeta, buckets: int, s3: tuple = ()):
        super().__init__(s3)
        self.directory, self.meta, self.buckets = directory, meta, buckets

    def process(self, element: tuple[int, pa.Table]) -> Iterable[dict]:
        bucket, rows = element
        if rows.num_rows:
            start = time.perf_counter()
            name = f"part-{bucket:05d}.parquet"
            data = write_parquet(rows, storage.join(self.directory, name))
            misplaced = int((bucket_of(rows.column("user_id"), self.buckets) != bucket).sum())
            yield publishing.summarize(rows, name, data, self.meta, misplaced).to_dict()
            counter("rows_written").inc(rows.num_rows)
            counter("write_ms").inc(ms_since(start))


class WriteShardList(StoreWriter):
    """All writers' summaries (one list) -> DIR/_shards.json, what the launcher finalizes from."""

    def __init__(self, path: str, s3: tuple = ()):
        super().__init__(s3)
        self.path = path

    def process(self, shards: list[dict]) -> Iterable[str]:
        storage.write_bytes(self.path, json.dumps(sorted(shards, key=lambda s: s["file"])).encode())
        yield self.path


class WriteDeadLetters(StoreWriter):
    def __init__(self, directory: str, s3: tuple = ()):
        super().__init__(s3)
        self.directory = directory

    def process(self, element: tuple[str, pa.Table]) -> Iterable[str]:
        name, rows = element
        path = storage.join(self.directory, f"dl-{name}.parquet")
        write_parquet(rows, path)
        yield path
