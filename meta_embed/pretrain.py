"""Supervised pretraining of the shared model, before meta-training.

Every event of the training users is scored as a cold user would be scored: the
zero-step embedding (the meta block's initialization applied to the user's features, no
history) through the global block against the item tower's vector, and the pointwise loss
trains the user-feature embeddings, the meta block's initialization, the item tower and
the global block together, as a wide-and-deep model without ids trains on every event.
Meta-training then starts from that shared model (MetaEmb and CVAR pretrain their base
model the same way). Deterministic for a seed: event order comes from the seeded rng.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from meta_embed.config import TrainConfig
from meta_embed.devices import device_of
from meta_embed.inference import item_vectors, user_inputs
from meta_embed.maml import pointwise_loss
from meta_embed.model import TwoBlockModel
from meta_embed.tasks import FeatureTables, TaskSet, range_index


def zero_step_loss(model: TwoBlockModel, tables: FeatureTables, user_rows: torch.Tensor,
                   item_rows: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Mean pointwise loss of events (user row, item row, target), each user at zero steps and
    read as a new user (out-of-vocabulary id, where the spec has one): the shared model."""
    new = torch.ones(len(user_rows), dtype=torch.bool, device=user_rows.device)
    e = model.meta(user_inputs(model, tables.users, user_rows, new))  # (events, D)
    pred = model.global_block(e, item_vectors(model, tables, item_rows))  # (events,)
    return pointwise_loss(pred, y, model.cfg.objective).mean()


def pretrain(model: TwoBlockModel, tables: FeatureTables, history: TaskSet, users: np.ndarray,
             cfg: TrainConfig, rng: np.random.Generator) -> list[dict[str, float]]:  # fmt: skip
    """`cfg.pretrain_epochs` passes over every event of `users` (indices of `history`, whose
    support blocks are whole timelines) in random batches of `cfg.pretrain_batch` events, on
    the model's device (`tables` there too); returns one row per epoch (mean loss, seconds).
    Context columns are not used here."""
    block = history.support
    idx = range_index(block.offsets[users], block.lengths[users])  # (events,) flat rows of those users
    owner = np.repeat(history.user_rows[users], block.lengths[users])  # (events,) their feature rows
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    device, rows = device_of(model), []
    for epoch in range(1, cfg.pretrain_epochs + 1):
        start, order, losses = time.perf_counter(), rng.permutation(len(idx)), []
        for s in range(0, len(order), cfg.pretrain_batch):
            pick = order[s : s + cfg.pretrain_batch]
            loss = zero_step_loss(model, tables, torch.as_tensor(owner[pick], device=device),
                                  torch.as_tensor(block.item_rows[idx[pick]], device=device),
                                  torch.as_tensor(block.target[idx[pick]], device=device))  # fmt: skip
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
        rows.append(
            {"pretrain_epoch": epoch, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - start}
        )
    return rows
