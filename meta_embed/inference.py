"""Turning task batches into model inputs, and `embed_users`: adapted meta embeddings
for many users at once. Used by meta-training, the refresh job and the evaluation.
"""

from __future__ import annotations

import numpy as np
import torch

from meta_embed.config import MamlConfig
from meta_embed.features import take
from meta_embed.maml import adapt_and_embed
from meta_embed.model import TwoBlockModel
from meta_embed.tasks import Episodes, FeatureTables, Padded, TaskSet, episodes


def item_vectors(model: TwoBlockModel, tables: FeatureTables, rows: torch.Tensor) -> torch.Tensor:
    """Item-tower vectors for item rows of any shape -> (*rows.shape, item_dim).

    The tower runs once per distinct item in `rows`.
    """
    uniq, inverse = torch.unique(rows, return_inverse=True)
    return model.item_tower(take(tables.items, uniq))[inverse]


def user_inputs(model: TwoBlockModel, tables: FeatureTables, user_rows: torch.Tensor) -> torch.Tensor:
    return model.user_inputs(take(tables.users, user_rows))  # (users, in_dim)


def event_inputs(model: TwoBlockModel, tables: FeatureTables, events: Padded):
    """(item vectors (users, slots, item_dim), context (users, slots, C) or None)."""
    return item_vectors(model, tables, events.items), model.context_vectors(events.context)


def embed_episodes(model: TwoBlockModel, tables: FeatureTables, ep: Episodes, cfg: MamlConfig,
                   catalog: torch.Tensor | None = None) -> torch.Tensor:
    """Adapted meta embeddings (users, D) of one batch, from its support events.

    `catalog`: item-tower vectors of every item row, if already computed.
    """
    s = ep.support
    with torch.no_grad():
        if catalog is None:
            v, ctx = event_inputs(model, tables, s)
        else:
            v, ctx = catalog[s.items], model.context_vectors(s.context)
        x = model.with_history(user_inputs(model, tables, ep.user_rows), v, s.y, s.mask)
    return adapt_and_embed(model, x, v, ctx, s.y, s.mask, cfg)


def embed_users(model: TwoBlockModel, tables: FeatureTables, tasks: TaskSet, cfg: MamlConfig,
                batch_size: int = 64) -> np.ndarray:
    """Meta embeddings (users, D) float32 for every user of `tasks`, adapted on its support.

    Users without support events get the zero-step embedding. The item tower runs once
    per catalog item. Users are batched by support length so that padding stays small
    (batches of about 64 users keep the (users, slots, hidden) activations in
    cache); results come back in task order.
    """
    out = np.zeros((len(tasks), model.cfg.embedding_dim), dtype=np.float32)
    with torch.no_grad():
        catalog = model.item_tower(tables.items)  # (items + 1, item_dim): every item once
    order = np.argsort(tasks.support.lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        users = order[start:start + batch_size]
        out[users] = embed_episodes(model, tables, episodes(tasks, users), cfg, catalog).numpy()
    return out
