"""A tiny seeded serving world for the tests: feature tables, a random-init model saved
as a checkpoint, per-user adapted meta-block params (real MAML on random support
events), and snapshots published with meta_embed.snapshot exactly as the refresh job does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from meta_embed import checkpoint, publishing, snapshot
from meta_embed.config import MamlConfig, ModelConfig
from meta_embed.features import Column, FeatureSpec, encode, take
from meta_embed.maml import adapt
from meta_embed.model import Params, TwoBlockModel
from meta_embed.tables import ITEMS, USERS
from serving.serving_config import IndexConfig, ServingConfig

GENRES = ("action", "comedy", "drama", "horror", "romance")
SPEC = FeatureSpec(
    user=(
        Column("age", "bucket", dim=3, boundaries=(18, 25, 35, 50)),
        Column("gender", "vocab", dim=2, vocab=("F", "M")),
        Column("occupation", "vocab", dim=3, vocab=("artist", "doctor", "writer")),
        Column("zip_prefix", "hash", dim=3, buckets=64),
    ),
    item=(
        Column("item_id", "hash", dim=6, buckets=1024),
        Column("genres", "bag", dim=4, vocab=GENRES),
        Column("year", "bucket", dim=2, boundaries=(1980, 1990, 2000)),
    ),
    context=(
        Column("device", "vocab", dim=2, vocab=("mobile", "web")),
        Column("hour", "bucket", dim=2, boundaries=(6, 12, 18)),
    ),
)
MODEL_CFG = ModelConfig(meta_dim=8, meta_hidden=16, item_dim=8, global_hidden=(16, 8), retrieval_dim=8)
MAML_CFG = MamlConfig(inner_steps=2, inner_lr=0.5)


def users_table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "user_id": [f"u{i}" for i in range(n)],
            "age": pa.array(rng.integers(15, 70, n), pa.int32()),
            "gender": rng.choice(["F", "M"], n).tolist(),
            "occupation": rng.choice(["artist", "doctor", "writer", "other"], n).tolist(),
            "zip_prefix": [f"{z:03d}" for z in rng.integers(0, 999, n)],
        },
        schema=USERS,
    )


def items_table(n: int, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    genres = [sorted(set(rng.choice(GENRES, rng.integers(1, 3)).tolist())) for _ in range(n)]
    return pa.table(
        {
            "item_id": [f"i{i}" for i in range(n)],
            "title": [f"Item {i}" for i in range(n)],
            "year": pa.array(rng.integers(1970, 2010, n), pa.int32()),
            "genres": genres,
        },
        schema=ITEMS,
    )


def make_model(seed: int, cfg: ModelConfig = MODEL_CFG) -> TwoBlockModel:
    torch.manual_seed(seed)
    return TwoBlockModel(SPEC, cfg).eval()


def adapted_params(
    model: TwoBlockModel, users: pa.Table, items: pa.Table, rows: np.ndarray, seed: int
) -> Params:
    """Per-user meta-block params after MAML on random support events: (len(rows), *shape)."""
    g = torch.Generator().manual_seed(seed)
    u_enc, i_enc = encode(users, SPEC.user), encode(items, SPEC.item)
    x = model.user_inputs(take(u_enc, torch.from_numpy(rows)))  # (users, in_dim)
    support = torch.randint(0, items.num_rows, (len(rows), 6), generator=g)  # (users, slots)
    v = model.item_tower(take(i_enc, support)).detach()  # (users, slots, item_dim)
    y = torch.randint(0, 2, support.shape, generator=g).float()
    mask = torch.ones(support.shape, dtype=torch.bool)
    mask[: len(rows) // 3, 3:] = False  # some users have shorter support
    ctx_enc = {
        "device": torch.randint(0, 3, support.shape, generator=g),
        "hour": torch.randint(0, 5, support.shape, generator=g),
    }
    ctx = model.context_vectors(ctx_enc).detach()  # (users, slots, C)
    params = adapt(model, x.detach(), v, ctx, y, mask, MAML_CFG)
    return {k: p.detach() for k, p in params.items()}


@dataclasses.dataclass
class World:
    base: Path
    users: pa.Table
    items: pa.Table
    model: TwoBlockModel
    version: str
    ckpt_path: Path
    snapshot_users: np.ndarray  # rows of `users` that are in the snapshot
    params: Params  # adapted params of snapshot_users
    embeddings: np.ndarray  # (snapshot users, D)

    @property
    def root(self) -> Path:
        return self.base / "snapshots"

    def config(self, **overrides) -> ServingConfig:
        fields = dict(
            root=self.root,
            items=self.base / "items.parquet",
            users=self.base / "users.parquet",
            checkpoint=self.ckpt_path,
            reload_interval_s=0.0,
            index=IndexConfig(),
        )
        return ServingConfig(**(fields | overrides))


def publish(
    root: Path,
    model_version: str,
    user_ids: list[str],
    embeddings: np.ndarray,
    as_of: dt.datetime,
    run_id: str,
    manifest: dict | None = None,
    seen: list[list[str]] | None = None,
) -> Path:
    mode = "activation" if embeddings.shape[1] == MODEL_CFG.meta_dim else "weights"
    meta = snapshot.SnapshotMeta(model_version, SPEC.hash, mode, embeddings.shape[1], as_of)
    n = len(user_ids)
    table = snapshot.to_table(
        meta,
        user_ids,
        embeddings,
        np.arange(n) % 7,
        np.full(n, int(as_of.timestamp() * 1e6) - 3_600_000_000, dtype=np.int64),
        None if seen is None else pa.array(seen, pa.list_(pa.string())),
    )
    staged = publishing.staging_dir(root, meta, run_id)
    shards = [publishing.write_part(table, staged, 0)]
    return Path(publishing.publish(root, staged, meta, {"counts": {"users": n}} | (manifest or {}), shards))


def build_world(
    base: Path,
    n_users: int = 40,
    n_items: int = 300,
    in_snapshot: int = 30,
    seed: int = 0,
    as_of: dt.datetime | None = None,
    model_cfg: ModelConfig = MODEL_CFG,
) -> World:
    import pyarrow.parquet as pq

    base.mkdir(parents=True, exist_ok=True)
    users, items = users_table(n_users, seed), items_table(n_items, seed + 1)
    pq.write_table(users, base / "users.parquet")
    pq.write_table(items, base / "items.parquet")
    model = make_model(seed, model_cfg)
    ckpt_path = base / f"ckpt-{seed}"
    version = checkpoint.save(model, MAML_CFG, ckpt_path)
    rows = np.arange(in_snapshot)
    params = adapted_params(model, users, items, rows, seed)
    with torch.no_grad():
        x = model.user_inputs(take(encode(users, SPEC.user), torch.from_numpy(rows)))
        emb = model.meta.embed(params, x).numpy()
    as_of = as_of or dt.datetime.now(dt.UTC).replace(microsecond=0)
    world = World(base, users, items, model, version, ckpt_path, rows, params, emb)
    publish(world.root, version, [f"u{i}" for i in rows], emb, as_of, "r1", {"checkpoint": str(ckpt_path)})
    return world


def serve_command(w: World, port: int, *flags: str) -> list[str]:
    """`meta-embed serve` of world `w` on 127.0.0.1:`port`, as a process's argv, with `flags`."""
    return [sys.executable, "-m", "meta_embed_cli", "serve", "--root", str(w.root), "--items",
            str(w.base / "items.parquet"), "--checkpoint", str(w.ckpt_path), "--host", "127.0.0.1",
            "--port", str(port), *flags]  # fmt: skip


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus text exposition, by (name, sorted label pairs)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
