"""IdIndex: vectorized and scalar hashes agree, lookups are verified, files round-trip."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from serving.ids import IdIndex, hash_id, hash_ids

IDS = ["", "a", "ab", "ba", "héllo", "user-123", "x" * 300, "日本"]


def test_vectorized_hash_equals_scalar_hash() -> None:
    hashes = hash_ids(pa.array(IDS))
    assert [int(h) for h in hashes] == [hash_id(s) for s in IDS]
    assert len(set(hashes.tolist())) == len(IDS)
    assert hash_id("a") != hash_id("a\x00")  # the length is part of the hash, not only the padded words
    assert [int(h) for h in hash_ids(pa.array(IDS, pa.large_string()))] == [hash_id(s) for s in IDS]
    chunked = pa.chunked_array([pa.array(IDS[:3]), pa.array(IDS[3:])])
    assert [int(h) for h in hash_ids(chunked)] == [hash_id(s) for s in IDS]
    assert [int(h) for h in hash_ids(pa.array(IDS).slice(2))] == [
        hash_id(s) for s in IDS[2:]
    ]  # sliced buffers


def test_find_and_find_many_return_rows_and_minus_one() -> None:
    ids = pa.array([f"u{i}" for i in range(1000)])
    index = IdIndex.build(ids)
    assert index.find("u0") == 0 and index.find("u999") == 999 and index.find("u1000") == -1
    rows = index.find_many(["u5", "nope", "u999", "u5", ""])
    assert rows.tolist() == [5, -1, 999, 5, -1]
    assert index.find_many([]).tolist() == []


def test_hash_collision_is_resolved_by_comparing_ids() -> None:
    ids = pa.array(["a", "b", "c"])
    same = np.full(3, 7, dtype=np.uint64)  # pretend all three ids hash alike
    index = IdIndex(ids, same, np.arange(3))
    index_hash = IdIndex(ids, np.full(3, hash_id("b"), dtype=np.uint64), np.arange(3))
    assert index_hash.find("b") == 1 and index_hash.find("c") == -1
    assert index_hash.find_many(["c", "b", "a"]).tolist() == [-1, 1, -1]  # hashes of c and a differ
    assert index.find("a") == -1  # the real hash of "a" is not 7


def test_duplicate_ids_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'u1' appears more than once"):
        IdIndex.build(pa.array(["u0", "u1", "u1"]), "users")


def test_save_and_memory_mapped_open_round_trip(tmp_path) -> None:
    index = IdIndex.build(pa.array(IDS))
    index.save(tmp_path, "t")
    opened = IdIndex.open(tmp_path, "t")
    assert isinstance(opened.hashes.base, np.memmap)  # a view of the map, not a copy
    assert [opened.find(s) for s in IDS] == list(range(len(IDS)))
    assert opened.find_many(IDS + ["zz"]).tolist() == list(range(len(IDS))) + [-1]
