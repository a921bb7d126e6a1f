"""Feature spec and encoding: stable hashing, vocabularies, bags, buckets, JSON round trip."""

from __future__ import annotations

import dataclasses
import hashlib

import pyarrow as pa
import pytest
import torch

from meta_embed.features import (
    Column,
    FeatureSpec,
    encode,
    encode_column,
    fit_spec,
    movielens_template,
    stable_hash,
)
from meta_embed.model import FeatureEmbedder


def test_hash_is_blake2b_and_stable_across_runs():
    # blake2b(b"abc", digest_size=8) = d8bb14d833d59559 (RFC 7693 family); little-endian % 1023 + 1 = 920.
    assert hashlib.blake2b(b"abc", digest_size=8).hexdigest() == "d8bb14d833d59559"
    assert stable_hash(["abc"], 1024).tolist() == [920]
    col = Column("zip", "hash", buckets=1024)
    encoded = encode_column(pa.array(["abc", None, "abc", "user-42"]), col)
    assert encoded.tolist() == [920, 0, 920, 910]  # null -> 0, equal strings -> equal buckets


def test_vocab_maps_out_of_vocabulary_and_missing_to_zero():
    col = Column("gender", "vocab", vocab=("F", "M"))
    assert encode_column(pa.array(["M", "F", "X", None]), col).tolist() == [2, 1, 0, 0]
    assert col.cardinality == 3


def test_bags_encode_padded_and_pool_to_the_mean_of_present_values():
    col = Column("genres", "bag", dim=3, vocab=("Action", "Comedy", "Drama"))
    values = pa.array([["Drama", "Action"], [], None, ["Unknown", "Comedy"]], pa.list_(pa.string()))
    idx = encode_column(values, col)
    assert idx.tolist() == [[3, 1], [0, 0], [0, 0], [0, 2]]
    embedder = FeatureEmbedder((col,))
    table = embedder.tables["genres"].weight.detach()
    pooled = embedder({"genres": idx}).detach()
    torch.testing.assert_close(pooled[0], (table[3] + table[1]) / 2)
    torch.testing.assert_close(pooled[1], torch.zeros(3))  # empty bag -> zero vector
    torch.testing.assert_close(pooled[3], table[2])  # unknown values are not averaged in


def test_each_bucket_boundary_opens_a_new_bucket():
    col = Column("age", "bucket", boundaries=(18, 25))
    values = pa.array([5, 18, 20, 25, 90, None], pa.int32())
    # 0 = missing; 1 = (-inf, 18); 2 = [18, 25); 3 = [25, inf)
    assert encode_column(values, col).tolist() == [1, 2, 2, 3, 3, 0]
    assert col.cardinality == 4


def test_spec_json_round_trip_and_hash_tracks_vocabularies():
    users = pa.table(
        {"age": pa.array([20], pa.int32()), "gender": ["F"], "occupation": ["doctor"], "zip_prefix": ["123"]}
    )
    items = pa.table(
        {"item_id": ["i1"], "genres": pa.array([["Drama"]]), "year": pa.array([1990], pa.int32())}
    )
    spec = fit_spec(movielens_template(), users, items)
    again = FeatureSpec.from_json(spec.to_json())
    assert again == spec and again.hash == spec.hash
    changed = dataclasses.replace(
        spec,
        user=tuple(
            dataclasses.replace(c, vocab=c.vocab + ("M",)) if c.name == "gender" else c for c in spec.user
        ),
    )
    assert changed.hash != spec.hash


def test_missing_feature_column_names_the_source_and_column():
    with pytest.raises(ValueError, match="users: feature column 'gender'"):
        encode(pa.table({"age": [1]}), (Column("gender", "vocab", vocab=("F",)),), "users")
