"""Hot reload in-process: swaps to a new CURRENT, model releases switch scorer and
embeddings together, failures keep the old state serving, and old states stay usable."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from meta_embed import checkpoint
from meta_embed.features import encode, take
from serving import service
from serving.reload import StateHolder, Watcher
from tests.serving.world import MAML_CFG, SPEC, World, build_world, make_model, publish

IDS = [f"u{i}" for i in range(8)]


@pytest.fixture()
def small(tmp_path) -> World:
    return build_world(
        tmp_path / "w",
        n_users=12,
        n_items=40,
        in_snapshot=8,
        as_of=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
    )


def later(w: World, hours: int) -> dt.datetime:
    return dt.datetime(2030, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=hours)


def new_embeddings(seed: int, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(len(IDS), dim)).astype(np.float32)


def test_refresh_swaps_in_the_new_snapshot_and_old_states_keep_answering(small) -> None:
    holder = StateHolder.open(small.config())
    old = holder.state
    old_e = service.user_embedding(old, "u1").embedding
    assert holder.refresh() is False  # nothing new
    for n in range(1, 5):  # the first snapshot gets pruned (keep=3) while `old` still uses it
        emb = new_embeddings(n)
        publish(small.root, small.version, IDS, emb, later(small, n), f"r{n + 1}")
        assert holder.refresh() is True
        np.testing.assert_array_equal(service.user_embedding(holder.state, "u1").embedding, emb[1])
    assert holder.state.scorer is old.scorer  # same model: the catalog is not recomputed ...
    assert (holder.state.directory / "items.faiss").stat().st_nlink > 1  # ... nor the item index (hard link)
    assert not (small.root / "snapshots" / old.snapshot).exists()
    np.testing.assert_array_equal(service.user_embedding(old, "u1").embedding, old_e)
    assert service.score(old, "u1", ["i1", "i2"])[1].shape == (2,)
    assert holder.stats.swaps == 4 and holder.stats.failures == 0


def _release(w: World, tmp_path, seed: int) -> tuple[torch.nn.Module, str, str]:
    model = make_model(seed)
    path = tmp_path / f"release-{seed}"
    return model, checkpoint.save(model, MAML_CFG, path), str(path)


def _assert_scores_from(w: World, state, model, emb_row: np.ndarray) -> None:
    """Served scores equal the released model's global block on the new snapshot's embedding."""
    with torch.no_grad():
        v = model.item_tower(take(encode(w.items, SPEC.item), torch.arange(3)))
        ctx = model.context_vectors(
            {c.name: torch.zeros(3, dtype=torch.long) for c in SPEC.context}
        )  # missing
        want = model.global_block(torch.tensor(emb_row), v, ctx).numpy()
    np.testing.assert_allclose(service.score(state, "u1", ["i0", "i1", "i2"])[1], want, rtol=1e-5, atol=1e-6)


def test_model_release_named_by_the_manifest_switches_scorer_and_embeddings_together(small, tmp_path) -> None:
    holder = StateHolder.open(small.config())
    model, version, path = _release(small, tmp_path, seed=5)
    emb = new_embeddings(7)
    publish(small.root, version, IDS, emb, later(small, 1), "r2", {"checkpoint": path})
    assert holder.refresh() is True
    assert holder.state.model_version == version != small.version
    assert holder.state.store.meta.model_version == version
    _assert_scores_from(small, holder.state, model, emb[1])


def test_model_release_through_the_root_model_pointer(small, tmp_path) -> None:
    holder = StateHolder.open(small.config())
    model, version, path = _release(small, tmp_path, seed=6)
    emb = new_embeddings(8)
    publish(small.root, version, IDS, emb, later(small, 1), "r2")  # no 'checkpoint' key
    (small.root / "MODEL").write_text(path + "\n")
    assert holder.refresh() is True and holder.state.model_version == version
    _assert_scores_from(small, holder.state, model, emb[1])


def test_a_snapshot_without_its_checkpoint_is_refused_and_the_old_state_keeps_serving(
    small, tmp_path
) -> None:
    holder = StateHolder.open(small.config())
    old = holder.state
    model, version, path = _release(small, tmp_path, seed=9)
    publish(small.root, version, IDS, new_embeddings(9), later(small, 1), "r2")
    assert holder.refresh() is False
    assert holder.state is old and holder.stats.failures == 1
    assert f"needs model_version {version}" in holder.stats.last_error
    assert holder.refresh() is False and holder.stats.failures == 1  # backing off, not retrying every poll
    (small.root / "MODEL").write_text(path)
    assert holder.refresh(force=True) is True and holder.state.model_version == version


def test_the_watcher_thread_and_the_app_pick_up_a_new_current(small) -> None:
    from fastapi.testclient import TestClient

    from serving.app import create_app

    app = create_app(small.root, small.config(reload_interval_s=0.05))
    with TestClient(app) as client:
        first = client.get("/v1/info").json()
        assert first["reload"]["watching"] is True
        publish(small.root, small.version, IDS, new_embeddings(3), later(small, 2), "r2")
        deadline = time.monotonic() + 30
        while client.get("/v1/info").json()["as_of"] == first["as_of"] and time.monotonic() < deadline:
            time.sleep(0.05)
        info = client.get("/v1/info").json()
        assert info["as_of"] == later(small, 2).isoformat() and info["reload"]["swaps"] == 1
    holder = app.state.holder
    watcher = Watcher(holder, 0.05).start()
    watcher.stop()
    assert not watcher._thread.is_alive()


def test_checkpoint_candidates_in_order_of_precedence(tmp_path) -> None:
    from serving.state import checkpoint_candidates

    (tmp_path / "MODEL").write_text("models/v2\n")
    manifest = {"checkpoint": "/abs/ckpt", "config": {"checkpoint": "runs/ckpt"}}
    assert checkpoint_candidates(tmp_path, manifest, Path("/fallback")) == [
        Path("/abs/ckpt"),
        tmp_path / "runs/ckpt",
        Path("runs/ckpt"),
        tmp_path / "models/v2",
        Path("models/v2"),
        Path("/fallback"),
    ]
    (tmp_path / "MODEL").unlink()
    assert checkpoint_candidates(tmp_path, {}, None) == []


def test_swaps_failures_and_rollbacks_are_logged_and_counted(small, tmp_path, caplog) -> None:
    from meta_embed import snapshot
    from serving import telemetry

    holder = StateHolder.open(small.config())
    first = holder.state.snapshot
    ok, failed = telemetry.RELOAD_OK._value.get(), telemetry.RELOAD_FAILED._value.get()
    caplog.set_level("INFO", logger="serving.reload")
    publish(small.root, small.version, IDS, new_embeddings(1), later(small, 1), "r2")
    assert holder.refresh() is True
    second = holder.state.snapshot
    snapshot.rollback(small.root)  # CURRENT back to the first snapshot: an older as_of
    assert holder.refresh() is True
    _, version, _ = _release(small, tmp_path, seed=9)  # no checkpoint anywhere for this version
    publish(small.root, version, IDS, new_embeddings(2), later(small, 2), "r3")
    assert holder.refresh() is False
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "serving.reload"]
    assert [level for level, _ in lines] == ["INFO", "WARNING", "ERROR"]
    assert lines[0][1].startswith(f"serving snapshot {second} (as_of {later(small, 1).isoformat()}")
    assert lines[1][1].startswith(f"rolled back to snapshot {first} ") and f"from {second}" in lines[1][1]
    assert lines[2][1].startswith("cannot load snapshot") and f"still serving {first}" in lines[2][1]
    assert telemetry.RELOAD_OK._value.get() - ok == 2 and telemetry.RELOAD_FAILED._value.get() - failed == 1
