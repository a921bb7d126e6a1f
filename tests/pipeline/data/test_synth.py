"""The synthetic generator: deterministic, schema-true, and its labels carry the planted signal."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from meta_embed.tables import INTERACTIONS, ITEMS, USERS, read_table
from pipeline.data.data_config import SynthConfig
from pipeline.data.synth import BLOCK_USERS, make_world, synth, true_logit

CFG = SynthConfig(
    n_users=BLOCK_USERS + 904,
    n_items=300,
    events_per_user=20,
    seed=7,
    drift=1.0,
    n_shards=2,
    write_truth=True,
)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return out, synth(CFG, out)


def auc(score: np.ndarray, label: np.ndarray) -> float:
    ranks = np.argsort(np.argsort(score)) + 1.0
    pos = label == 1
    return (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())


def test_outputs_and_summary(world_dir):
    out, summary = world_dir
    inter = read_table(out / "interactions", INTERACTIONS)
    assert sorted(p.name for p in (out / "interactions").iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    assert read_table(out / "users.parquet", USERS).num_rows == CFG.n_users
    assert read_table(out / "items.parquet", ITEMS).num_rows == CFG.n_items
    assert pq.read_table(out / "dead_letter.parquet").num_rows == 0
    assert summary.n_interactions == inter.num_rows
    assert json.loads((out / "config.json").read_text())["config"]["seed"] == 7
    assert abs(inter.num_rows / CFG.n_users - CFG.events_per_user) < 0.1 * CFG.events_per_user
    per_user = inter.group_by("user_id").aggregate([("item_id", "count")])["item_id_count"].to_numpy()
    assert per_user.max() > 8 * np.median(per_user)  # heavy-tailed activity
    ts = pc.cast(inter["ts"], pa.int64()).to_numpy()
    t0, t1 = CFG.period_us
    assert t0 <= ts.min() and ts.max() < t1
    assert (inter["label"].to_numpy() == (inter["rating"].to_numpy() >= 4)).all()


def test_deterministic_for_a_seed_and_independent_of_sharding(tmp_path, world_dir):
    out, _ = world_dir
    again = synth(SynthConfig(**{**CFG.__dict__, "n_shards": 1}), tmp_path / "a")
    assert again.n_interactions == world_dir[1].n_interactions
    one_shard = read_table(tmp_path / "a" / "interactions", INTERACTIONS)
    assert one_shard.equals(read_table(out / "interactions", INTERACTIONS))
    assert read_table(tmp_path / "a" / "users.parquet", USERS).equals(
        read_table(out / "users.parquet", USERS)
    )
    other = synth(SynthConfig(**{**CFG.__dict__, "seed": 8, "n_users": 500}), tmp_path / "b")
    first = read_table(tmp_path / "b" / "interactions", INTERACTIONS).slice(0, 50)
    assert not first.equals(read_table(out / "interactions", INTERACTIONS).slice(0, 50))
    assert other.n_users == 500


def planted(out):
    inter = read_table(out / "interactions", INTERACTIONS)
    truth = pq.read_table(out / "truth" / "users.parquet")
    user = pc.index_in(inter["user_id"], truth["user_id"]).to_numpy()
    items = pq.read_table(out / "truth" / "items.parquet")
    item = pc.index_in(inter["item_id"], items["item_id"]).to_numpy()
    taste = np.stack(truth["taste"].to_numpy(zero_copy_only=False))[user]  # (events, d)
    drift = np.stack(truth["drift"].to_numpy(zero_copy_only=False))[user]  # (events, d)
    ts = pc.cast(inter["ts"], pa.int64()).to_numpy()
    return inter["label"].to_numpy(), taste, drift, item, ts


def test_labels_carry_the_planted_taste_and_its_drift(world_dir):
    out, _ = world_dir
    label, taste, drift, item, ts = planted(out)
    world = make_world(CFG)
    now = true_logit(CFG, world, taste, drift, item, ts)
    static = true_logit(CFG, world, taste, np.zeros_like(drift), item, ts)
    assert auc(now, label) > 0.85
    assert auc(world.item_bias[item], label) < 0.65  # popularity alone explains little
    late = ts > np.quantile(ts, 0.7)
    assert auc(now[late], label[late]) > auc(static[late], label[late]) + 0.03  # tastes drift


def r_squared(design: np.ndarray, target: np.ndarray) -> float:
    """Share of the variance of `target` (rows, d) that a least-squares fit on `design` explains."""
    fit = design @ np.linalg.lstsq(design, target, rcond=None)[0]
    return 1 - ((target - fit) ** 2).sum() / ((target - target.mean(0)) ** 2).sum()


def test_item_and_user_attributes_carry_signal(world_dir):
    out, _ = world_dir
    world = make_world(CFG)
    items = read_table(out / "items.parquet", ITEMS)
    genres = sorted(set(pc.list_flatten(items["genres"]).to_pylist()))
    onehot = np.array([[g in row for g in genres] for row in items["genres"].to_pylist()], dtype=float)
    design = np.column_stack([onehot, items["year"].to_numpy(), np.ones(len(onehot))])
    assert r_squared(design, world.item_latent) > 0.6
    users = read_table(out / "users.parquet", USERS)
    taste = np.stack(pq.read_table(out / "truth" / "users.parquet")["taste"].to_numpy(zero_copy_only=False))
    onehots = [
        np.asarray(pc.equal(users[c], v))
        for c in ("age", "gender", "occupation")
        for v in pc.unique(users[c])
    ]
    assert r_squared(np.column_stack(onehots).astype(float), taste) > 0.4


def test_config_is_validated():
    with pytest.raises(ValueError, match="n_users must be > 0"):
        SynthConfig(n_users=0)
    with pytest.raises(ValueError, match="end .* must be after start"):
        SynthConfig(start="2021-01-01", end="2020-01-01")
