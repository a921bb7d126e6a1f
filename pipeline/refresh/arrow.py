"""Columnar building blocks of the refresh job: stable user buckets, the per-user
most-recent-N selection, and the compact event table the pipeline shuffles.

Everything here works on whole Arrow columns with NumPy; no Python object exists per
event. The Beam transforms in `pipeline.refresh.transforms` only call these.

The event table (`event_schema`) holds what adaptation needs and nothing else:
user_id, item_row (row of the item in the checkpoint's item feature table), ts (µs
since the epoch), y (the training target) and any context columns of the spec.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc  # noqa: F401  (pa.ipc)

_P = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime, used as the polynomial base
_MIX = (np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))  # murmur3 fmix64 constants

EVENT_COLUMNS = ("user_id", "item_row", "ts", "y")


def event_schema(context: pa.Schema | None = None) -> pa.Schema:
    fields = [
        pa.field("user_id", pa.string()),
        pa.field("item_row", pa.int32()),
        pa.field("ts", pa.int64()),
        pa.field("y", pa.float32()),
    ]
    return pa.schema(fields + (list(context) if context is not None else []))


def _string_hash(values: pa.Array) -> np.ndarray:
    """A 64-bit hash of every string, computed over the raw UTF-8 bytes with NumPy.

    h(s) = mix(sum_j s[j] * P^j + len(s)) mod 2^64; stable across processes and machines
    (unlike Python's `hash`), so a user always lands in the same bucket.
    """
    arr = values.cast(pa.string())
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + n + 1].astype(
        np.int64
    )
    data = (
        np.frombuffer(arr.buffers()[2], dtype=np.uint8)
        if arr.buffers()[2] is not None
        else np.zeros(0, np.uint8)
    )
    data = data[offsets[0] : offsets[-1]].astype(np.uint64)
    starts, lengths = offsets[:-1] - offsets[0], np.diff(offsets)
    pos = np.arange(len(data), dtype=np.int64) - np.repeat(starts, lengths)
    with np.errstate(over="ignore"):
        powers = np.cumprod(
            np.concatenate([[np.uint64(1)], np.full(max(int(lengths.max()), 1), _P)])
        )  # P^0, P^1..
        sums = np.concatenate([[np.uint64(0)], np.cumsum(data * powers[pos], dtype=np.uint64)])
        h = sums[starts + lengths] - sums[starts] + lengths.astype(np.uint64)
        for mix in _MIX:
            h ^= h >> np.uint64(33)
            h *= mix
        h ^= h >> np.uint64(33)
    return h


def bucket_of(user_ids: pa.Array | pa.ChunkedArray, buckets: int) -> np.ndarray:
    """Bucket (0..buckets-1) of every user id; each distinct id is hashed once."""
    if isinstance(user_ids, pa.ChunkedArray):
        user_ids = user_ids.combine_chunks()
    if len(user_ids) == 0:
        return np.zeros(0, dtype=np.int64)
    enc = pc.dictionary_encode(user_ids.cast(pa.string()))
    per_value = (_string_hash(enc.dictionary) % np.uint64(buckets)).astype(np.int64)
    return per_value[enc.indices.to_numpy(zero_copy_only=False)]


def split_by_bucket(table: pa.Table, buckets: int, key: str = "user_id") -> list[tuple[int, pa.Table]]:
    """(bucket, rows of that bucket) for every non-empty bucket, in bucket order: the rows are
    gathered once in bucket order and each part is a slice of that copy."""
    if table.num_rows == 0:
        return []
    b = bucket_of(table.column(key), buckets)
    order = np.argsort(b, kind="stable")
    rows = table.take(pa.array(order))
    sorted_b = b[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(sorted_b)) + 1])
    ends = np.append(starts[1:], len(order))
    return [(int(sorted_b[lo]), rows.slice(lo, hi - lo)) for lo, hi in zip(starts, ends)]


def _same_as_previous(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(rows,) bool: row k equals row k-1 in this column (nulls equal nulls); row 0 False."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(col)
    out = np.zeros(n, dtype=bool)
    if n > 1:
        a, b = col.slice(1), col.slice(0, n - 1)
        eq = pc.fill_null(pc.equal(a, b), False).to_numpy(zero_copy_only=False)
        both_null = np.asarray(a.is_null()) & np.asarray(b.is_null())
        out[1:] = eq | both_null
    return out


def pack(table: pa.Table, compression: str | None = "zstd") -> bytes:
    """Arrow IPC stream, zstd by default: what crosses the shuffle (about 12 bytes per event).

    Shuffled values are bytes rather than tables so that a runner that decodes values
    while grouping (the local FnApiRunner does) holds them compressed. Spill files on a
    local disk are written uncompressed (`compression=None`): zstd cost as much CPU as
    reading the events, for a third of the bytes.
    """
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def unpack(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def _tie_breakers(events: pa.Table) -> list[str]:
    """Columns other than user_id/ts that order and distinguish events (nested ones cannot)."""
    return [
        f.name for f in events.schema if f.name not in ("user_id", "ts") and not pa.types.is_nested(f.type)
    ]


def top_n(events: pa.Table, n: int) -> pa.Table:
    """Each user's most recent `n` distinct events, sorted by user then newest first.

    Exact duplicates (every column equal) count once, and ties in `ts` are broken by
    the other columns, so the result depends only on the set of events, never on
    their order or on how they were split into batches.
    """
    return top_n_counted(events, n)[0]


def top_n_counted(events: pa.Table, n: int) -> tuple[pa.Table, int]:
    """`top_n`, and how many exact duplicates it dropped."""
    if events.num_rows == 0:
        return events, 0
    keys = [("user_id", "ascending"), ("ts", "descending")] + [
        (c, "ascending") for c in _tie_breakers(events)
    ]
    rows = events.sort_by(keys)
    same = np.ones(rows.num_rows, dtype=bool)
    for name in ["user_id", "ts", *_tie_breakers(rows)]:
        same &= _same_as_previous(rows.column(name))
    rows = rows.filter(pa.array(~same))
    new_user = ~_same_as_previous(rows.column("user_id"))
    starts = np.flatnonzero(new_user)
    rank = np.arange(rows.num_rows) - starts[np.cumsum(new_user) - 1]  # position within the user, newest = 0
    return (rows if rank.max() < n else rows.filter(pa.array(rank < n))), int(same.sum())


def user_runs(events: pa.Table) -> tuple[pa.Array, np.ndarray]:
    """For an event table sorted by user: the distinct users in order and the (users + 1,) offsets."""
    new_user = ~_same_as_previous(events.column("user_id"))
    starts = np.flatnonzero(new_user)
    ids = events.column("user_id").combine_chunks()
    users = ids.take(pa.array(starts)) if len(starts) else pa.array([], pa.string())
    return users, np.append(starts, events.num_rows).astype(np.int64)


def oldest_first(events: pa.Table) -> pa.Table:
    """Sort an event table by user, then time ascending (the order the inner loop sees)."""
    keys = [("user_id", "ascending"), ("ts", "ascending")]
    return events.sort_by(keys + [(c, "ascending") for c in _tie_breakers(events)])
