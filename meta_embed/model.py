"""The two-block model: `MetaBlock` (adapted per user), `ItemTower`, `GlobalBlock`,
`RetrievalHead`, and `TwoBlockModel` that composes them. Modules return logits (or the
predicted rating in regression mode); losses live with the training task.

The meta block's parameters may carry a leading user axis: `MetaBlock.embed(params, x)`
takes a dict of tensors shaped (users, *param_shape) so that many users, each with
their own adapted weights, are embedded in one batched call. The stored meta embedding
is whatever `embed` returns, and `GlobalBlock` consumes exactly that vector, which is
what makes the offline/online exactness contract hold by construction:

    logits(user u, item i) = GlobalBlock(MetaBlock.embed(theta_u, x_u), ItemTower(i), ctx)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from meta_embed.config import ModelConfig
from meta_embed.features import Column, Encoded, FeatureSpec

Params = dict[str, torch.Tensor]


class FeatureEmbedder(nn.Module):
    """Embeds encoded columns and concatenates them; bags are mean-pooled over non-zero indices."""

    def __init__(self, columns: tuple[Column, ...]):
        super().__init__()
        self.columns = columns
        self.tables = nn.ModuleDict({c.name: nn.Embedding(c.cardinality, c.dim) for c in columns})
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=0.05)
        self.out_dim = sum(c.dim for c in columns)

    def forward(self, enc: Encoded) -> torch.Tensor:
        parts = []
        for col in self.columns:
            idx = enc[col.name]
            vec = self.tables[col.name](idx)
            if col.kind == "bag":  # idx (*, L) -> mean over present values
                mask = (idx > 0).unsqueeze(-1).to(vec.dtype)
                vec = (vec * mask).sum(-2) / mask.sum(-2).clamp(min=1.0)
            parts.append(vec)
        return torch.cat(parts, dim=-1)  # (*, out_dim)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MetaBlock(nn.Module):
    """The per-user sub-network. Only its parameters are adapted in the inner loop.

    activation mode: e = W2 relu(W1 x + b1) + b2                      (meta_dim)
    weights mode:    e = [flatten(Wv), Wx x + b]   for the personal layer relu(Wv v + c)
                     with c = Wx x + b folded in, so the vector alone defines the layer.
    """

    def __init__(self, in_dim: int, cfg: ModelConfig):
        super().__init__()
        self.mode = cfg.embedding_mode
        self.rank, self.item_dim = cfg.personal_rank, cfg.item_dim
        if self.mode == "activation":
            shapes = {
                "w1": (cfg.meta_hidden, in_dim),
                "b1": (cfg.meta_hidden,),
                "w2": (cfg.meta_dim, cfg.meta_hidden),
                "b2": (cfg.meta_dim,),
            }
        else:
            shapes = {
                "wx": (cfg.personal_rank, in_dim),
                "wv": (cfg.personal_rank, cfg.item_dim),
                "b": (cfg.personal_rank,),
            }
        self.weights = nn.ParameterDict()
        for name, shape in shapes.items():
            fan_in = shape[1] if len(shape) == 2 else 1
            std = (1.0 / fan_in) ** 0.5 if len(shape) == 2 else 0.0
            self.weights[name] = nn.Parameter(torch.randn(shape) * std)

    def init_params(self) -> Params:
        """The meta-learned initialization theta as a plain dict (no user axis)."""
        return dict(self.weights.items())

    def embed(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Meta embeddings of users x (users, in_dim) under per-user params (users, *shape)."""
        if self.mode == "activation":
            h = torch.relu(torch.einsum("bhf,bf->bh", params["w1"], x) + params["b1"])  # (users, hidden)
            return torch.einsum("bdh,bh->bd", params["w2"], h) + params["b2"]  # (users, meta_dim)
        bias = torch.einsum("brf,bf->br", params["wx"], x) + params["b"]  # (users, rank)
        return torch.cat([params["wv"].flatten(1), bias], dim=1)  # (users, rank*item_dim + rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-step embeddings: the initialization applied to x (users, in_dim)."""
        if (
            self.mode == "activation"
        ):  # shared weights: plain matrix products, as the inference inner loop does
            w = self.weights
            return torch.relu(x @ w["w1"].T + w["b1"]) @ w["w2"].T + w["b2"]
        return self.embed(batched(self.init_params(), x.shape[0]), x)

    def adapted(
        self,
        x: torch.Tensor,
        loss_grad: Callable[[torch.Tensor], torch.Tensor],
        steps: int,
        lr: Params | float,
    ) -> torch.Tensor:
        """Embeddings (users, D) after `steps` first-order inner steps from the initialization,
        no graph kept: inference. `loss_grad(e)` is dL/de at embeddings e (users, D), the only
        thing the block needs from the algorithm; `lr` the step sizes, scalar or one per weight.

        activation: the closed form below, no per-user copy of the weights.
        weights:    per-user copies, each step a vector-Jacobian product of loss_grad through `embed`.
        """
        theta = {k: p.detach() for k, p in self.init_params().items()}
        lam = {
            k: lr[k].detach() if isinstance(lr, dict) else torch.full_like(p, lr) for k, p in theta.items()
        }
        if self.mode == "activation":
            return _activation_steps(theta, lam, x, loss_grad, steps)
        params = batched(theta, x.shape[0])
        for _ in range(steps):
            with torch.enable_grad():
                leaves = {k: p.detach().requires_grad_(True) for k, p in params.items()}
                e = self.embed(leaves, x)
                grads = torch.autograd.grad(e, list(leaves.values()), grad_outputs=loss_grad(e.detach()))
            params = {k: p - lam[k] * g for (k, p), g in zip(params.items(), grads)}
        return self.embed(params, x)


def _activation_steps(
    theta: Params, lam: Params, x: torch.Tensor, loss_grad: Callable[[torch.Tensor], torch.Tensor], steps: int
) -> torch.Tensor:
    """First-order inner steps of e = W2 relu(W1 x + b1) + b2 without a per-user copy of its
    weights: the same math as stepping per-user copies, then `embed`.

    A step moves a user's W1 by -L1 * outer(d1, x) and W2 by -L2 * outer(d2, h) (L the
    step sizes, one per weight; d1, d2 the gradients at the layers' outputs), so what the
    adapted layers compute follows from vectors alone:

        W1' x = W1 x - d1 * (L1 (x * x))
        W2' h = W2 h - sum_k d2_k * (L2 (h_k * h)),    W2'^T g = W2^T g - sum_k h_k * (L2^T (d2_k * g))

    That is O(users x hidden) per step instead of O(users x weights) of copies, updates
    and batched matrix-vector products.
    """
    a1 = x @ theta["w1"].T + theta["b1"]  # (users, hidden): W1' x + b1', kept current instead of W1', b1'
    reach = (x * x) @ lam["w1"].T + lam["b1"]  # (users, hidden): how far a unit of d1 moves a1
    b2 = theta["b2"].expand(len(x), -1)  # (users, D): b2'
    taken: list[tuple[torch.Tensor, torch.Tensor]] = []  # (d2_k, h_k) of the steps so far

    def layer2(h: torch.Tensor) -> torch.Tensor:  # W2' h + b2'
        out = h @ theta["w2"].T + b2
        for d2_k, h_k in taken:
            out = out - d2_k * ((h_k * h) @ lam["w2"].T)
        return out

    for _ in range(steps):
        h = torch.relu(a1)
        d2 = loss_grad(layer2(h))  # (users, D): dL/de
        g = d2 @ theta["w2"]  # W2'^T d2 with W2' before this step
        for d2_k, h_k in taken:
            g = g - h_k * ((d2_k * d2) @ lam["w2"])
        a1 = a1 - (g * (a1 > 0)) * reach
        b2 = b2 - lam["b2"] * d2
        taken.append((d2, h))
    return layer2(torch.relu(a1))


def batched(params: Params, users: int) -> Params:
    """Give every parameter a leading user axis (a view; gradients flow back to the source)."""
    return {k: p.unsqueeze(0).expand(users, *p.shape) for k, p in params.items()}


class ItemTower(nn.Module):
    """Item features -> item vector (item_dim): an MLP plus a linear (wide) path, so that
    per-item effects of the id embedding reach the vector without passing a ReLU."""

    def __init__(self, columns: tuple[Column, ...], item_dim: int):
        super().__init__()
        self.features = FeatureEmbedder(columns)
        self.mlp = _mlp([self.features.out_dim, 2 * item_dim, item_dim])
        self.wide = nn.Linear(self.features.out_dim, item_dim, bias=False)

    def forward(self, enc: Encoded) -> torch.Tensor:
        f = self.features(enc)
        return self.mlp(f) + self.wide(f)  # (*, item_dim)


class ItemSide(NamedTuple):
    """What the global block needs of a set of items (and contexts), computed once."""

    v: torch.Tensor  # (*, item_dim)
    base: torch.Tensor  # (*, hidden): the first layer's item, context and bias terms
    bias: torch.Tensor  # (*,): the linear item term w . v added to the logit


class GlobalBlock(nn.Module):
    """[meta embedding, item vector, context] -> MLP -> logit, plus a linear term w . v; shared by all users.

    The first layer is applied in parts, so that the terms that depend only on items
    and context (`prepare`) are computed once and reused across inner steps, and the
    terms of e are computed once per user rather than once per (user, item) pair:

        activation: h1 = W_e e + W_v v + W_p (P e * v) + W_c ctx + b
        weights:    h1 = W_r relu(Wv v + c) + W_v v + W_c ctx + b,   (Wv, c) = e
    """

    def __init__(self, cfg: ModelConfig, context_dim: int):
        super().__init__()
        self.mode, self.rank, self.item_dim = cfg.embedding_mode, cfg.personal_rank, cfg.item_dim
        if self.mode == "activation":
            self.project = nn.Linear(cfg.meta_dim, cfg.item_dim, bias=False)
            # the first layer's input is the concatenation [e, v, P e * v, ctx]
            self.parts = {"e": cfg.meta_dim, "v": cfg.item_dim, "pv": cfg.item_dim, "ctx": context_dim}
        else:  # [relu(Wv v + c), v, ctx]
            self.parts = {"personal": cfg.personal_rank, "v": cfg.item_dim, "ctx": context_dim}
        self.mlp = _mlp([sum(self.parts.values()), *cfg.global_hidden, 1])
        self.item_bias = nn.Linear(cfg.item_dim, 1, bias=False)  # a linear path from v to the logit
        nn.init.zeros_(self.item_bias.weight)

    def first_layer(self) -> dict[str, torch.Tensor]:
        """The first layer's weight split into the column blocks of its input parts."""
        blocks = torch.split(self.mlp[0].weight, list(self.parts.values()), dim=1)  # each (hidden, part)
        return dict(zip(self.parts, blocks))

    def item_side(self, v: torch.Tensor, ctx: torch.Tensor | None = None) -> ItemSide:
        """The item/context part of the first layer for v (*, item_dim) and ctx (*, C)."""
        side = ItemSide(v, v @ self.first_layer()["v"].T + self.mlp[0].bias, self.item_bias(v).squeeze(-1))
        return self.with_context(side, ctx)

    def with_context(self, side: ItemSide, ctx: torch.Tensor | None) -> ItemSide:
        """`side` (prepared without context) plus the context's first-layer term; ctx broadcasts."""
        if ctx is None or ctx.shape[-1] == 0:
            return side
        return side._replace(base=side.base + self.context_term(ctx))

    def context_term(self, ctx: torch.Tensor) -> torch.Tensor:
        """The first layer's term of contexts ctx (*, C) -> (*, hidden)."""
        return ctx @ self.first_layer()["ctx"].T

    def score(self, e: torch.Tensor, side: ItemSide) -> torch.Tensor:
        """Logits of e (*, D) broadcast against prepared items -> (*)."""
        w, v = self.first_layer(), side.v
        if self.mode == "activation":
            h = side.base + e @ w["e"].T + (self.project(e) * v) @ w["pv"].T  # (*, hidden)
        else:
            wv = e[..., : self.rank * self.item_dim].unflatten(-1, (self.rank, self.item_dim))
            personal = torch.relu(
                torch.einsum("...rh,...h->...r", wv, v) + e[..., self.rank * self.item_dim :]
            )
            h = side.base + personal @ w["personal"].T
        h = torch.relu(h)
        for layer in itertools.islice(
            self.mlp, 2, None
        ):  # (slicing the Sequential would build a module per call)
            h = layer(h)
        return h.squeeze(-1) + side.bias

    def forward(self, e: torch.Tensor, v: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """e (*, D) broadcast against v (*, item_dim) and ctx (*, C) -> logits (*)."""
        return self.score(e, self.item_side(v, ctx))


class RetrievalHead(nn.Module):
    """Two projections whose inner product ranks items for a user (used by the FAISS index)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.query = nn.Linear(cfg.embedding_dim, cfg.retrieval_dim)
        self.item = nn.Linear(cfg.item_dim, cfg.retrieval_dim, bias=False)

    def forward(self, e: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (self.query(e) * self.item(v)).sum(-1)


class TwoBlockModel(nn.Module):
    """User features -> MetaBlock -> meta embedding; with ItemTower and context -> GlobalBlock -> logit."""

    def __init__(self, spec: FeatureSpec, cfg: ModelConfig, learned_inner_lr: float | None = None):
        super().__init__()
        self.spec, self.cfg = spec, cfg
        self.user_features = FeatureEmbedder(spec.user)
        self.history_dim = 2 * cfg.item_dim + 1 if cfg.history_inputs else 0
        self.meta = MetaBlock(self.user_features.out_dim + self.history_dim, cfg)
        # Meta-SGD: one learned step size per meta-block weight, starting at `learned_inner_lr`.
        self.inner_lr = nn.ParameterDict(
            {}
            if learned_inner_lr is None
            else {k: nn.Parameter(torch.full_like(p, learned_inner_lr)) for k, p in self.meta.weights.items()}
        )
        self.item_tower = ItemTower(spec.item, cfg.item_dim)
        self.context = FeatureEmbedder(spec.context)
        self.global_block = GlobalBlock(cfg, self.context.out_dim)
        self.retrieval = RetrievalHead(cfg)

    def user_inputs(self, user_enc: Encoded) -> torch.Tensor:
        """Meta-block inputs (users, in_dim) of users with no known events: their features,
        then (with `history_inputs`) a zero history part; see `with_history`."""
        f = self.user_features(user_enc)
        return torch.cat([f, f.new_zeros(*f.shape[:-1], self.history_dim)], -1) if self.history_dim else f

    def with_history(
        self, x: torch.Tensor, v: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """x (users, in_dim) with its history part summarizing the users' support events:
        item vectors v (users, slots, item_dim), targets y and mask (users, slots).

            [mean_s v_s,  mean_s (y_s - mean y) v_s,  log(1 + n)]   over the n valid events

        The second part points toward what the user rates above their own average, the
        collaborative signal a few inner steps recover poorly from user features alone.
        Without `history_inputs`, x is returned as it is.
        """
        if not self.history_dim:
            return x
        m = mask.to(v.dtype)
        n = m.sum(1, keepdim=True)  # (users, 1)
        w = m / n.clamp(min=1.0)  # (users, slots): mean weights, 0 on padding
        centered = w * (y.to(v.dtype) - (w * y).sum(1, keepdim=True))  # (users, slots)
        history = [(w.unsqueeze(-1) * v).sum(1), (centered.unsqueeze(-1) * v).sum(1), torch.log1p(n)]
        return torch.cat([x[..., : x.shape[-1] - self.history_dim], *history], -1)

    def context_vectors(self, ctx_enc: Encoded | None) -> torch.Tensor | None:
        if ctx_enc is None or not self.spec.context:
            return None
        return self.context(ctx_enc)

    def forward(
        self,
        user_enc: Encoded,
        item_enc: Encoded,
        ctx_enc: Encoded | None = None,
        meta_params: Params | None = None,
        support: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits of every user (users,) against their items (users, items) -> (users, items).

        `meta_params` are per-user adapted weights (users, *shape); None means the
        initialization (zero-step, cold users). `support` = (item vectors, targets, mask)
        of the users' support events feeds `with_history`; None means no known events.
        """
        x = self.user_inputs(user_enc)
        if support is not None:
            x = self.with_history(x, *support)
        params = meta_params if meta_params is not None else batched(self.meta.init_params(), x.shape[0])
        e = self.meta.embed(params, x)  # (users, D)
        v = self.item_tower(item_enc)  # (users, items, item_dim)
        return self.global_block(e.unsqueeze(1), v, self.context_vectors(ctx_enc))
