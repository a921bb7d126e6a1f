"""Seeded synthetic interactions with planted structure, for scale tests and tests that
must not touch the network.

The world: genres and demographics own latent vectors; an item's latent is the mean of
its genres' vectors plus a release-year direction plus noise; a user's taste is the sum
of their age-group, gender and occupation vectors plus noise, and drifts linearly over
the period. Activity is Pareto (Zipf-like) per user, items are drawn by Zipf popularity,
and labels are Bernoulli(sigmoid(`true_logit`)) with true_logit = signal * sqrt(d) *
taste(t) . item + item_bias + LOGIT_BIAS.
Ratings are consistent with labels (label = rating >= 4).

Users are generated in fixed blocks of `BLOCK_USERS`, each from its own seeded stream,
so memory stays bounded and the output depends only on the config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from meta_embed.config import to_dict, write_config
from meta_embed.tables import INTERACTIONS, ITEMS, TS_TYPE, USERS, conform, write_dead_letter, write_table
from pipeline.data.data_config import SynthConfig
from pipeline.data.movielens import ML1M_OCCUPATIONS, ML100K_GENRES

BLOCK_USERS = 4096
AGE_GROUPS = (1, 18, 25, 35, 45, 50, 56)  # ML-1M age-group codes
_AGE_P = np.array([0.04, 0.18, 0.35, 0.2, 0.09, 0.08, 0.06])
LOGIT_BIAS = -0.3
TRUTH_USERS = pa.schema(
    [("user_id", pa.string()), ("taste", pa.list_(pa.float32())), ("drift", pa.list_(pa.float32()))]
)
TRUTH_ITEMS = pa.schema(
    [("item_id", pa.string()), ("latent", pa.list_(pa.float32())), ("bias", pa.float32())]
)


@dataclasses.dataclass(frozen=True)
class SynthSummary:
    n_users: int
    n_items: int
    n_interactions: int
    n_shards: int
    positive_rate: float
    seconds: float


@dataclasses.dataclass(frozen=True)
class World:
    """The shared, global part of the world (small: items and demographic vectors)."""

    item_ids: pa.Array  # (n_items,) string
    item_genres: pa.ListArray  # (n_items,) list<string>
    item_year: np.ndarray  # (n_items,) int32
    item_latent: np.ndarray  # (n_items, d)
    item_bias: np.ndarray  # (n_items,)
    popularity_cdf: np.ndarray  # (n_items,)
    age_vec: np.ndarray  # (7, d)
    gender_vec: np.ndarray  # (2, d)
    occupation_vec: np.ndarray  # (21, d)


def _ids(prefix: str, start: int, stop: int, total: int) -> pa.Array:
    digits = pc.cast(pa.array(np.arange(start, stop)), pa.string())
    return pc.binary_join_element_wise(prefix, pc.utf8_lpad(digits, len(str(max(total - 1, 0))), "0"), "")


def make_world(cfg: SynthConfig) -> World:
    rng = np.random.default_rng([cfg.seed, 0])
    d, n = cfg.latent_dim, cfg.n_items
    genres = ML100K_GENRES[1:]
    genre_vec = rng.normal(0, 1 / np.sqrt(d), (len(genres), d))
    genre_p = rng.dirichlet(np.full(len(genres), 2.0))
    n_genres = 1 + rng.binomial(2, 0.35, n)
    multi_hot = np.zeros((n, len(genres)), dtype=bool)
    for k in range(3):  # up to three draws per item; repeats just collapse
        pick = rng.choice(len(genres), n, p=genre_p)
        multi_hot[np.arange(n)[n_genres > k], pick[n_genres > k]] = True
    counts = multi_hot.sum(axis=1)
    year = rng.integers(1950, 2021, n).astype(np.int32)
    year_dir = rng.normal(0, 1 / np.sqrt(d), d)
    latent = (multi_hot @ genre_vec) / counts[:, None]  # (n_items, d)
    latent += np.outer((year - 1985) / 35.0, year_dir) + rng.normal(0, 0.5 / np.sqrt(d), (n, d))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    names = np.asarray(genres, dtype=object)[np.nonzero(multi_hot)[1]]
    weights = rng.permutation((np.arange(n) + 1.0) ** -cfg.popularity_exponent)
    return World(
        item_ids=_ids("i", 0, n, n),
        item_genres=pa.ListArray.from_arrays(pa.array(offsets), pa.array(names, pa.string())),
        item_year=year,
        item_latent=latent,
        item_bias=rng.normal(-0.2, 0.5, n),
        popularity_cdf=np.cumsum(weights) / weights.sum(),
        age_vec=rng.normal(0, 0.5 / np.sqrt(d), (len(AGE_GROUPS), d)),
        gender_vec=rng.normal(0, 0.4 / np.sqrt(d), (2, d)),
        occupation_vec=rng.normal(0, 0.5 / np.sqrt(d), (len(ML1M_OCCUPATIONS), d)),
    )


def true_logit(
    cfg: SynthConfig, world: World, taste: np.ndarray, drift: np.ndarray, item: np.ndarray, ts_us: np.ndarray
) -> np.ndarray:
    """The planted logit of events: taste/drift (events, d) rows of their users, item
    (events,) item indices, ts_us (events,) timestamps in microseconds."""
    t0, t1 = cfg.period_us
    frac = ((ts_us - t0) / (t1 - t0))[:, None]  # (events, 1)
    now = taste + frac * drift  # (events, d)
    dot = np.einsum("ed,ed->e", now, world.item_latent[item])
    return cfg.signal * np.sqrt(cfg.latent_dim) * dot + world.item_bias[item] + LOGIT_BIAS


def _users(cfg: SynthConfig, world: World, rng: np.random.Generator, u0: int, u1: int):
    """Demographics (as a USERS table), planted taste and drift (m, d) of users u0..u1."""
    m, d = u1 - u0, cfg.latent_dim
    age_g = rng.choice(len(AGE_GROUPS), m, p=_AGE_P)
    gender = (rng.random(m) < 0.28).astype(int)
    occ = rng.integers(0, len(ML1M_OCCUPATIONS), m)
    taste = world.age_vec[age_g] + world.gender_vec[gender] + world.occupation_vec[occ]
    taste += rng.normal(0, 0.6 / np.sqrt(d), (m, d))  # (m, d)
    drift = rng.normal(0, cfg.drift / np.sqrt(d), (m, d))  # (m, d)
    users = pa.table(
        {
            "user_id": _ids("u", u0, u1, cfg.n_users),
            "age": pa.array(np.asarray(AGE_GROUPS)[age_g], pa.int32()),
            "gender": pa.array(np.array(["M", "F"])[gender]),
            "occupation": pa.array(np.asarray(ML1M_OCCUPATIONS)[occ]),
            "zip_prefix": pa.array(np.char.zfill(rng.integers(0, 1000, m).astype(str), 3)),
        }
    )
    return conform(users, USERS), taste, drift


def _events(cfg: SynthConfig, world: World, rng: np.random.Generator, taste: np.ndarray, drift: np.ndarray):
    """(owner, item, ts_us, label, rating) arrays of the events of m users, sorted by
    (owner, ts); owner indexes the rows of taste/drift."""
    m, a = len(taste), cfg.activity_alpha
    cap = 20 * a / (a - 1)  # Pareto(xm=1, a) activity capped at 20x its mean, then scaled to the asked mean
    capped_mean = a / (a - 1) - cap ** (1 - a) / (a - 1)
    activity = np.minimum(rng.pareto(a, m) + 1, cap)
    n_ev = np.maximum(1, np.round(cfg.events_per_user * activity / capped_mean)).astype(np.int64)
    t0, t1 = cfg.period_us
    begin = rng.uniform(0, 0.8, m)  # each user is active in [begin, begin + length] of the period
    length = rng.uniform(0.1, 1.0, m) * (1 - begin)
    owner = np.repeat(np.arange(m), n_ev)  # (events,)
    ts = (t0 + (begin[owner] + rng.random(len(owner)) * length[owner]) * (t1 - t0)).astype(np.int64)
    order = np.lexsort((ts, owner))
    owner, ts = owner[order], ts[order]
    item = np.minimum(np.searchsorted(world.popularity_cdf, rng.random(len(owner))), cfg.n_items - 1)
    p = 1 / (1 + np.exp(-true_logit(cfg, world, taste[owner], drift[owner], item, ts)))
    label = rng.random(len(owner)) < p
    rating = np.where(label, 4 + (rng.random(len(owner)) < p), 1 + rng.binomial(2, p))
    return owner, item, ts, label, rating


def _block(cfg: SynthConfig, world: World, b: int) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(users, interactions, truth) of user block b, from its own random stream."""
    u0, u1 = b * BLOCK_USERS, min((b + 1) * BLOCK_USERS, cfg.n_users)
    rng = np.random.default_rng([cfg.seed, 1, b])
    users, taste, drift = _users(cfg, world, rng, u0, u1)
    owner, item, ts, label, rating = _events(cfg, world, rng, taste, drift)
    inter = pa.table(
        {
            "user_id": users["user_id"].take(pa.array(owner)),
            "item_id": world.item_ids.take(pa.array(item)),
            "ts": pa.array(ts, TS_TYPE),
            "label": pa.array(label.astype(np.float32)),
            "rating": pa.array(rating.astype(np.float32)),
        }
    )
    truth = pa.table(
        {"user_id": users["user_id"], "taste": _lists(taste), "drift": _lists(drift)}, schema=TRUTH_USERS
    )
    return users, conform(inter, INTERACTIONS), truth


def _lists(matrix: np.ndarray) -> pa.ListArray:
    rows, d = matrix.shape
    return pa.ListArray.from_arrays(
        pa.array(np.arange(0, rows * d + 1, d, dtype=np.int32)), pa.array(matrix.astype(np.float32).ravel())
    )


def _write_items(cfg: SynthConfig, world: World, out: Path) -> None:
    items = pa.table(
        {
            "item_id": world.item_ids,
            "title": _ids("Item ", 0, cfg.n_items, cfg.n_items),
            "year": pa.array(world.item_year, pa.int32()),
            "genres": world.item_genres,
        }
    )
    write_table(items, out / "items.parquet", ITEMS)
    if cfg.write_truth:
        truth = pa.table(
            {
                "item_id": world.item_ids,
                "latent": _lists(world.item_latent),
                "bias": pa.array(world.item_bias, pa.float32()),
            },
            schema=TRUTH_ITEMS,
        )
        write_table(truth, out / "truth" / "items.parquet", TRUTH_ITEMS)


def _write_users_and_events(cfg: SynthConfig, world: World, out: Path) -> tuple[int, float, int]:
    """Stream the user blocks into users.parquet and the interaction shards; returns
    (events, positives, shards written)."""
    n_blocks = -(-cfg.n_users // BLOCK_USERS)
    shard_of = np.minimum(np.arange(n_blocks) * cfg.n_shards // n_blocks, cfg.n_shards - 1)
    shard_dir = out / "interactions"
    shard_dir.mkdir(parents=True, exist_ok=True)
    for stale in shard_dir.glob("part-*.parquet"):  # from an earlier run into the same folder
        stale.unlink()
    n_events, n_pos = 0, 0.0
    with contextlib.ExitStack() as stack:
        users_out = stack.enter_context(pq.ParquetWriter(out / "users.parquet", USERS))
        truth_out = (
            stack.enter_context(pq.ParquetWriter(out / "truth" / "users.parquet", TRUTH_USERS))
            if cfg.write_truth
            else None
        )
        shards = {}
        for b in range(n_blocks):
            users, inter, truth = _block(cfg, world, b)
            shard = int(shard_of[b])
            if shard not in shards:
                shards[shard] = stack.enter_context(
                    pq.ParquetWriter(shard_dir / f"part-{shard:05d}.parquet", INTERACTIONS)
                )
            shards[shard].write_table(inter)
            users_out.write_table(users)
            if truth_out is not None:
                truth_out.write_table(truth)
            n_events += inter.num_rows
            n_pos += float(pc.sum(inter["label"]).as_py() or 0.0)
    return n_events, n_pos, len(shards)


def synth(cfg: SynthConfig, out: str | Path) -> SynthSummary:
    """Write out/users.parquet, out/items.parquet, out/interactions/part-*.parquet,
    an empty out/dead_letter.parquet, synth_summary.json and config.json (and, with
    write_truth, out/truth/{users,items}.parquet holding the planted vectors). Memory
    is bounded by one block of users, whatever n_users is."""
    start = time.perf_counter()
    out = Path(out)
    world = make_world(cfg)
    _write_items(cfg, world, out)
    write_dead_letter([], out / "dead_letter.parquet")
    n_events, n_pos, n_shards = _write_users_and_events(cfg, world, out)
    summary = SynthSummary(
        cfg.n_users,
        cfg.n_items,
        n_events,
        n_shards,
        round(n_pos / max(n_events, 1), 4),
        round(time.perf_counter() - start, 3),
    )
    (out / "synth_summary.json").write_text(json.dumps(to_dict(summary), indent=2, sort_keys=True) + "\n")
    write_config(cfg, out)
    return summary
