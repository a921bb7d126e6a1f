"""The file-backed exchange of the refresh job: spill files round-trip and stay bounded."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.refresh.arrow import pack
from pipeline.refresh.shuffle import BucketBuffer, read_spilled, table_of


def table(k: int) -> pa.Table:
    return pa.table({"user_id": [f"u{k}"] * 3, "ts": np.arange(3, dtype=np.int64) + k})


def test_spill_writes_when_full_and_on_flush(tmp_path):
    spill = BucketBuffer(str(tmp_path), limit=3 * table(0).nbytes)
    written = []
    for k in range(7):
        written += spill.add(k % 2, table(k))
    assert len(written) == 4  # two flushes of buckets 0 and 1 (after 3 and 6 tables)
    written += spill.flush()
    assert sorted(b for b, _ in written) == [0, 0, 0, 1, 1]
    got = {k: [] for k in (0, 1)}
    for bucket, ref in written:
        spilled = table_of(ref)  # one range per bucket and flush: the bucket's tables packed once
        got[bucket] += spilled.column("ts").to_pylist()[::3]
    assert len({ref.rpartition("#")[0] for _, ref in written}) == 3  # one file per flush
    assert sorted(got[0]) == [0, 2, 4, 6] and sorted(got[1]) == [1, 3, 5]
    assert table_of(pack(table(9))).equals(table(9))


def test_truncated_spill_file_is_reported(tmp_path):
    [(_, ref)] = BucketBuffer(str(tmp_path), limit=1).add(0, table(1))
    path = ref.rpartition("#")[0]
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-5])
    with pytest.raises(ValueError, match="truncated shuffle file"):
        read_spilled(ref)


def test_without_a_directory_each_bucket_is_emitted_once_as_packed_bytes():
    buffer = BucketBuffer(limit=1 << 30)
    assert all(buffer.add(k % 2, table(k)) == [] for k in range(5))
    out = dict(buffer.flush())
    assert sorted(out) == [0, 1] and all(isinstance(v, bytes) for v in out.values())
    assert table_of(out[0]).column("ts").to_pylist()[::3] == [0, 2, 4] and buffer.flush() == []
