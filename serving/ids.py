"""Id -> row lookup without a Python object per id.

`IdIndex` keeps the ids as one Arrow string array (row order), the 64-bit hash
of every id sorted ascending, and the row of each sorted hash. A lookup hashes the
query, binary-searches the sorted hashes (`np.searchsorted`) and verifies the id at the
candidate row, so a hash collision can never return another id's row. Memory is
about 12 bytes per id plus the id strings; 10M ids fit, and the arrays can be written
to disk and memory-mapped back (`save` / `open`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from meta_embed.tables import unique_ids

_SEED = 0xCBF29CE484222325
_K = 0x9E3779B97F4A7C15  # odd multiplier (golden ratio)
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # splitmix64 finalizer
_MASK = (1 << 64) - 1
_CHUNK = 1 << 20  # rows hashed at once (bounds the padded byte matrix)


def mapped(path: Path) -> np.ndarray:
    """A read-only memory map of a .npy file as a plain ndarray view: indexing a row is ~10x
    cheaper than through np.memmap's subclass machinery (the view keeps the map open)."""
    return np.load(path, mmap_mode="r").view(np.ndarray)


def hash_id(value: str) -> int:
    """64-bit hash of one id's UTF-8 bytes (equals `hash_ids` on that id).

    The bytes are read as little-endian 8-byte words (the last one zero-padded), each
    folded in with a multiply and a shift; the byte length seeds the state, and a
    splitmix64 finalizer mixes the result.
    """
    data = value.encode("utf-8", "surrogatepass")
    h = _SEED ^ len(data)
    for i in range(0, len(data), 8):
        h = ((h ^ int.from_bytes(data[i : i + 8], "little")) * _K) & _MASK
        h ^= h >> 29
    h ^= h >> 30
    h = (h * _M1) & _MASK
    h ^= h >> 27
    h = (h * _M2) & _MASK
    return h ^ (h >> 31)


def hash_ids(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """`hash_id` of every id (uint64), vectorized over the Arrow buffers in chunks of rows."""
    arr = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if arr.null_count:
        raise ValueError("ids contain nulls; every row needs an id")
    if arr.type not in (pa.string(), pa.large_string()):
        arr = arr.cast(pa.large_string())
    return np.concatenate(
        [_hash_chunk(arr.slice(s, _CHUNK)) for s in range(0, len(arr), _CHUNK)] or [np.zeros(0, np.uint64)]
    )


def _hash_chunk(arr: pa.Array) -> np.ndarray:
    n = len(arr)
    wide = arr.type == pa.large_string()
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64 if wide else np.int32)[
        arr.offset : arr.offset + n + 1
    ]
    offsets = offsets.astype(np.int64)
    data_buf = arr.buffers()[2]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    width = -(-int(lengths.max()) // 8) if n else 0  # words in the longest id
    padded = np.zeros((n, max(width, 1) * 8), dtype=np.uint8)  # (rows, bytes) zero-padded
    rows = np.repeat(np.arange(n), lengths)
    cols = np.arange(len(rows)) - np.repeat(offsets[:-1] - offsets[0], lengths)
    padded[rows, cols] = data[offsets[0] : offsets[-1]]
    words = padded.view("<u8")  # (rows, width) little-endian words
    nwords = -(-lengths // 8)
    perm = np.argsort(-nwords, kind="stable")  # longest first: word w touches a prefix of rows
    words, neg = words[perm], -nwords[perm]
    h = np.uint64(_SEED) ^ lengths[perm].astype(np.uint64)
    for w in range(width):
        m = int(np.searchsorted(neg, -w, side="left"))  # rows with more than w words
        x = (h[:m] ^ words[:m, w]) * np.uint64(_K)
        h[:m] = x ^ (x >> np.uint64(29))
    h ^= h >> np.uint64(30)
    h *= np.uint64(_M1)
    h ^= h >> np.uint64(27)
    h *= np.uint64(_M2)
    h ^= h >> np.uint64(31)
    out = np.empty(n, dtype=np.uint64)
    out[perm] = h
    return out


@dataclasses.dataclass(frozen=True)
class IdIndex:
    """Sorted 64-bit hashes of `ids` with the row of each; rows are positions in `ids`."""

    ids: pa.Array  # (n,) string, row order
    hashes: np.ndarray  # (n,) uint64, ascending
    order: np.ndarray  # (n,) int32/int64: row of hashes[k]

    @classmethod
    def build(cls, ids: pa.Array | pa.ChunkedArray, what: str = "ids") -> IdIndex:
        """Index `ids`; fails on nulls or on an id listed twice (naming it)."""
        arr = unique_ids(ids, what)
        hashes = hash_ids(arr)
        order = np.argsort(hashes, kind="stable").astype(np.int32 if len(arr) < 2**31 else np.int64)
        return cls(arr, hashes[order], order)

    def __len__(self) -> int:
        return len(self.ids)

    def find(self, value: str) -> int:
        """Row of one id, or -1."""
        h = np.uint64(hash_id(value))
        k = int(np.searchsorted(self.hashes, h, side="left"))
        while k < len(self.hashes) and self.hashes[k] == h:
            row = int(self.order[k])
            if self.ids[row].as_py() == value:
                return row
            k += 1
        return -1

    def find_many(self, values: list[str] | pa.Array) -> np.ndarray:
        """Rows (int64) of many ids, -1 where unknown; vectorized, verified against the ids."""
        query = values if isinstance(values, pa.Array) else pa.array(values, pa.string())
        if query.type != self.ids.type:
            query = query.cast(self.ids.type)
        if len(query) == 0 or len(self) == 0:
            return np.full(len(query), -1, dtype=np.int64)
        h = hash_ids(query)
        k = np.minimum(np.searchsorted(self.hashes, h, side="left"), len(self.hashes) - 1)
        rows = self.order[k].astype(np.int64)
        hit = self.hashes[k] == h
        same = pc.equal(self.ids.take(pa.array(rows)), query)
        hit &= same.fill_null(False).to_numpy(zero_copy_only=False)
        rows[~hit] = -1
        for i in np.flatnonzero(~hit & (self.hashes[k] == h)):  # collision: scan the equal range
            rows[i] = self.find(query[int(i)].as_py())
        return rows

    def save(self, directory: Path, prefix: str) -> None:
        """Write `{prefix}_ids.arrow`, `{prefix}_hashes.npy`, `{prefix}_order.npy` into `directory`."""
        with pa.OSFile(str(directory / f"{prefix}_ids.arrow"), "wb") as sink:
            table = pa.table({"id": self.ids})
            with pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table, max_chunksize=max(len(self.ids), 1))
        np.save(directory / f"{prefix}_hashes.npy", self.hashes)
        np.save(directory / f"{prefix}_order.npy", self.order)

    @classmethod
    def open(cls, directory: Path, prefix: str) -> IdIndex:
        """Memory-map an index written by `save` (no copy of the ids or arrays)."""
        source = pa.memory_map(str(directory / f"{prefix}_ids.arrow"), "r")
        column = pa.ipc.open_file(source).read_all().column("id")
        ids = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        hashes, order = mapped(directory / f"{prefix}_hashes.npy"), mapped(directory / f"{prefix}_order.npy")
        if not (len(ids) == len(hashes) == len(order)):
            raise ValueError(f"{directory}: {prefix} id files disagree in length; rebuild the indexes")
        return cls(ids, hashes, order)
