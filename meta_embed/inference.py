"""The one inference path of a trained model: what the refresh job, the evaluation and the
server compute from it. The exactness contract holds because they all call these:

- `catalog_vectors`: the item tower over every row of an encoded item table, once;
- `user_inputs`: the meta block's inputs of users before any event is known;
- `zero_step`: cold embeddings, the meta block at its initialization applied to those
  inputs (a forward pass, no MAML);
- `adapt_users`: adapted embeddings of users with events, in deterministic batches;
- `embed_users`: both at once for a `TaskSet` (adapted, or zero-step without events).

`item_vectors`, `event_inputs` and `embed_episodes` turn a training batch into the same
inputs; meta-training and the evidence scores use them.

Everything runs where the model is (`meta_embed.devices.device_of`): the caller puts the
model and the encoded tables on one device; batches are built there and embeddings come
back as CPU NumPy arrays.
"""

from __future__ import annotations

import numpy as np
import torch

from meta_embed.config import MamlConfig
from meta_embed.devices import device_of
from meta_embed.features import Encoded, take
from meta_embed.maml import adapt_and_embed
from meta_embed.model import TwoBlockModel
from meta_embed.tasks import Episodes, EventBlock, FeatureTables, Padded, TaskSet, pad

BLOCK_ROWS = 65536  # rows of a feature table run through a tower at once


def catalog_vectors(model: TwoBlockModel, items: Encoded) -> torch.Tensor:
    """Item-tower vectors (rows, item_dim) of every row of an encoded item table."""
    first = next(iter(items.values()))
    rows, device = first.shape[0], first.device
    with torch.no_grad():
        parts = [
            model.item_tower(take(items, torch.arange(s, min(s + BLOCK_ROWS, rows), device=device)))
            for s in range(0, rows, BLOCK_ROWS)
        ]
    return torch.cat(parts) if parts else torch.zeros(0, model.cfg.item_dim, device=device)


def item_vectors(model: TwoBlockModel, tables: FeatureTables, rows: torch.Tensor) -> torch.Tensor:
    """Item-tower vectors for item rows of any shape -> (*rows.shape, item_dim); the tower
    runs once per distinct row (a training batch's items, with gradients)."""
    uniq, inverse = torch.unique(rows, return_inverse=True)
    return model.item_tower(take(tables.items, uniq))[inverse]


def user_inputs(model: TwoBlockModel, users: Encoded, rows: torch.Tensor,
                new: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Meta-block inputs (users, in_dim) of the feature rows `rows`, with no known events;
    users where `new` (users,) is True read the out-of-vocabulary user-id row, as a user
    unknown to training does (where the spec has a user-id column)."""
    enc = take(users, rows)
    key = model.spec.user_key
    if new is not None and key in enc:
        enc[key] = enc[key].masked_fill(new, 0)
    return model.user_inputs(enc)


def event_inputs(model: TwoBlockModel, tables: FeatureTables, events: Padded):
    """(item vectors (users, slots, item_dim), context (users, slots, C) or None)."""
    return item_vectors(model, tables, events.items), model.context_vectors(events.context)


def zero_step(model: TwoBlockModel, x: torch.Tensor, batch_size: int | None = None) -> np.ndarray:
    """Zero-step (cold) embeddings (users, D) of meta-block inputs x, `batch_size` users at a time."""
    step = batch_size or max(len(x), 1)
    with torch.no_grad():
        parts = [model.meta(x[s : s + step]).cpu().numpy() for s in range(0, len(x), step)]
    return np.concatenate(parts) if parts else np.zeros((0, model.cfg.embedding_dim), np.float32)


def adapt_users(
    model: TwoBlockModel,
    cfg: MamlConfig,
    x: torch.Tensor,
    block: EventBlock,
    users: np.ndarray,
    catalog: torch.Tensor,
    batch_size: int = 64,
) -> np.ndarray:
    """Adapted meta embeddings (len(users), D) of `users` (indices into `block`, whose events
    are the support sets) with meta-block inputs x (len(users), in_dim), on x's device.

    Users are batched by support length, then position, so padding stays small and a
    user's batch never depends on the order it was asked in; `catalog` holds the item
    vectors of every item row the events name. A user without events keeps the
    initialization (the zero-step embedding).
    """
    out = np.zeros((len(users), model.cfg.embedding_dim), dtype=np.float32)
    order = np.lexsort((users, block.lengths[users]))
    for start in range(0, len(order), batch_size):
        pick = order[start : start + batch_size]
        support = pad(block, users[pick], x.device)
        with torch.no_grad():
            v = catalog[support.items]  # (users, slots, item_dim)
            ctx = model.context_vectors(support.context)
            xs = model.with_history(x[pick], v, support.y, support.mask)
        out[pick] = adapt_and_embed(model, xs, v, ctx, support.y, support.mask, cfg).cpu().numpy()
    return out


def embed_users(
    model: TwoBlockModel, tables: FeatureTables, tasks: TaskSet, cfg: MamlConfig, batch_size: int = 64
) -> np.ndarray:
    """Meta embeddings (users, D) float32 of every user of `tasks`, adapted on its support
    events (zero-step for users without any); results come back in task order. Batches of
    about 64 users keep the (users, slots, hidden) activations in cache. Runs on the model's
    device (the tables are moved there)."""
    device = device_of(model)
    tables = tables.to(device)
    catalog = catalog_vectors(model, tables.items)
    with torch.no_grad():
        x = user_inputs(model, tables.users, torch.as_tensor(tasks.user_rows, device=device))
    return adapt_users(model, cfg, x, tasks.support, np.arange(len(tasks)), catalog, batch_size)


def embed_episodes(
    model: TwoBlockModel, tables: FeatureTables, ep: Episodes, cfg: MamlConfig
) -> torch.Tensor:
    """Adapted meta embeddings (users, D) of one training batch, from its support events."""
    s = ep.support
    with torch.no_grad():
        v, ctx = event_inputs(model, tables, s)
        x = model.with_history(user_inputs(model, tables.users, ep.user_rows), v, s.y, s.mask)
    return adapt_and_embed(model, x, v, ctx, s.y, s.mask, cfg)
