"""The served model is the trained global block: `convert` must give the logits of the MLP
over the concatenated inputs that the checkpoint's weights are defined on, for one user
against any rows of the catalog, with or without a request context."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meta_embed.config import ModelConfig
from meta_embed.model import GlobalBlock
from serving.served_model import convert


@pytest.mark.parametrize("mode", ["activation", "weights"])
def test_converted_block_gives_the_trained_blocks_logits(mode):
    torch.manual_seed(0)
    cfg = ModelConfig(embedding_mode=mode, meta_dim=5, item_dim=4, personal_rank=3, global_hidden=(7, 6))
    block = GlobalBlock(cfg, context_dim=2)
    with torch.no_grad():  # trained weights are not the initial ones: give the linear item term a value too
        block.item_bias.weight.normal_()
    e = torch.randn(cfg.embedding_dim)  # one user
    v, ctx = torch.randn(9, 4), torch.randn(2)  # the catalog's 9 items; one request's context
    ev, cv = e.expand(9, -1), ctx.expand(9, -1)
    if mode == "activation":
        parts = [ev, v, block.project(ev) * v, cv]
    else:
        wv, c = ev[..., :12].unflatten(-1, (3, 4)), ev[..., 12:]
        parts = [torch.relu(torch.einsum("...rh,...h->...r", wv, v) + c), v, cv]
    want = (block.mlp(torch.cat(parts, dim=-1)).squeeze(-1) + block.item_bias(v).squeeze(-1)).detach().numpy()

    served = convert(block, block.item_side(v))  # items prepared without context, once
    extra = block.context_term(ctx).detach().numpy()
    np.testing.assert_allclose(served(e.numpy(), np.arange(9), extra), want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        served(e.numpy(), np.array([8, 0, 8]), extra), want[[8, 0, 8]], rtol=0, atol=1e-6
    )
    no_ctx = block(e, v).detach().numpy()  # without a context: the trained block's own forward
    np.testing.assert_allclose(served(e.numpy(), np.arange(9)), no_ctx, rtol=0, atol=1e-6)
