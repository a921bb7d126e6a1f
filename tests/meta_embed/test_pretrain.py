"""The shared model's own training and the user-id input: pretraining is deterministic for a
seed and lowers the zero-step loss; the zero-step term of a meta-training batch is the loss of
the query events at zero steps; a user the vocabulary does not know reads the OOV row, as a
held-out or dropped-out user does."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from meta_embed.config import MamlConfig, TrainConfig
from meta_embed.features import with_user_ids
from meta_embed.inference import item_vectors, user_inputs
from meta_embed.maml import pointwise_loss
from meta_embed.pretrain import zero_step_loss
from meta_embed.tasks import FeatureTables, cut, episodes
from meta_embed.train import TwoBlockTrainTask, meta_train, timelines, without_ids

from .conftest import tiny_model

FAST = TrainConfig(batch_users=32, lr=1e-2, max_epochs=1, patience=1, val_fraction=0.25, progress=False,
                   seed=3, max_query=20, threads=1, pretrain_epochs=2, pretrain_batch=256)  # fmt: skip


@pytest.fixture(scope="module")
def history(world, spec, tables):
    return timelines(world.events, tables, spec, "binary")


def _all_events(history, tables):
    rows = torch.from_numpy(np.repeat(history.user_rows, history.support.lengths))
    return rows, torch.from_numpy(history.support.item_rows), torch.from_numpy(history.support.target)


def test_pretraining_is_deterministic_for_a_seed_and_fits_the_zero_step_path(spec, tables, history):
    before = tiny_model(spec)
    with torch.no_grad():
        start = float(zero_step_loss(before, tables, *_all_events(history, tables)))
    results = [
        meta_train(tiny_model(spec), tables, history, FAST, MamlConfig(inner_steps=1)) for _ in range(2)
    ]
    a, b = (r.model.state_dict() for r in results)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same seed, the same weights
    assert [r["loss"] for r in results[0].pretrain_history] == [
        r["loss"] for r in results[1].pretrain_history
    ]
    assert len(results[0].pretrain_history) == 2
    assert results[0].pretrain_history[-1]["loss"] < start  # pretraining fit every event at zero steps


def test_zero_step_term_is_the_query_loss_at_zero_steps(spec, tables, history):
    model = tiny_model(spec)
    ep = episodes(cut(history, np.arange(16), history.support.lengths[:16] // 2, 10, 10), np.arange(16))
    base = dataclasses.replace(FAST, retrieval_weight=0.0, pretrain_epochs=0)
    maml = MamlConfig(inner_steps=1)
    with torch.no_grad():
        plain, task = TwoBlockTrainTask(model, tables, maml, base)(ep)
        both, same = TwoBlockTrainTask(model, tables, maml, dataclasses.replace(base, zero_step_weight=0.5))(
            ep
        )
        e0 = model.meta(user_inputs(model, tables.users, ep.user_rows))
        pred = model.global_block(e0.unsqueeze(1), item_vectors(model, tables, ep.query.items))
        losses = pointwise_loss(pred, ep.query.y, "binary")
        cold = (losses * ep.query.mask).sum() / ep.query.mask.sum()
    assert torch.equal(plain, task) and torch.equal(task, same)  # the reported task loss stays the query's
    torch.testing.assert_close(both, task + 0.5 * cold)


def test_a_user_the_vocabulary_lacks_reads_the_oov_row(world, spec):
    known = world.users["user_id"].to_pylist()[:100]  # the users with "training events"
    id_spec = with_user_ids(spec, known, dim=3)
    tables = FeatureTables.build(id_spec, world.users, world.items)
    model = tiny_model(id_spec)
    ids = tables.users["user_id"]
    assert ids[:100].min() > 0 and torch.all(ids[100:-1] == 0)  # users 100+ are new: OOV
    rows = torch.arange(110)
    with torch.no_grad():
        own, as_new = (
            user_inputs(model, tables.users, rows),
            user_inputs(model, tables.users, rows, torch.ones(110, dtype=torch.bool)),
        )
        held_out = user_inputs(model, without_ids(tables, "user_id", np.arange(50)).users, rows)
    torch.testing.assert_close(own[100:], as_new[100:])  # a new user is already OOV
    assert not torch.allclose(own[:100], as_new[:100])  # a known user's own row differs from OOV
    torch.testing.assert_close(held_out[:50], as_new[:50])  # held-out users read OOV in validation
    torch.testing.assert_close(held_out[50:], own[50:])


def test_training_with_user_ids_keeps_cold_tasks_on_the_oov_row(world, spec):
    id_spec = with_user_ids(spec, world.users["user_id"].to_pylist(), dim=3)
    tables = FeatureTables.build(id_spec, world.users, world.items)
    history = timelines(world.events, tables, id_spec, "binary")
    ep = episodes(cut(history, np.arange(8), np.array([0, 0, 3, 3, 3, 3, 3, 3]), 10, 10), np.arange(8))
    task = TwoBlockTrainTask(
        tiny_model(id_spec), tables, MamlConfig(), dataclasses.replace(FAST, user_id_dropout=0.0)
    )
    assert (
        task._new(ep).tolist() == [True, True] + [False] * 6
    )  # cold tasks are new users; no dropout otherwise
