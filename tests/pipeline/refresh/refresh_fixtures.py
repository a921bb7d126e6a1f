"""Tiny, hand-shaped inputs for the refresh job's tests: users (some without a features
row, some without events), items, interactions in several shards and row groups (with
a shard of bad rows), and a random-init checkpoint with a fitted feature spec."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import torch

from meta_embed import checkpoint
from meta_embed.config import MamlConfig, ModelConfig
from meta_embed.features import fit_spec, movielens_template
from meta_embed.model import TwoBlockModel
from meta_embed.tables import INTERACTIONS, ITEMS, TS_TYPE, USERS

T0 = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
DAY_US = 86_400 * 1_000_000
AS_OF = T0 + dt.timedelta(days=100)  # events span days 0..119: some lie after AS_OF
MAX_SUPPORT = 10


@dataclasses.dataclass(frozen=True)
class Dataset:
    root: Path
    interactions: str  # a glob
    users: str
    items: str
    checkpoint: str
    bad_rows: int  # rows of the bad shard that must be dead-lettered


def users_table(n: int, missing: int, cold: int) -> pa.Table:
    ids = [f"u{k:03d}" for k in range(n - missing)] + [f"c{k:03d}" for k in range(cold)]
    rng = np.random.default_rng(1)
    m = len(ids)
    return pa.table(
        {
            "user_id": ids,
            "age": pa.array(rng.choice([1, 18, 25, 35, 45, 50, 56], m).astype(np.int32)),
            "gender": pa.array(rng.choice(["F", "M"], m).tolist()),
            "occupation": pa.array(rng.choice(["artist", "doctor", "lawyer", "student"], m).tolist()),
            "zip_prefix": pa.array([f"{z:03d}" for z in rng.integers(0, 999, m)]),
        },
        schema=USERS,
    )


def items_table(n: int) -> pa.Table:
    rng = np.random.default_rng(2)
    genres = ["Action", "Comedy", "Drama", "Horror", "Romance"]
    return pa.table(
        {
            "item_id": [f"i{k:03d}" for k in range(n)],
            "title": [f"Item {k}" for k in range(n)],
            "year": pa.array(rng.integers(1950, 2000, n).astype(np.int32)),
            "genres": [list(rng.choice(genres, rng.integers(1, 3), replace=False)) for _ in range(n)],
        },
        schema=ITEMS,
    )


def events_table(n_users: int, n_items: int, seed: int = 3) -> pa.Table:
    """Events of users u000..; user k has 1 + (k * 7) % 25 events over days 0..119 (some > MAX_SUPPORT)."""
    rng = np.random.default_rng(seed)
    counts = 1 + (np.arange(n_users) * 7) % 25
    users = np.repeat([f"u{k:03d}" for k in range(n_users)], counts)
    n = len(users)
    ts = rng.integers(0, 120 * DAY_US, n) + int(T0.timestamp() * 1e6)
    rating = rng.integers(1, 6, n).astype(np.float32)
    return pa.table(
        {
            "user_id": users.tolist(),
            "item_id": [f"i{k:03d}" for k in rng.integers(0, n_items + 3, n)],  # a few unknown items
            "ts": pa.array(ts, pa.int64()).cast(TS_TYPE),
            "label": pa.array((rating >= 4).astype(np.float32)),
            "rating": pa.array(rating),
        },
        schema=INTERACTIONS,
    )


def bad_rows(good: pa.Table) -> pa.Table:
    """Rows that validate_interactions must reject: a null user, a label of 2, a NaN label."""
    schema = pa.schema([f.with_nullable(True) for f in INTERACTIONS])
    rows = good.slice(0, 3).to_pylist()
    rows[0]["user_id"] = None
    rows[1]["label"] = 2.0
    rows[2]["label"] = float("nan")
    return pa.Table.from_pylist(rows, schema=schema)


def write_checkpoint(
    path: Path, users: pa.Table, items: pa.Table, mode: str = "activation", seed: int = 0
) -> str:
    torch.manual_seed(seed)
    spec = fit_spec(movielens_template(), users, items)
    cfg = ModelConfig(
        embedding_mode=mode,
        meta_dim=8,
        meta_hidden=16,
        item_dim=8,
        global_hidden=(16,),
        personal_rank=2,
        retrieval_dim=8,
    )
    maml = MamlConfig(inner_steps=2, inner_lr=0.5, max_support=MAX_SUPPORT)
    return checkpoint.save(TwoBlockModel(spec, cfg), maml, path)


def make_dataset(
    root: Path, n_users: int = 48, missing: int = 4, cold: int = 3, n_items: int = 30
) -> Dataset:
    """Users u000..u{n-1} have events; the last `missing` have no features row; c000.. have no events."""
    root.mkdir(parents=True, exist_ok=True)
    users, items = users_table(n_users, missing, cold), items_table(n_items)
    pq.write_table(users, root / "users.parquet")
    pq.write_table(items, root / "items.parquet")
    events = events_table(n_users, n_items)
    shards = root / "interactions"
    shards.mkdir(exist_ok=True)
    half = events.num_rows // 2
    pq.write_table(events.slice(0, half), shards / "part-0.parquet", row_group_size=50)
    pq.write_table(events.slice(half), shards / "part-1.parquet", row_group_size=80)
    bad = bad_rows(events)
    pq.write_table(bad, shards / "part-2.parquet")
    write_checkpoint(root / "ckpt", users, items)
    return Dataset(
        root,
        str(shards / "*.parquet"),
        str(root / "users.parquet"),
        str(root / "items.parquet"),
        str(root / "ckpt"),
        bad.num_rows,
    )


def good_events(ds: Dataset, as_of: dt.datetime = AS_OF) -> pa.Table:
    """The valid interactions before `as_of` (the bad shard left out)."""
    parts = [pq.read_table(p) for p in sorted((ds.root / "interactions").glob("part-[01].parquet"))]
    t = pa.concat_tables(parts)
    return t.filter(pa.compute.less(t["ts"], pa.scalar(as_of, TS_TYPE)))


def reference(ds: Dataset, as_of: dt.datetime = AS_OF, max_support: int = MAX_SUPPORT) -> dict[str, tuple]:
    """user -> (embedding, n_support, last_ts µs or None) from meta_embed's own path (build_tasks,
    embed_users), independent of the refresh job's code; cold users get the zero-step embedding."""
    from meta_embed.inference import embed_users, user_inputs
    from meta_embed.tasks import FeatureTables, build_tasks

    ckpt = checkpoint.load(ds.checkpoint)
    users, items = pq.read_table(ds.users), pq.read_table(ds.items)
    tables = FeatureTables.build(ckpt.spec, users, items)
    ev = good_events(ds, as_of)
    tasks = build_tasks(ev, None, tables, ckpt.spec, "label", max_support)
    emb = embed_users(ckpt.model, tables, tasks, ckpt.maml_cfg, batch_size=1024)
    out = {}
    for k, u in enumerate(tasks.user_ids.to_pylist()):
        a, b = tasks.support.offsets[k], tasks.support.offsets[k + 1]
        out[u] = (emb[k], int(b - a), int(tasks.support.ts[b - 1]))
    cold = [u for u in users["user_id"].to_pylist() if u not in out]
    with torch.no_grad():
        x = user_inputs(ckpt.model, tables.users, torch.from_numpy(tables.user_rows(pa.array(cold))))
        zero = ckpt.model.meta(x).numpy()
    out.update({u: (zero[k], 0, None) for k, u in enumerate(cold)})
    return out


def snapshot_rows(table: pa.Table) -> dict[str, tuple]:
    from meta_embed.snapshot import embeddings_of

    emb = embeddings_of(table)
    ts = table["last_event_ts"].cast(pa.int64()).to_pylist()
    return {
        u: (emb[k], n, ts[k])
        for k, (u, n) in enumerate(zip(table["user_id"].to_pylist(), table["n_support"].to_pylist()))
    }
