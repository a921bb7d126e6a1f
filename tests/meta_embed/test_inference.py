"""The one inference path (meta_embed.inference), where the exactness contract is tested
once: a stored embedding reproduces the full adapted model's logits in both modes, cold
users get the zero-step embedding, and neither the catalog's blocks nor the order users are
asked in changes a result; on CUDA, where present, the embeddings agree with the CPU's within
float tolerance. (tests/serving/test_live.py holds the contract through HTTP.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meta_embed import inference
from meta_embed.config import MamlConfig
from meta_embed.features import take
from meta_embed.inference import (
    adapt_users,
    catalog_vectors,
    embed_users,
    event_inputs,
    item_vectors,
    user_inputs,  # fmt: skip
)
from meta_embed.maml import adapt
from meta_embed.tasks import cut, episodes
from meta_embed.train import timelines

from .conftest import tiny_model


@pytest.fixture(scope="module")
def tasks(world, spec, tables):
    history = timelines(world.events, tables, spec, "binary")
    split = history.support.lengths // 2
    split[:3] = 0  # three cold users
    return cut(history, np.arange(40), split[:40], max_support=12, max_query=8)


@pytest.mark.parametrize("mode", ["activation", "weights"])
def test_stored_embedding_reproduces_the_adapted_models_logits(spec, tables, tasks, mode):
    model = tiny_model(spec, mode=mode)
    cfg = MamlConfig(inner_steps=3, inner_lr=0.5)
    stored = torch.from_numpy(embed_users(model, tables, tasks, cfg, batch_size=16))  # (users, D)
    assert stored.shape == (len(tasks), model.cfg.embedding_dim)

    users = np.arange(len(tasks))
    ep = episodes(tasks, users)
    with torch.no_grad():
        v, ctx = event_inputs(model, tables, ep.support)
        support = (v, ep.support.y, ep.support.mask)
        x = model.with_history(user_inputs(model, tables.users, ep.user_rows), *support)
        params = adapt(model, x, v, ctx, ep.support.y, ep.support.mask, cfg)
        items = torch.arange(len(tables.item_ids)).expand(len(users), -1)  # every user x every item
        full = model(
            take(tables.users, ep.user_rows), take(tables.items, items), meta_params=params, support=support
        )
        online = model.global_block(stored.unsqueeze(1), item_vectors(model, tables, items))
    torch.testing.assert_close(online, full, rtol=0, atol=1e-5)
    assert not torch.allclose(stored[3:], model.meta(x)[3:], atol=1e-4)  # adaptation did something
    if model.cfg.history_inputs:  # and the history part of the inputs differs between users with events
        assert not torch.allclose(x[3:, -model.history_dim :], x[4:5, -model.history_dim :])


@pytest.mark.parametrize("mode", ["activation", "weights"])
def test_cold_users_get_the_zero_step_embedding(spec, tables, tasks, mode):
    model = tiny_model(spec, mode=mode)
    stored = embed_users(model, tables, tasks, MamlConfig(inner_steps=3))
    with torch.no_grad():
        zero = model.meta(user_inputs(model, tables.users, torch.from_numpy(tasks.user_rows[:3])))
    np.testing.assert_allclose(stored[:3], zero.numpy(), rtol=0, atol=1e-6)


def test_catalog_vectors_are_the_item_tower_of_each_row_whatever_the_blocks(spec, tables, monkeypatch):
    model = tiny_model(spec)
    whole = catalog_vectors(model, tables.items)
    monkeypatch.setattr(inference, "BLOCK_ROWS", 7)
    blocks = catalog_vectors(model, tables.items)
    rows = torch.arange(len(tables.item_ids) + 1)
    with torch.no_grad():
        torch.testing.assert_close(whole, model.item_tower(take(tables.items, rows)), rtol=0, atol=1e-6)
        torch.testing.assert_close(blocks, whole, rtol=0, atol=1e-6)
        torch.testing.assert_close(
            item_vectors(model, tables, rows[[5, 2, 5]]), whole[[5, 2, 5]], rtol=0, atol=1e-6
        )


def test_adapted_users_do_not_depend_on_who_else_is_asked(spec, tables, tasks):
    model = tiny_model(spec)
    cfg = MamlConfig(inner_steps=2)
    catalog = catalog_vectors(model, tables.items)
    with torch.no_grad():
        x = user_inputs(model, tables.users, torch.from_numpy(tasks.user_rows))
    users = np.arange(len(tasks))
    every = adapt_users(model, cfg, x, tasks.support, users, catalog, batch_size=8)
    some = users[::3][::-1].copy()  # a third of them, asked in reverse order, in other batches
    np.testing.assert_allclose(adapt_users(model, cfg, x[some], tasks.support, some, catalog, 5), every[some],
                               rtol=0, atol=1e-5)  # fmt: skip


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["activation", "weights"])
def test_embeddings_on_cuda_agree_with_the_cpu(spec, tables, tasks, mode):
    model = tiny_model(spec, mode=mode)
    cfg = MamlConfig(inner_steps=3)
    cpu = embed_users(model, tables, tasks, cfg, batch_size=16)  # cold users (zero-step) included
    cuda = embed_users(model.to("cuda"), tables, tasks, cfg, batch_size=16)
    np.testing.assert_allclose(cuda, cpu, rtol=1e-4, atol=1e-5)
