"""The scorer's exactness contract: its logits equal the core model's, in every path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import torch

from meta_embed import snapshot
from meta_embed.features import encode, take
from serving.scorer import ContextError
from tests.serving.world import SPEC

ITEM_ROWS = [0, 3, 17, 150, 299]
CONTEXT = {"device": "web", "hour": 13}


def context_enc(n_users: int, n_items: int, context: dict) -> dict[str, torch.Tensor]:
    rows = n_users * n_items
    table = pa.table({"device": [context["device"]] * rows, "hour": [float(context["hour"])] * rows})
    return {k: v.reshape(n_users, n_items) for k, v in encode(table, SPEC.context).items()}


def test_scores_equal_global_block_on_snapshot_embeddings(world, state) -> None:
    table, _ = snapshot.read_dir(snapshot.current_dir(world.root))
    emb = snapshot.embeddings_of(table)
    item_enc = take(encode(world.items, SPEC.item), torch.tensor(ITEM_ROWS))
    with torch.no_grad():
        ctx = world.model.context_vectors(context_enc(1, len(ITEM_ROWS), CONTEXT))[0]  # (items, C)
        want = world.model.global_block(torch.tensor(emb[4]), world.model.item_tower(item_enc), ctx).numpy()
    got = state.scorer.scores(emb[4], np.array(ITEM_ROWS), CONTEXT)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_scores_equal_full_model_with_adapted_params(world, state) -> None:
    users = torch.tensor([0, 9, 21])
    params = {k: p[users] for k, p in world.params.items()}
    items = torch.tensor([ITEM_ROWS] * len(users))  # (users, items)
    with torch.no_grad():
        full = world.model(
            take(encode(world.users, SPEC.user), users),
            take(encode(world.items, SPEC.item), items),
            context_enc(len(users), len(ITEM_ROWS), CONTEXT),
            meta_params=params,
        )  # (users, items)
    for j, u in enumerate(users.tolist()):
        e = state.store.embedding(state.store.row(f"u{u}"))
        got = state.scorer.scores(e, np.array(ITEM_ROWS), CONTEXT)
        np.testing.assert_allclose(got, full[j].numpy(), rtol=1e-5, atol=1e-6)


def test_missing_context_is_all_missing_values_not_no_context(world, state) -> None:
    e = state.store.embedding(0)
    none = state.scorer.scores(e, np.array(ITEM_ROWS))
    missing = {"device": None, "hour": None}
    np.testing.assert_array_equal(none, state.scorer.scores(e, np.array(ITEM_ROWS), missing))
    assert not np.allclose(none, state.scorer.scores(e, np.array(ITEM_ROWS), CONTEXT))


@pytest.mark.parametrize(
    "context, message",
    [
        ({"weather": "rain"}, "unknown keys"),
        ({"hour": "noon"}, "expected a number|could not convert"),
        ({"hour": float("nan")}, "finite"),
        ({"device": ["web"]}, "single value"),
    ],
)
def test_bad_context_is_refused_with_the_column_named(state, context, message) -> None:
    with pytest.raises(ContextError, match=message):
        state.scorer.scores(state.store.embedding(0), np.array([0]), context)


def test_retrieval_vectors_are_the_heads_outputs(world, state) -> None:
    e = state.store.embedding(2)
    with torch.no_grad():
        q = world.model.retrieval.query(torch.from_numpy(e)).numpy()
        v = world.model.item_tower(take(encode(world.items, SPEC.item), torch.tensor(ITEM_ROWS)))
        r = world.model.retrieval.item(v).numpy()
    np.testing.assert_allclose(state.scorer.query(e), q, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state.scorer.catalog.retrieval[ITEM_ROWS], r, rtol=1e-5, atol=1e-7)


def test_weights_mode_scores_equal_the_full_model_with_adapted_params(tmp_path) -> None:
    import dataclasses

    from serving.state import Sources, load_state
    from tests.serving.world import MODEL_CFG, build_world

    cfg = dataclasses.replace(MODEL_CFG, embedding_mode="weights", personal_rank=4)
    w = build_world(tmp_path / "w", n_users=12, n_items=40, in_snapshot=10, model_cfg=cfg)
    state = load_state(w.config(), Sources.read(w.config()))
    assert state.store.meta.embedding_mode == "weights" and state.store.meta.dim == 4 * 8 + 4
    users, items = torch.tensor([0, 3, 9]), [1, 5, 39]
    params = {k: p[users] for k, p in w.params.items()}
    with torch.no_grad():
        item_enc = take(encode(w.items, SPEC.item), torch.tensor([items] * 3))
        full = w.model(
            take(encode(w.users, SPEC.user), users),
            item_enc,
            context_enc(3, len(items), CONTEXT),
            meta_params=params,
        )
    for j, u in enumerate(users.tolist()):
        got = state.scorer.scores(state.store.embedding(state.store.row(f"u{u}")), np.array(items), CONTEXT)
        np.testing.assert_allclose(got, full[j].numpy(), rtol=1e-5, atol=1e-6)


def test_dict_and_hashed_id_lookups_agree(state) -> None:
    catalog = state.scorer.catalog
    ids = catalog.ids.ids.to_pylist()
    query = [ids[5], "no-such-item", ids[0], ids[-1], ids[5], ""]
    assert catalog.rows_by_id is not None  # a small catalog keeps the dict
    hashed = dataclasses.replace(catalog, rows_by_id=None)  # what a catalog over DICT_MAX_ITEMS uses
    np.testing.assert_array_equal(catalog.rows(query), [5, -1, 0, len(ids) - 1, 5, -1])
    np.testing.assert_array_equal(hashed.rows(query), catalog.rows(query))
