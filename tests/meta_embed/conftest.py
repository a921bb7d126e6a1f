"""Shared fixtures of the meta_embed tests: a tiny seeded MovieLens-shaped world whose
users carry a personal taste (not derivable from their features) and a personal bias,
so that adapting on a user's events measurably helps, and small models over it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import torch

from meta_embed.config import ModelConfig
from meta_embed.features import FeatureSpec, fit_spec, movielens_template
from meta_embed.model import TwoBlockModel
from meta_embed.tables import INTERACTIONS, ITEMS, USERS
from meta_embed.tasks import FeatureTables

GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi")


@dataclasses.dataclass(frozen=True)
class World:
    users: pa.Table
    items: pa.Table
    events: pa.Table


def make_world(
    n_users: int = 120, n_items: int = 60, min_events: int = 4, max_events: int = 40, seed: int = 0
) -> World:
    """Users, items and time-ordered labelled events (label = rating >= 4)."""
    rng = np.random.default_rng(seed)
    genre_flags = rng.random((n_items, len(GENRES))) < 0.3
    genre_flags[np.arange(n_items), rng.integers(0, len(GENRES), n_items)] = True
    items = pa.table(
        {
            "item_id": [f"i{k}" for k in range(n_items)],
            "title": [f"title {k}" for k in range(n_items)],
            "year": pa.array(rng.integers(1950, 2001, n_items), pa.int32()),
            "genres": [[g for g, on in zip(GENRES, row) if on] for row in genre_flags],
        },
        schema=ITEMS,
    )
    gender = rng.choice(["F", "M"], n_users)
    users = pa.table(
        {
            "user_id": [f"u{k}" for k in range(n_users)],
            "age": pa.array(rng.integers(15, 60, n_users), pa.int32()),
            "gender": gender,
            "occupation": rng.choice(["artist", "doctor", "student", "writer"], n_users),
            "zip_prefix": [f"{z:03d}" for z in rng.integers(0, 50, n_users)],
        },
        schema=USERS,
    )
    taste = rng.normal(0, 1.5, (n_users, len(GENRES))) + np.where(gender == "F", 0.5, -0.5)[:, None]
    user_bias, item_bias = rng.normal(0, 1.0, n_users), rng.normal(0, 0.7, n_items)
    counts = rng.integers(min_events, max_events + 1, n_users)
    u = np.repeat(np.arange(n_users), counts)
    popularity = 1.0 / rng.permutation(np.arange(1, n_items + 1)) ** 0.8  # Zipf-like
    i = rng.choice(n_items, size=len(u), p=popularity / popularity.sum())
    g = genre_flags[i] / genre_flags[i].sum(1, keepdims=True)
    logit = (taste[u] * g).sum(1) * 2 + user_bias[u] + item_bias[i]
    label = (rng.random(len(u)) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    rating = np.where(label > 0, rng.integers(4, 6, len(u)), rng.integers(1, 4, len(u))).astype(np.float32)
    ts = 1_000_000_000_000_000 + rng.integers(0, 10**12, len(u))
    events = pa.table(
        {
            "user_id": [f"u{k}" for k in u],
            "item_id": [f"i{k}" for k in i],
            "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "label": label,
            "rating": rating,
        },
        schema=INTERACTIONS,
    )
    return World(users, items, events)


def tiny_spec(world: World) -> FeatureSpec:
    """The MovieLens template with a small item-id hash (fast tests)."""
    spec = fit_spec(movielens_template(), world.users, world.items)
    item = tuple(dataclasses.replace(c, buckets=257) if c.name == "item_id" else c for c in spec.item)
    return dataclasses.replace(spec, item=item)


def tiny_model(
    spec: FeatureSpec,
    mode: str = "activation",
    objective: str = "binary",
    learned_inner_lr: float | None = None,
    seed: int = 0,
    global_hidden: tuple[int, ...] = (10, 6),
) -> TwoBlockModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        embedding_mode=mode,
        objective=objective,
        meta_dim=8,
        meta_hidden=12,
        item_dim=6,
        global_hidden=global_hidden,
        personal_rank=3,
        retrieval_dim=5,
    )
    return TwoBlockModel(spec, cfg, learned_inner_lr)


@pytest.fixture(scope="session")
def world() -> World:
    return make_world()


@pytest.fixture(scope="session")
def spec(world: World) -> FeatureSpec:
    return tiny_spec(world)


@pytest.fixture(scope="session")
def tables(world: World, spec: FeatureSpec) -> FeatureTables:
    return FeatureTables.build(spec, world.users, world.items)
