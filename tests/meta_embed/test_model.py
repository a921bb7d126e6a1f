"""The two-block model: the weights-mode embedding is the personal layer, the global block
is the MLP of its concatenated inputs, and the history summary is what its docstring says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meta_embed.inference import user_inputs
from meta_embed.tasks import cut
from meta_embed.train import timelines

from .conftest import tiny_model


@pytest.fixture(scope="module")
def tasks(world, spec, tables):
    history = timelines(world.events, tables, spec, "binary")
    split = history.support.lengths // 2
    split[:3] = 0  # three cold users
    return cut(history, np.arange(40), split[:40], max_support=12, max_query=8)


def test_weights_mode_embedding_is_the_personal_layer(spec, tables, tasks):
    model = tiny_model(spec, mode="weights")
    with torch.no_grad():
        x = user_inputs(model, tables.users, torch.from_numpy(tasks.user_rows[:4]))
        e = model.meta(x)
        w = model.meta.weights
        np.testing.assert_allclose(e[:, : 3 * 6].numpy(), w["wv"].flatten().expand(4, -1).numpy())
        np.testing.assert_allclose(e[:, 3 * 6 :].numpy(), (x @ w["wx"].T + w["b"]).numpy(), atol=1e-6)


@pytest.mark.parametrize("mode", ["activation", "weights"])
def test_global_block_is_the_mlp_of_the_concatenated_inputs(mode):
    """The first layer is applied in parts (items once, users once); it must equal the
    MLP over the concatenation the checkpoints' weights are defined on."""
    from meta_embed.config import ModelConfig
    from meta_embed.model import GlobalBlock

    torch.manual_seed(0)
    cfg = ModelConfig(embedding_mode=mode, meta_dim=5, item_dim=4, personal_rank=3, global_hidden=(7, 6))
    block = GlobalBlock(cfg, context_dim=2)
    e = torch.randn(3, 1, cfg.embedding_dim)  # 3 users
    v, ctx = torch.randn(3, 9, 4), torch.randn(3, 9, 2)  # 9 events each
    ee = e.expand(3, 9, -1)
    if mode == "activation":
        parts = [ee, v, block.project(ee) * v, ctx]
    else:
        wv, c = ee[..., :12].unflatten(-1, (3, 4)), ee[..., 12:]
        parts = [torch.relu(torch.einsum("...rh,...h->...r", wv, v) + c), v, ctx]
    want = block.mlp(torch.cat(parts, dim=-1)).squeeze(-1)
    torch.testing.assert_close(block(e, v, ctx), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        block(e[0, 0], v[0], ctx[0]), want[0], rtol=0, atol=1e-6
    )  # one user, unbatched


def test_history_summary_is_the_mean_the_centered_mean_and_the_log_count(spec, tables):
    model = tiny_model(spec)
    d = model.cfg.item_dim
    with torch.no_grad():
        x = user_inputs(model, tables.users, torch.tensor([0, 1]))  # (2, in_dim), zero history part
        assert model.history_dim == 2 * d + 1 and torch.all(x[:, -model.history_dim :] == 0)
        v = torch.zeros(2, 3, d)
        v[0, :, 0] = torch.tensor([1.0, 3.0, 99.0])  # user 0: two events (the third slot is padding)
        v[0, :, 1] = torch.tensor([2.0, 2.0, 99.0])
        y = torch.tensor([[1.0, 0.0, 5.0], [0.0, 0.0, 0.0]])
        mask = torch.tensor([[True, True, False], [False, False, False]])  # user 1: no events
        h = model.with_history(x, v, y, mask)[:, -model.history_dim :]
    torch.testing.assert_close(h[0, :d][:2], torch.tensor([2.0, 2.0]))  # mean item vector
    # centered labels +0.5, -0.5: (0.5 * [1, 2] - 0.5 * [3, 2]) / 2 = [-0.5, 0]
    torch.testing.assert_close(h[0, d : 2 * d][:2], torch.tensor([-0.5, 0.0]))
    torch.testing.assert_close(h[0, -1], torch.log(torch.tensor(3.0)))
    assert torch.all(h[0, :d][2:] == 0) and torch.all(h[1] == 0)  # a user without events keeps zeros
    torch.testing.assert_close(
        model.with_history(x, v, y, mask)[:, : -model.history_dim], x[:, : -model.history_dim]
    )
