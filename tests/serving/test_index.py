"""FAISS indexes: type by size, approximate search against exact search, version checks,
and atomic builds of a snapshot's serving artifacts."""

from __future__ import annotations

import dataclasses
import json
import os

import faiss
import numpy as np
import pytest

from serving.index import IndexVersionError, build_index, exact_search, factory_string, read_meta, recall_at_k
from serving.serving_config import IndexConfig
from serving.state import Sources, build_artifacts, load_state


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded clustered vectors (like trained embeddings), random queries, exact top-10."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(200, 16))
    x = (centers[rng.integers(0, 200, 20_000)] + 0.3 * rng.normal(size=(20_000, 16))).astype(np.float32)
    q = rng.normal(size=(200, 16)).astype(np.float32)
    return x, q, exact_search(x, q, 10)


def test_factory_is_exact_below_the_threshold_and_approximate_above() -> None:
    cfg = IndexConfig(exact_below=1000)
    assert factory_string(999, cfg) == "Flat"
    assert factory_string(1_000_000, cfg) == factory_string(1_000_000, cfg, "ivf") == "IVF1024,Flat"
    assert (
        factory_string(4000, dataclasses.replace(cfg, nlist=4096)) == "IVF102,Flat"
    )  # >= 39 points per list
    assert factory_string(5000, dataclasses.replace(cfg, hnsw_m=16), "hnsw") == "HNSW16,Flat"


def test_flat_index_is_exact(clustered) -> None:
    x, q, exact = clustered
    vi = build_index(x, IndexConfig(exact_below=10**9))
    assert vi.factory == "Flat"
    assert recall_at_k(vi.search(q, 10)[1], exact) == 1.0


def _recalls(vi, q, exact, budgets) -> list[float]:
    return [recall_at_k(vi.search(q, 10, budget=b)[1], exact) for b in budgets]


def test_ivf_recall_grows_with_nprobe_and_clears_the_floor(clustered) -> None:
    x, q, exact = clustered
    vi = build_index(x, IndexConfig(exact_below=1000, nlist=128))
    assert vi.factory == "IVF128,Flat"
    recalls = _recalls(vi, q, exact, [1, 2, 4, 8, 16, 32, 64, 128])
    assert all(b >= a for a, b in zip(recalls, recalls[1:])), recalls
    assert recalls[0] < 0.6  # one list of 128 is a real approximation ...
    assert recalls[5] >= 0.95 and recalls[-1] == 1.0  # ... nprobe 32 is not; all lists is exact


def test_hnsw_recall_grows_with_ef_search_and_clears_the_floor(clustered) -> None:
    x, q, exact = clustered
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # a deterministic graph
    try:
        vi = build_index(x, IndexConfig(exact_below=1000, hnsw_m=16, ef_construction=40), "hnsw")
    finally:
        faiss.omp_set_num_threads(threads)
    recalls = _recalls(vi, q, exact, [16, 32, 64, 128, 256, 512])
    assert all(b >= a for a, b in zip(recalls, recalls[1:])), recalls
    assert recalls[0] < 0.8 and recalls[-1] >= 0.9, recalls


def test_index_meta_refuses_another_model_or_snapshot(state) -> None:
    meta = json.loads((state.directory / "meta.json").read_text())
    fingerprint = state.scorer.catalog.fingerprint
    assert read_meta(state.directory, state.model_version, state.snapshot, fingerprint) == meta
    with pytest.raises(IndexVersionError, match="model_version is"):
        read_meta(state.directory, "ffffffffffffffff", state.snapshot, fingerprint)
    with pytest.raises(IndexVersionError, match="snapshot is"):
        read_meta(state.directory, state.model_version, "another-snapshot", fingerprint)


def test_artifacts_are_built_once_and_reused(world, state) -> None:
    directory = build_artifacts(state.directory.parent.parent, state.scorer, world.config())
    assert directory == state.directory
    siblings = [p.name for p in directory.parent.iterdir()]
    assert not [s for s in siblings if s.startswith(".build-")]  # no temp dirs left behind


def test_a_concurrent_builder_that_finishes_first_wins(tmp_path, monkeypatch) -> None:
    from serving import state as state_module
    from tests.serving.world import build_world

    w = build_world(tmp_path / "w", n_users=10, n_items=30, in_snapshot=8)
    cfg = w.config()
    first = load_state(cfg, Sources.read(cfg))
    final, parked = first.directory, tmp_path / "parked"
    built_at = json.loads((final / "meta.json").read_text())["built_at"]
    real_rename = os.rename
    real_rename(final, parked)  # as if nobody had built it yet

    def other_builder_lands_first(src, dst):
        real_rename(parked, dst)
        return real_rename(src, dst)  # ours fails: dst is now a non-empty directory

    monkeypatch.setattr(state_module.os, "rename", other_builder_lands_first)
    assert build_artifacts(final.parent.parent, first.scorer, cfg) == final
    assert json.loads((final / "meta.json").read_text())["built_at"] == built_at  # the winner's copy
    assert [p.name for p in final.parent.iterdir()] == [final.name]  # our temp copy was removed


def test_each_index_gets_its_configured_kind_above_the_threshold(tmp_path) -> None:
    from tests.serving.world import build_world

    w = build_world(tmp_path / "w", n_users=60, n_items=120, in_snapshot=50)
    hnsw_items = IndexConfig(exact_below=40, items_approx="hnsw", users_approx="ivf", hnsw_m=8)
    state = load_state(w.config(index=hnsw_items), Sources.read(w.config()))
    assert (state.items_index.factory, state.users_index.factory) == ("HNSW8,Flat", "IVF1,Flat")
    assert (state.items_index.budget, state.users_index.budget) == (IndexConfig.ef_search, IndexConfig.nprobe)
    default = load_state(w.config(index=IndexConfig(exact_below=40)), Sources.read(w.config()))
    assert default.items_index.factory == "IVF3,Flat"  # sqrt(120) ~ 8 lists, capped at 120 // 39 = 3
    queries = np.stack([default.scorer.query(default.store.embedding(i)) for i in range(50)])
    exact = exact_search(default.scorer.catalog.retrieval, queries, 10)
    assert recall_at_k(default.items_index.search(queries, 10, budget=3)[1], exact) == 1.0  # all lists: exact
