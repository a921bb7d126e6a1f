"""The served model and the one conversion that builds it from a trained `GlobalBlock`.

The trained model (`meta_embed.model.TwoBlockModel`) is PyTorch; what answers a request
is `ServedModel`, the global block fixed for one catalog and exported to NumPy. `convert`
is the only way from one to the other, and the exactness tests hold its output to the
trained block's logits (tests/serving/test_served_model.py).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from meta_embed.model import GlobalBlock, ItemSide


class ServedModel(NamedTuple):
    """The served model: one user's logits against some of a fixed set of prepared items,
    in NumPy. It gives `GlobalBlock.score`'s logits (to float rounding) at about half the
    cost of the same products in PyTorch, whose per-operation overhead is most of the time
    for one user and a few hundred items. Built once per model and catalog by `convert`:
    the weights are split, transposed and stacked once, and the user's terms fold into the
    first layer, so each layer is one matrix product over the items:

        activation: h1 = base + v (W_pv diag(P e))^T + W_e e      ([W_e; P] e is one product)
        weights:    h1 = base + relu(v Wv^T + c) W_personal^T
    """

    mode: str
    v: np.ndarray  # (items, item_dim): the prepared items (views of the catalog's tensors)
    base: np.ndarray  # (items, hidden)
    bias: np.ndarray  # (items,)
    first: np.ndarray  # activation: [W_e; P] (hidden + item_dim, D); weights: W_personal^T (rank, hidden)
    pv_t: np.ndarray  # activation: W_pv^T (item_dim, hidden); weights: empty
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]  # (W^T, b) of each later linear layer
    rank: int
    item_dim: int

    def __call__(self, e: np.ndarray, rows: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
        """Logits (n,) of e (D,) float32 against the items at `rows` (n,); `extra` (hidden,), a
        context's first-layer term, is added to every item's."""
        v, h = self.v.take(rows, 0), self.base.take(rows, 0)  # (take copies: h is ours to update)
        if extra is not None:
            h += extra
        if self.mode == "activation":
            hidden = self.pv_t.shape[1]
            u = self.first @ e  # [W_e e, P e]
            h += v @ (self.pv_t * u[hidden:, None])
            h += u[:hidden]
        else:
            split = self.rank * self.item_dim
            personal = v @ e[:split].reshape(self.rank, self.item_dim).T
            personal += e[split:]
            h += np.maximum(personal, 0, out=personal) @ self.first
        for w_t, b in self.layers:
            h = np.maximum(h, 0, out=h) @ w_t
            h += b
        return h[:, 0] + self.bias.take(rows)


def convert(block: GlobalBlock, side: ItemSide) -> ServedModel:
    """`block`, fixed as it is now, as a `ServedModel` over the items of `side` (prepared
    without context: a request's context term is added per call)."""

    def array(t: torch.Tensor) -> np.ndarray:  # a contiguous float32 copy, detached from training
        return np.array(t.detach().numpy(), dtype=np.float32, order="C")

    w = block.first_layer()
    if block.mode == "activation":
        first, pv_t = torch.cat([w["e"], block.project.weight]), w["pv"].T
    else:
        first, pv_t = w["personal"].T, torch.zeros(0, 0)
    layers = tuple(
        (array(m.weight.T), array(m.bias))
        for m in itertools.islice(block.mlp, 2, None)
        if isinstance(m, nn.Linear)
    )
    return ServedModel(
        block.mode,
        side.v.detach().numpy(),
        side.base.detach().numpy(),
        side.bias.detach().numpy(),
        array(first),
        array(pv_t),
        layers,
        block.rank,
        block.item_dim,
    )
