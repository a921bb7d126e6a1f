"""Batched, pure-functional MAML over the meta block.

Every user in a batch gets its own copy of the meta block's weights (a leading user
axis). Because each user's support loss depends only on that user's copy, the
gradient of the *sum* of per-user losses with respect to the batched weights is,
row by row, each user's own gradient: one autograd call adapts the whole batch with
no Python loop over users. Padded support slots carry mask 0 and contribute nothing.

    theta'_u = theta - alpha * grad L_support(u)(theta)      (K times)

`second_order=True` keeps the graph of the inner steps so the meta-gradient flows
through them; otherwise the inner gradients are treated as constants (first-order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from meta_embed.config import MamlConfig
from meta_embed.model import ItemSide, Params, TwoBlockModel, batched


def pointwise_loss(pred: torch.Tensor, target: torch.Tensor, objective: str) -> torch.Tensor:
    """Elementwise loss: BCE on logits for `binary`, squared error for `regression`."""
    if objective == "binary":
        return F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    return (pred - target) ** 2


def masked_user_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-user mean over the valid slots: (users, slots) -> (users,); 0 for empty users."""
    m = mask.to(values.dtype)
    return (values * m).sum(1) / m.sum(1).clamp(min=1.0)


def support_losses(
    model: TwoBlockModel,
    params: Params,
    x: torch.Tensor,
    v: torch.Tensor,
    ctx: torch.Tensor | None,
    y: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Per-user mean loss (users,) of the adapted meta block on its (padded) events.

    x (users, in_dim); v (users, slots, item_dim); ctx (users, slots, C) or None;
    y, mask (users, slots).
    """
    return _losses(model, params, x, model.global_block.item_side(v, ctx), y, mask)


def _losses(
    model: TwoBlockModel, params: Params, x: torch.Tensor, side: ItemSide, y: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    return _losses_of(model, model.meta.embed(params, x), side, y, mask)


def _losses_of(
    model: TwoBlockModel, e: torch.Tensor, side: ItemSide, y: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Per-user mean loss (users,) of meta embeddings e (users, D) on prepared events."""
    pred = model.global_block.score(e.unsqueeze(1), side)  # (users, slots)
    return masked_user_mean(pointwise_loss(pred, y, model.cfg.objective), mask)


def step_sizes(model: TwoBlockModel, cfg: MamlConfig) -> Params | float:
    """The inner step size: the model's learned per-weight sizes (Meta-SGD) or cfg.inner_lr."""
    return dict(model.inner_lr.items()) if len(model.inner_lr) else cfg.inner_lr


def adapt(
    model: TwoBlockModel,
    x: torch.Tensor,
    v: torch.Tensor,
    ctx: torch.Tensor | None,
    y: torch.Tensor,
    mask: torch.Tensor,
    cfg: MamlConfig,
    *,
    lr: Params | float | None = None,
    second_order: bool = False,
    init: Params | None = None,
) -> Params:
    """K inner steps for every user at once; returns per-user params (users, *shape).

    With the model's parameters requiring grad and `second_order`, the result is
    differentiable through the inner steps; with `second_order=False` the inner
    gradients are constants (first-order MAML), and the result still depends on the
    initialization (and on learned step sizes), so the meta-gradient reaches them.
    """
    theta = init if init is not None else model.meta.init_params()
    step = step_sizes(model, cfg) if lr is None else lr
    track = torch.is_grad_enabled() and any(p.requires_grad for p in theta.values())
    if not track:  # inference (also under torch.no_grad): no graph to the initialization or step sizes
        theta = {k: p.detach() for k, p in theta.items()}
        step = {k: s.detach() for k, s in step.items()} if isinstance(step, dict) else step
    params = batched(theta, x.shape[0])
    side = model.global_block.item_side(v, ctx) if cfg.inner_steps else None  # shared by all steps
    for _ in range(cfg.inner_steps):
        with torch.enable_grad():
            leaves = params if track else {k: p.detach().requires_grad_(True) for k, p in params.items()}
            loss = _losses(model, leaves, x, side, y, mask).sum()
            grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=second_order and track)
        params = {
            k: p
            - (step[k] if isinstance(step, dict) else step) * (g if second_order and track else g.detach())
            for (k, p), g in zip(params.items(), grads)
        }
    return params


def adapt_and_embed(
    model: TwoBlockModel,
    x: torch.Tensor,
    v: torch.Tensor,
    ctx: torch.Tensor | None,
    y: torch.Tensor,
    mask: torch.Tensor,
    cfg: MamlConfig,
    lr: Params | float | None = None,
) -> torch.Tensor:
    """Inference: adapt a batch of users and return their meta embeddings (users, D), detached.

    The algorithm supplies the support loss's gradient at the embeddings; the meta block
    takes the first-order steps itself (`MetaBlock.adapted`: in `activation` mode without
    materializing per-user weights). Users whose mask is all zero keep the initialization:
    their embedding is the zero-step (cold) embedding.
    """
    with torch.no_grad():  # the inner gradients are taken inside, without a graph to the model
        x, v, ctx = x.detach(), v.detach(), None if ctx is None else ctx.detach()
        step = step_sizes(model, cfg) if lr is None else lr
        side = model.global_block.item_side(v, ctx) if cfg.inner_steps else None  # shared by all steps

        def loss_grad(e: torch.Tensor) -> torch.Tensor:  # dL/de of the summed per-user support losses
            with torch.enable_grad():
                e = e.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(_losses_of(model, e, side, y, mask).sum(), [e])
            return grad

        return model.meta.adapted(x, loss_grad, cfg.inner_steps, step)
