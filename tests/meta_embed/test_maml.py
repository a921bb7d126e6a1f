"""Behaviour of the batched inner loop: what MAML must do, checked against hand-built
references, per-user loops and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meta_embed.config import MamlConfig
from meta_embed.inference import event_inputs, user_inputs
from meta_embed.maml import adapt, adapt_and_embed, masked_user_mean, pointwise_loss, support_losses
from meta_embed.model import batched
from meta_embed.tasks import cut, episodes
from meta_embed.train import timelines

from .conftest import tiny_model

USERS = np.array([0, 3, 7, 11, 19, 23])


@pytest.fixture(scope="module")
def tasks(world, spec, tables):
    history = timelines(world.events, tables, spec, "binary")
    lengths = history.support.lengths
    split = np.maximum(lengths // 2, 1)
    split[3] = 0  # one cold user: empty support
    return cut(history, np.arange(len(history)), split, max_support=15, max_query=10)


def inputs(model, tables, tasks, users=USERS, query=False):
    ep = episodes(tasks, users)
    block = ep.query if query else ep.support
    v, ctx = event_inputs(model, tables, block)
    return user_inputs(model, tables.users, ep.user_rows), v, ctx, block.y.to(v.dtype), block.mask


def query_loss(model, params, x, q):
    _, vq, cq, yq, mq = q
    return support_losses(model, params, x, vq, cq, yq, mq).sum()


def test_zero_steps_leave_the_initialization_and_outputs_unchanged(spec, tables, tasks):
    model = tiny_model(spec)
    x, v, ctx, y, mask = inputs(model, tables, tasks)
    cfg = MamlConfig(inner_steps=0)
    params = adapt(model, x, v, ctx, y, mask, cfg)
    for k, p in model.meta.init_params().items():
        torch.testing.assert_close(params[k], p.expand_as(params[k]), rtol=0, atol=0)
    torch.testing.assert_close(
        adapt_and_embed(model, x, v, ctx, y, mask, cfg), model.meta(x.detach()), rtol=0, atol=0
    )


def test_one_step_lowers_every_users_support_loss(spec, tables, tasks):
    model = tiny_model(spec)
    with torch.no_grad():
        x, v, ctx, y, mask = inputs(model, tables, tasks)
        before = support_losses(model, batched(model.meta.init_params(), len(x)), x, v, ctx, y, mask)
    params = adapt(model, x, v, ctx, y, mask, MamlConfig(inner_steps=1, inner_lr=0.05))
    after = support_losses(model, params, x, v, ctx, y, mask).detach()
    has = mask.any(1)
    assert torch.all(after[has] < before[has])
    torch.testing.assert_close(after[~has], before[~has])  # the cold user keeps its loss


@pytest.mark.parametrize("second_order", [False, True])
def test_meta_gradient_reaches_the_initialization(spec, tables, tasks, second_order):
    model = tiny_model(spec)
    x, v, ctx, y, mask = inputs(model, tables, tasks)
    params = adapt(model, x, v, ctx, y, mask, MamlConfig(inner_steps=2), second_order=second_order)
    query_loss(model, params, x, inputs(model, tables, tasks, query=True)).backward()
    for name, p in model.meta.weights.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.item_tower.mlp[0].weight.grad.abs().sum() > 0


# --- hand-computed reference (activation mode, NumPy, float64) -----------------------


def _forward_backward(theta, glob, x, v, y):
    """Support BCE loss (mean over events) and its gradient wrt the meta block, by hand."""
    a = theta["w1"] @ x + theta["b1"]
    h = np.maximum(a, 0)
    e = theta["w2"] @ h + theta["b2"]  # (D,)
    p = glob["P"] @ e  # (item_dim,)
    z = np.concatenate([np.broadcast_to(e, (len(v), len(e))), v, p * v], axis=1)  # (n, D + 2 item_dim)
    pre = z @ glob["A"].T + glob["a"]
    g = np.maximum(pre, 0)
    out = g @ glob["c"] + glob["c0"]  # (n,)
    d_out = (1 / (1 + np.exp(-out)) - y) / len(y)
    d_z = ((d_out[:, None] * glob["c"]) * (pre > 0)) @ glob["A"]  # (n, D + 2 item_dim)
    d_dim, i_dim = len(e), v.shape[1]
    d_e = d_z[:, :d_dim].sum(0) + glob["P"].T @ (d_z[:, d_dim + i_dim :] * v).sum(0)
    d_a = (theta["w2"].T @ d_e) * (a > 0)
    return {"w1": np.outer(d_a, x), "b1": d_a, "w2": np.outer(d_e, h), "b2": d_e}


def test_first_order_matches_a_hand_computed_reference(spec, tables, tasks):
    model = tiny_model(spec, seed=3, global_hidden=(6,))  # one hidden layer keeps the reference short
    cfg = MamlConfig(inner_steps=2, inner_lr=0.3, first_order=True)
    users = np.array([5])
    x, v, ctx, y, mask = inputs(model, tables, tasks, users)
    params = adapt(model, x, v, ctx, y, mask, cfg, second_order=False)
    q = inputs(model, tables, tasks, users, query=True)
    query_loss(model, params, x, q).backward()

    mlp, n, nq = model.global_block.mlp, int(mask.sum()), int(q[4].sum())
    glob = {
        "P": model.global_block.project.weight,
        "A": mlp[0].weight,
        "a": mlp[0].bias,
        "c": mlp[2].weight[0],
        "c0": mlp[2].bias[0],
    }
    glob = {k: t.detach().double().numpy() for k, t in glob.items()}
    xn = x[0].detach().double().numpy()
    vn, yn = v[0, :n].detach().double().numpy(), y[0, :n].double().numpy()
    theta = {k: p.detach().double().numpy() for k, p in model.meta.init_params().items()}
    for _ in range(cfg.inner_steps):
        grads = _forward_backward(theta, glob, xn, vn, yn)
        theta = {k: theta[k] - cfg.inner_lr * grads[k] for k in theta}
    for k in theta:
        np.testing.assert_allclose(params[k][0].detach().numpy(), theta[k], atol=1e-5)
    # First-order meta-gradient = the query-loss gradient at the adapted weights.
    vq, yq = q[1][0, :nq].detach().double().numpy(), q[3][0, :nq].double().numpy()
    meta_grad = _forward_backward(theta, glob, xn, vq, yq)
    for k, p in model.meta.weights.items():
        np.testing.assert_allclose(p.grad.numpy(), meta_grad[k], atol=1e-5)


def _meta_grads(model, tables, tasks, second_order, users=USERS):
    model.zero_grad(set_to_none=True)
    x, v, ctx, y, mask = inputs(model, tables, tasks, users)
    params = adapt(
        model, x, v, ctx, y, mask, MamlConfig(inner_steps=2, inner_lr=0.5), second_order=second_order
    )
    query_loss(model, params, x, inputs(model, tables, tasks, users, query=True)).backward()
    return {k: p.grad.clone() for k, p in model.meta.weights.items()}


def test_second_order_meta_gradient_differs_from_first_order_and_matches_finite_differences(
    spec, tables, tasks
):
    model = tiny_model(spec).double()
    first = _meta_grads(model, tables, tasks, second_order=False)
    second = _meta_grads(model, tables, tasks, second_order=True)
    gap = max(float((first[k] - second[k]).abs().max()) for k in first)
    scale = max(float(second[k].abs().max()) for k in second)
    assert gap > 1e-3 * scale

    def loss_at(w1: torch.Tensor) -> float:
        with torch.no_grad():
            model.meta.weights["w1"].copy_(w1)
        x, v, ctx, y, mask = inputs(model, tables, tasks)
        params = adapt(model, x, v, ctx, y, mask, MamlConfig(inner_steps=2, inner_lr=0.5), second_order=True)
        return float(query_loss(model, params, x, inputs(model, tables, tasks, query=True)).detach())

    w1 = model.meta.weights["w1"].detach().clone()
    rng = np.random.default_rng(0)
    for _ in range(4):  # central differences on random coordinates of w1
        i, j = rng.integers(w1.shape[0]), rng.integers(w1.shape[1])
        bump = torch.zeros_like(w1)
        bump[i, j] = 1e-5
        numeric = (loss_at(w1 + bump) - loss_at(w1 - bump)) / 2e-5
        assert abs(numeric - float(second["w1"][i, j])) < 1e-6 + 1e-4 * abs(numeric)
    loss_at(w1)


@pytest.mark.parametrize("mode", ["activation", "weights"])
def test_batched_adaptation_equals_a_per_user_loop(spec, tables, tasks, mode):
    model = tiny_model(spec, mode=mode)
    cfg = MamlConfig(inner_steps=3, inner_lr=0.4)
    with torch.no_grad():
        x, v, ctx, y, mask = inputs(model, tables, tasks)
    assert len(set(mask.sum(1).tolist())) > 2  # mixed support sizes, one of them empty
    batch = adapt_and_embed(model, x, v, ctx, y, mask, cfg)
    for u in range(len(x)):
        n = int(mask[u].sum())
        one = adapt_and_embed(
            model, x[u : u + 1], v[u : u + 1, :n], None, y[u : u + 1, :n], mask[u : u + 1, :n], cfg
        )
        torch.testing.assert_close(batch[u : u + 1], one, rtol=0, atol=1e-5)


def test_padding_with_garbage_in_masked_slots_changes_nothing(spec, tables, tasks):
    model = tiny_model(spec)
    cfg = MamlConfig(inner_steps=3)
    with torch.no_grad():
        x, v, ctx, y, mask = inputs(model, tables, tasks)
    extra = 7
    g = torch.Generator().manual_seed(0)
    v_pad = torch.cat([v, 100 * torch.randn(v.shape[0], extra, v.shape[2], generator=g)], 1)
    y_pad = torch.cat([y, torch.rand(y.shape[0], extra, generator=g) * 5], 1)
    mask_pad = torch.cat([mask, torch.zeros(mask.shape[0], extra, dtype=torch.bool)], 1)
    torch.testing.assert_close(
        adapt_and_embed(model, x, v_pad, None, y_pad, mask_pad, cfg),
        adapt_and_embed(model, x, v, None, y, mask, cfg),
        rtol=0,
        atol=1e-6,
    )


def test_meta_sgd_step_sizes_receive_gradients_and_act_per_weight(spec, tables, tasks):
    model = tiny_model(spec, learned_inner_lr=0.3)
    cfg = MamlConfig(inner_steps=2, learn_inner_lr=True)
    x, v, ctx, y, mask = inputs(model, tables, tasks)
    params = adapt(model, x, v, ctx, y, mask, cfg, second_order=False)
    query_loss(model, params, x, inputs(model, tables, tasks, query=True)).backward()
    for name, lr in model.inner_lr.items():
        assert lr.grad is not None and lr.grad.abs().sum() > 0, name
    with torch.no_grad():  # a zero step size freezes exactly that weight
        model.inner_lr["w2"].zero_()
        params = adapt(model, x, v, ctx, y, mask, cfg)
    torch.testing.assert_close(params["w2"], model.meta.weights["w2"].expand_as(params["w2"]), rtol=0, atol=0)
    assert not torch.allclose(params["w1"], model.meta.weights["w1"].expand_as(params["w1"]))


def test_losses_ignore_masked_slots():
    values = torch.tensor([[1.0, 3.0, 100.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    assert masked_user_mean(values, mask).tolist() == [2.0, 0.0]
    assert pointwise_loss(torch.tensor([2.0]), torch.tensor([0.5]), "regression").item() == pytest.approx(
        2.25
    )


@pytest.mark.parametrize("objective", ["binary", "regression"])
@pytest.mark.parametrize("learned_lr", [None, 0.3])
def test_inference_loop_without_weight_copies_equals_adapt_then_embed(
    spec, tables, tasks, objective, learned_lr
):
    """Activation mode adapts through vectors only (`_activation_embeddings`); it must be the
    same math as adapting per-user weight copies, with scalar and per-weight (Meta-SGD) steps."""
    model = tiny_model(spec, objective=objective, learned_inner_lr=learned_lr)
    if learned_lr is not None:  # distinct step sizes per weight element
        with torch.no_grad():
            for lr in model.inner_lr.values():
                lr.uniform_(0.05, 0.6)
    cfg = MamlConfig(inner_steps=4, inner_lr=0.4, learn_inner_lr=learned_lr is not None)
    with torch.no_grad():
        x, v, ctx, y, mask = inputs(model, tables, tasks)
        reference = model.meta.embed(adapt(model, x, v, ctx, y, mask, cfg), x)
        fast = adapt_and_embed(model, x, v, ctx, y, mask, cfg)
    assert (reference - model.meta(x)).abs().max() > 1e-2  # the users really moved
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-5)
