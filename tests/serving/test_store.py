"""Embedding store: lookup, every status, fp16 storage, and refusal of another model_version."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import numpy as np
import pytest
import torch

from meta_embed import checkpoint, snapshot
from meta_embed.features import default_row, encode, take
from serving import service
from serving.state import Sources, load_state
from serving.store import EmbeddingStore, Status
from tests.serving.world import SPEC, build_world, make_model


def test_known_users_get_their_snapshot_embedding(world, state) -> None:
    table, _ = snapshot.read_dir(snapshot.current_dir(world.root))
    stored = snapshot.embeddings_of(table)
    ids = table.column("user_id").to_pylist()
    for user in ("u0", "u7", "u29"):
        got = service.user_embedding(state, user)
        assert got.status is Status.FRESH
        np.testing.assert_array_equal(got.embedding, stored[ids.index(user)])
        assert got.n_support == table.column("n_support")[ids.index(user)].as_py()


def test_stale_when_snapshot_is_older_than_max_age(state) -> None:
    later = state.store.meta.as_of + dt.timedelta(seconds=state.max_age_s + 1)
    assert service.user_embedding(state, "u3", now=later).status is Status.STALE
    assert service.user_embedding(state, "u3", now=state.store.meta.as_of).status is Status.FRESH


def test_cold_user_gets_zero_step_embedding_of_its_features(world, state) -> None:
    got = service.user_embedding(state, "u35")  # in the users table, not in the snapshot
    assert got.status is Status.COLD and got.row == -1
    with torch.no_grad():
        x = world.model.user_inputs(take(encode(world.users, SPEC.user), torch.tensor([35])))
        want = world.model.meta(x)[0].numpy()
    np.testing.assert_allclose(got.embedding, want, rtol=1e-6, atol=1e-7)


def test_unknown_user_gets_the_default_embedding(world, state) -> None:
    got = service.user_embedding(state, "nobody-knows-me")
    assert got.status is Status.DEFAULT
    with torch.no_grad():
        want = world.model.meta(world.model.user_inputs(default_row(SPEC.user)))[0].numpy()
    np.testing.assert_allclose(got.embedding, want, rtol=1e-6)
    assert not np.allclose(got.embedding, service.user_embedding(state, "u35").embedding)


def test_store_refuses_a_snapshot_of_another_model_version(world, state, tmp_path) -> None:
    directory = snapshot.current_dir(world.root)
    with pytest.raises(snapshot.SnapshotError, match="refusing to mix"):
        EmbeddingStore.from_snapshot(directory, "0123456789abcdef", state.scorer.catalog.ids)
    with pytest.raises(snapshot.SnapshotError, match="refusing to mix"):
        EmbeddingStore.open(state.directory, "0123456789abcdef")


def test_loader_refuses_when_no_checkpoint_matches(world, tmp_path) -> None:
    other = tmp_path / "other-ckpt"
    checkpoint.save(make_model(seed=99), checkpoint.MamlConfig(), other)
    cfg = world.config(checkpoint=other)
    manifest_path = snapshot.current_dir(world.root) / snapshot.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest.pop("checkpoint")
    fake_root = tmp_path / "root"
    (fake_root / "snapshots" / manifest["name"]).mkdir(parents=True)
    (fake_root / "snapshots" / manifest["name"] / snapshot.MANIFEST).write_text(json.dumps(manifest))
    (fake_root / "CURRENT").write_text(manifest["name"] + "\n")
    with pytest.raises(snapshot.SnapshotError, match=f"needs model_version {world.version}"):
        load_state(dataclasses.replace(cfg, root=fake_root), Sources.read(cfg))


def test_fp16_store_halves_embedding_bytes_and_stays_close(tmp_path) -> None:
    w = build_world(tmp_path / "w", n_users=12, n_items=40, in_snapshot=10)
    sources = Sources.read(w.config())
    full = load_state(w.config(), sources)
    half = load_state(w.config(fp16=True), sources)
    assert half.store.embeddings.dtype == np.float16 and full.store.embeddings.dtype == np.float32
    assert half.store.embeddings.nbytes * 2 == full.store.embeddings.nbytes
    assert half.directory != full.directory  # separate artifacts, both kept
    a, b = service.user_embedding(full, "u4").embedding, service.user_embedding(half, "u4").embedding
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    assert service.user_embedding(half, "u4").embedding.dtype == np.float32
