"""Meta-training: task sampling, the retrieval loss, learning on a planted world,
early stopping with best-state restore, determinism for a seed, the same weights whatever
the device flag on the CPU (and CUDA within tolerance where present); and the AUC helpers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from meta_embed import checkpoint, metrics
from meta_embed.config import MamlConfig, TrainConfig
from meta_embed.devices import CPU, device_of
from meta_embed.inference import event_inputs, user_inputs
from meta_embed.maml import adapt, pointwise_loss
from meta_embed.tasks import FeatureTables, Padded, cut, episodes
from meta_embed.train import (
    TwoBlockTrainTask,
    fixed_splits,
    meta_train,
    query_metrics,
    retrieval_loss,
    sample_splits,
    timelines,
)

from .conftest import make_world, tiny_model, tiny_spec

FAST = TrainConfig(
    batch_users=32,
    lr=1e-2,
    max_epochs=2,
    patience=2,
    val_fraction=0.25,
    progress=False,
    seed=1,
    max_query=20,
    threads=1,
)


@pytest.fixture(scope="module")
def history(world, spec, tables):
    return timelines(world.events, tables, spec, "binary")


def test_sampled_splits_leave_support_and_query_or_make_cold_users():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 50, 5000)
    split = sample_splits(lengths, rng, cold_fraction=0.2)
    warm = split > 0
    assert np.all(split[warm] < lengths[warm]) and np.all(split[lengths == 1] == 0)
    assert 0.17 < np.mean(~warm[lengths > 1]) < 0.23
    long_warm = split[(lengths == 49) & warm]
    assert long_warm.min() == 1 and long_warm.max() == 48  # every position of a timeline is used
    fixed = fixed_splits(np.array([2, 3, 10, 100]), max_query=20)
    assert fixed.tolist() == [1, 1, 5, 80]  # query = last 20, keeping at least half as support


def test_retrieval_softmax_masks_other_positives_of_the_same_user(spec):
    model = tiny_model(spec)
    e = torch.randn(2, model.cfg.embedding_dim)
    v = torch.randn(2, 3, model.cfg.item_dim)
    # user 0: positives on items 5 and 6, a negative on 7; user 1: a positive on item 5.
    query = Padded(
        items=torch.tensor([[5, 6, 7], [5, 0, 0]]),
        y=torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
        mask=torch.tensor([[True, True, True], [True, False, False]]),
        context=None,
    )
    v[1, 0] = v[0, 0]  # same item, same vector
    loss = retrieval_loss(model, e, v, query, 0.5, "softmax")
    with torch.no_grad():
        q, r = model.retrieval.query(e), model.retrieval.item(v)
        s = q @ torch.stack([r[0, 0], r[0, 1]]).T  # candidates: items 5, 6
        expected = torch.stack(
            [
                -F.log_softmax(s[0, :1], 0)[0],  # (u0, 5): item 6 masked
                -F.log_softmax(s[0, 1:], 0)[0],  # (u0, 6): item 5 masked
                -F.log_softmax(s[1], 0)[0],
            ]
        ).mean()  # (u1, 5): item 6 is a negative
    torch.testing.assert_close(loss.detach(), expected)


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_the_retrieval_head_is_trained_only_through_its_loss(spec, tables, history, weight):
    model = tiny_model(spec)
    tasks = cut(history, np.arange(20), history.support.lengths[:20] // 2, 10, 10)
    task = TwoBlockTrainTask(
        model, tables, MamlConfig(inner_steps=1), dataclasses.replace(FAST, retrieval_weight=weight)
    )
    loss, _ = task(episodes(tasks, np.arange(20)))
    loss.backward()
    grad = model.retrieval.item.weight.grad
    assert (grad is not None and grad.abs().sum() > 0) == (weight > 0)


@pytest.mark.parametrize(("objective", "first_order"), [("binary", False), ("regression", True)])
def test_meta_training_improves_held_out_users_and_restores_the_best_state(objective, first_order):
    world = make_world(n_users=300, seed=1)
    spec = tiny_spec(world)
    tables = FeatureTables.build(spec, world.users, world.items)
    model = tiny_model(spec, objective=objective)
    data = timelines(world.events, tables, spec, objective)
    maml = MamlConfig(
        inner_steps=2, inner_lr=0.5 if objective == "binary" else 0.1, first_order=first_order, max_support=20
    )
    result = meta_train(model, tables, data, dataclasses.replace(FAST, max_epochs=5, patience=5), maml)
    loss = "val_logloss" if objective == "binary" else "val_mse"
    untrained, best = result.history[0], result.history[result.best_epoch]
    assert result.best_epoch > 0 and best[loss] < untrained[loss] - (0.02 if objective == "binary" else 0.1)
    if objective == "binary":  # selected on held-out users' per-user AUC, which rose above chance
        assert (
            result.metric == "user_auc" and best["val_user_auc"] > max(untrained["val_user_auc"], 0.5) + 0.02
        )
    if objective == "regression":  # the output bias starts at the mean rating, so epoch 0 is no strawman
        assert abs(untrained["val_mse"] - float(np.var(data.support.target))) < 0.3
    lengths = data.support.lengths
    val = np.flatnonzero(
        np.isin(data.user_ids.to_numpy(zero_copy_only=False), result.val_user_ids.to_pylist())
    )
    tasks = cut(data, val, fixed_splits(lengths[val], FAST.max_query), maml.max_support, FAST.max_query)
    again = query_metrics(result.model, tables, tasks, maml)
    assert again[result.metric] == pytest.approx(result.best_metric, abs=1e-9)  # best state restored
    assert again[loss[4:]] == pytest.approx(best[loss], abs=1e-9)


def test_training_is_deterministic_for_a_seed(spec, tables, history):
    maml = MamlConfig(inner_steps=1, max_support=10)

    def run(seed: int):
        model = tiny_model(spec, seed=seed)
        result = meta_train(model, tables, history, dataclasses.replace(FAST, seed=seed), maml)
        return [row["train_loss"] for row in result.history[1:]], model.state_dict()

    (loss_a, state_a), (loss_b, state_b) = run(4), run(4)
    assert loss_a == loss_b
    for k in state_a:
        assert torch.equal(state_a[k], state_b[k]), k
    loss_c, _ = run(5)
    assert loss_c != loss_a


def test_the_device_flag_changes_nothing_on_the_cpu(spec, tables, history):
    """device "cpu" (and "auto" without CUDA) trains the very weights of the default config,
    and the model comes back on the CPU: the checkpoint version does not see the flag."""
    maml = MamlConfig(inner_steps=1, max_support=10)

    def version(device: str | None) -> str:
        cfg = FAST if device is None else dataclasses.replace(FAST, device=device)
        result = meta_train(tiny_model(spec, seed=4), tables, history, cfg, maml)
        assert device_of(result.model) == CPU
        return checkpoint.model_version(result.model, maml)

    default = version(None)
    assert version("cpu") == default
    if not torch.cuda.is_available():
        assert version("auto") == default


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_agrees_with_the_cpu(spec, tables, history):
    maml = MamlConfig(inner_steps=2, max_support=10)
    cfg = dataclasses.replace(FAST, retrieval_weight=0.5, pretrain_epochs=1, zero_step_weight=0.5)
    cpu = meta_train(tiny_model(spec, seed=4), tables, history, cfg, maml)
    cuda = meta_train(
        tiny_model(spec, seed=4), tables, history, dataclasses.replace(cfg, device="cuda"), maml
    )
    assert device_of(cuda.model) == CPU  # saved and served like any other model
    assert cuda.history[0]["val_auc"] == pytest.approx(cpu.history[0]["val_auc"], abs=1e-3)  # same start
    assert cuda.history[1]["train_loss"] == pytest.approx(cpu.history[1]["train_loss"], rel=1e-2)
    assert cuda.best_metric == pytest.approx(cpu.best_metric, abs=0.02)


def test_auc_helpers_match_a_brute_force_count():
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=300).round(1), rng.random(300) < 0.3  # many ties
    groups = rng.integers(0, 4, 300)

    def brute(s, y):
        p, n = s[y][:, None], s[~y][None, :]
        return ((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size)

    assert metrics.auc(scores, labels) == pytest.approx(brute(scores, labels))
    per = metrics.grouped_auc(scores, labels, groups)
    assert per == pytest.approx([brute(scores[groups == g], labels[groups == g]) for g in range(4)])
    assert np.isnan(metrics.auc(scores, np.zeros(300)))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("select_on", "gauc"),
        ("loss_weighting", "item"),
        ("lr", 0.0),
        ("cold_fraction", 1.0),
        ("retrieval_loss", "hinge"),
    ],
)
def test_train_config_refuses_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
        TrainConfig(**{field: value})


def test_event_weighting_counts_every_query_event_and_user_weighting_every_user(spec, tables, history):
    model = tiny_model(spec)
    ep = episodes(cut(history, np.arange(8), history.support.lengths[:8] // 2, 10, 10), np.arange(8))
    maml = MamlConfig(inner_steps=1)
    no_aux = dataclasses.replace(FAST, retrieval_weight=0.0)
    with torch.no_grad():
        _, by_event = TwoBlockTrainTask(
            model, tables, maml, dataclasses.replace(no_aux, loss_weighting="event")
        )(ep)
        _, by_user = TwoBlockTrainTask(
            model, tables, maml, dataclasses.replace(no_aux, loss_weighting="user")
        )(ep)
        x = user_inputs(model, tables.users, ep.user_rows)
        v_s, ctx_s = event_inputs(model, tables, ep.support)
        x = model.with_history(x, v_s, ep.support.y, ep.support.mask)
        params = adapt(model, x, v_s, ctx_s, ep.support.y, ep.support.mask, maml)
        v_q, ctx_q = event_inputs(model, tables, ep.query)
        losses = pointwise_loss(
            model.global_block(model.meta.embed(params, x).unsqueeze(1), v_q, ctx_q), ep.query.y, "binary"
        )
    m = ep.query.mask
    torch.testing.assert_close(by_event, losses[m].mean())
    per_user = torch.stack([losses[u][m[u]].mean() for u in range(len(m)) if m[u].any()])
    torch.testing.assert_close(by_user, per_user.mean())
    assert len(set(m.sum(1).tolist())) > 1 and not torch.isclose(by_event, by_user)  # the two differ here


def test_each_epoch_logs_its_loss_validation_and_best_so_far(spec, tables, history, caplog):
    caplog.set_level("INFO", logger="meta_embed.train")
    cfg = dataclasses.replace(
        FAST, max_epochs=6, patience=1, lr=1.0, progress=True
    )  # a huge step: stops early
    result = meta_train(tiny_model(spec), tables, history, cfg, MamlConfig(inner_steps=1, max_support=10))
    lines = [r.getMessage() for r in caplog.records if r.name == "meta_embed.train"]
    epochs = result.history[1:]
    assert (
        len(epochs) < cfg.max_epochs
        and lines[-1] == "stopped early: no better validation user_auc for 1 epochs"
    )
    for row, line in zip(epochs, lines):
        best = max(r["val_user_auc"] for r in result.history[1 : row["epoch"] + 1])
        assert line.startswith(
            f"epoch {row['epoch']}/6: train loss {row['train_loss']:.4f}, validation user_auc "
            f"{row['val_user_auc']:.4f} (best {best:.4f} at epoch "
        ), line
    assert len(lines) == len(epochs) + 1
