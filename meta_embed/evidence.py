"""Evidence candidates (MeLU): items whose local-update gradient is large *and* that
are popular, so that a new user's answers on them identify the user's taste fastest.

For every support event (u, i) the local update of the meta block at its
initialization theta is step * grad_theta loss(u, i). It is computed for whole
batches of users without a loop per user or per event, by the chain rule through the
meta embedding e_u = MetaBlock(theta; x_u):

    grad_theta loss(u, i) = J_u^T delta_ui,   J_u = d e_u / d theta (D x P),
    delta_ui = d loss(u, i) / d e_u  (D),
    |step * J_u^T delta_ui|^2 = delta_ui^T G_u delta_ui,  G_u = J_u diag(step^2) J_u^T (D x D).

J_u comes from `torch.func.vmap(jacrev(...))` over users, delta from one autograd call
on per-event copies of e_u. An item's score is the min-max normalized mean gradient
norm over the events on it, times its min-max normalized popularity (event count).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from torch.func import jacrev, vmap

from meta_embed.config import MamlConfig
from meta_embed.inference import event_inputs, user_inputs
from meta_embed.maml import pointwise_loss, step_sizes
from meta_embed.model import Params, TwoBlockModel, batched
from meta_embed.tasks import EventBlock, FeatureTables, TaskSet, episodes, gather, range_index, ranges
from meta_embed.train import query_metrics


def _step_gram(model: TwoBlockModel, theta: Params, step: Params | float, x: torch.Tensor) -> torch.Tensor:
    """G_u = J_u diag(step^2) J_u^T for every user: (users, D, D)."""

    def embed_one(params: Params, xu: torch.Tensor) -> torch.Tensor:
        return model.meta.embed({k: p.unsqueeze(0) for k, p in params.items()}, xu.unsqueeze(0))[0]

    jac = vmap(jacrev(embed_one))(batched(theta, x.shape[0]), x)  # name -> (users, D, *shape)
    gram = 0.0
    for name, j in jac.items():
        j = j.flatten(2)  # (users, D, P_name)
        if isinstance(step, dict):
            j = j * step[name].detach().flatten()
        else:
            j = j * step
        gram = gram + j @ j.transpose(1, 2)
    return gram  # type: ignore[return-value]


def event_grad_norms(
    model: TwoBlockModel, tables: FeatureTables, tasks: TaskSet, maml_cfg: MamlConfig, batch_users: int = 128
) -> np.ndarray:
    """Norm of the local update each support event of `tasks` alone would make to the
    meta block at its initialization: (events,), aligned with tasks.support."""
    out = np.zeros(len(tasks.support.target), dtype=np.float32)
    theta = {k: p.detach() for k, p in model.meta.init_params().items()}
    step = step_sizes(model, maml_cfg)
    order = np.argsort(tasks.support.lengths, kind="stable")
    order = order[tasks.support.lengths[order] > 0]
    for start in range(0, len(order), batch_users):
        users = order[start : start + batch_users]
        ep = episodes(tasks, users)
        with torch.no_grad():
            x = user_inputs(model, tables.users, ep.user_rows)  # (users, in_dim)
            v, ctx = event_inputs(model, tables, ep.support)  # (users, slots, item_dim)
            gram = _step_gram(model, theta, step, x)  # (users, D, D)
            e = model.meta.embed(batched(theta, len(users)), x)  # (users, D)
        e_events = e.unsqueeze(1).expand(-1, v.shape[1], -1).clone().requires_grad_(True)  # (users, slots, D)
        with torch.enable_grad():
            pred = model.global_block(e_events, v, ctx)  # (users, slots)
            loss = pointwise_loss(pred, ep.support.y, model.cfg.objective).sum()
            delta = torch.autograd.grad(loss, e_events)[0]  # (users, slots, D): per-event d loss / d e
        sq = torch.einsum("usd,ude,use->us", delta, gram, delta).clamp(min=0.0)  # (users, slots)
        mask = ep.support.mask.numpy()
        pos = tasks.support.offsets[users][:, None] + np.arange(mask.shape[1])[None, :]
        out[pos[mask]] = sq.sqrt().numpy()[mask]
    return out


def _minmax(values: np.ndarray) -> np.ndarray:
    span = values.max() - values.min() if len(values) else 0.0
    return (values - values.min()) / span if span > 0 else np.ones_like(values)


def item_scores(item_rows: np.ndarray, grad_norms: np.ndarray, n_items: int) -> tuple[np.ndarray, ...]:
    """Per item row 0..n_items-1: (score, mean gradient norm, popularity). Items without
    events score 0 (mean norm NaN); rows >= n_items (unknown items) are ignored."""
    known = item_rows < n_items
    popularity = np.bincount(item_rows[known], minlength=n_items)
    total = np.bincount(item_rows[known], weights=grad_norms[known], minlength=n_items)
    seen = popularity > 0
    mean_norm = np.full(n_items, np.nan)
    mean_norm[seen] = total[seen] / popularity[seen]
    score = np.zeros(n_items)
    score[seen] = _minmax(mean_norm[seen]) * _minmax(popularity[seen].astype(np.float64))
    return score, mean_norm, popularity


def top_items(
    tables: FeatureTables, score: np.ndarray, mean_norm: np.ndarray, popularity: np.ndarray, k: int
) -> pa.Table:
    """The `k` best-scoring items with events, best first (ties: lower row first)."""
    top = np.lexsort((np.arange(len(score)), -score))
    top = top[popularity[top] > 0][:k]
    return pa.table(
        {
            "item_id": tables.item_ids.take(pa.array(top, pa.int64())),
            "item_row": pa.array(top, pa.int64()),
            "score": pa.array(score[top], pa.float64()),
            "grad_norm": pa.array(mean_norm[top], pa.float64()),
            "popularity": pa.array(popularity[top], pa.int64()),
        }
    )


def evidence_candidates(
    model: TwoBlockModel, tables: FeatureTables, tasks: TaskSet, k: int, maml_cfg: MamlConfig
) -> pa.Table:
    """The top-`k` evidence items over the support events of `tasks`, best first:
    item_id, item_row, score, grad_norm (mean over the item's events), popularity."""
    norms = event_grad_norms(model, tables, tasks, maml_cfg)
    return top_items(tables, *item_scores(tasks.support.item_rows, norms, len(tables.item_ids)), k)


def _choose(
    block: EventBlock, users: np.ndarray, pool: np.ndarray, priority: np.ndarray, k: int
) -> EventBlock:
    """Per user, the `k` events of highest priority among its first pool[u] events, in time order."""
    idx = range_index(block.offsets[users], pool)  # flat pool events
    owner = np.repeat(np.arange(len(users)), pool)
    order = np.lexsort((-priority[idx], owner))
    rank = np.arange(len(order)) - (np.cumsum(pool) - pool)[owner[order]]
    chosen = np.sort(order[rank < k])  # back to (user, time) order
    return gather(block, idx[chosen], np.minimum(pool, k))


def compare_selection(
    model: TwoBlockModel,
    tables: FeatureTables,
    history: TaskSet,
    users: np.ndarray,
    evidence_score: np.ndarray,
    popularity: np.ndarray,
    k: int,
    n_query: int,
    maml_cfg: MamlConfig,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Adapt held-out `users` (indices of `history`, whole timelines) on k of the events
    they rated before their last `n_query`, chosen by evidence score, by popularity, at
    random, or the k most recent; report the query metrics of each (and of no support).

    `evidence_score` and `popularity` are per item row (see `item_scores`; compute them on
    other users). Users need at least k + n_query events.
    """
    block = history.support
    users = np.asarray(users)[block.lengths[users] >= k + n_query]
    pool = block.lengths[users] - n_query
    query = ranges(block, block.offsets[users] + pool, np.full(len(users), n_query))
    score = np.append(evidence_score, 0.0)[block.item_rows]  # unknown items (the default row) score 0
    pop = np.append(popularity, 0).astype(np.float64)[block.item_rows]
    rng = np.random.default_rng(seed)
    priorities = {
        "evidence": score,
        "popular": pop,
        "random": rng.random(len(block.item_rows)),
        "recent": block.ts.astype(np.float64),
        "none": np.zeros(len(block.item_rows)),
    }
    rows = []
    for name, priority in priorities.items():
        support = _choose(block, users, pool if name != "none" else np.zeros_like(pool), priority, k)
        tasks = TaskSet(history.user_ids.take(pa.array(users)), history.user_rows[users], support, query)
        rows.append(
            {
                "strategy": name,
                "k": float(0 if name == "none" else k),
                "users": float(len(users)),
                **query_metrics(model, tables, tasks, maml_cfg),
            }
        )
    return rows
