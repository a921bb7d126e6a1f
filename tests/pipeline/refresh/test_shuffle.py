"""The file-backed exchange of the refresh job: spill files round-trip and stay bounded."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.refresh.arrow import bucket_of, pack
from pipeline.refresh.shuffle import BucketBuffer, read_spilled, table_of


def table(k: int) -> pa.Table:
    """Three rows of user u{k}, ts k, k+1, k+2."""
    return pa.table({"user_id": [f"u{k}"] * 3, "ts": np.arange(3, dtype=np.int64) + k})


def test_spill_writes_one_file_per_flush_and_one_range_per_bucket(tmp_path):
    buffer = BucketBuffer(2, directory=str(tmp_path), limit=3 * table(0).nbytes)
    written = []
    for k in range(7):
        written += buffer.add(table(k))
    written += buffer.flush()
    assert (
        len({ref.rpartition("#")[0] for _, ref in written}) == 3
    )  # flushes after 3 and 6 tables, and at the end
    got: dict[int, list[int]] = {0: [], 1: []}
    for bucket, ref in written:
        rows = table_of(ref)
        assert set(bucket_of(rows.column("user_id"), 2).tolist()) == {bucket}  # only this bucket's rows
        got[bucket] += rows.column("ts").to_pylist()
    everything = sorted(t for k in range(7) for t in table(k).column("ts").to_pylist())
    assert sorted(got[0] + got[1]) == everything
    assert table_of(pack(table(9))).equals(table(9))


def test_without_a_directory_each_bucket_is_emitted_once_per_flush_as_packed_bytes():
    buffer = BucketBuffer(3, limit=1 << 30)
    assert all(buffer.add(table(k)) == [] for k in range(30))
    out = buffer.flush()
    assert len(out) == len({b for b, _ in out}) <= 3 and all(isinstance(v, bytes) for _, v in out)
    assert sum(table_of(v).num_rows for _, v in out) == 90 and buffer.flush() == []


def test_truncated_spill_file_is_reported(tmp_path):
    [(_, ref)] = BucketBuffer(1, directory=str(tmp_path), limit=1).add(table(1))
    path = ref.rpartition("#")[0]
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-5])
    with pytest.raises(ValueError, match="truncated shuffle file"):
        read_spilled(ref)
