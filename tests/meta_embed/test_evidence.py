"""Evidence candidates: per-event local-update gradient norms (batched) against plain
per-event autograd, the ranking they induce, and the support-selection comparison."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from meta_embed.config import MamlConfig
from meta_embed.evidence import compare_selection, event_grad_norms, evidence_candidates, item_scores
from meta_embed.inference import item_vectors, user_inputs
from meta_embed.maml import pointwise_loss
from meta_embed.tasks import cut
from meta_embed.train import query_metrics, timelines

from .conftest import tiny_model


@pytest.fixture(scope="module")
def history(world, spec, tables):
    return timelines(world.events, tables, spec, "binary")


def _reference_norm(model, tables, history, u, j, step):
    """|step * d loss(u, event j) / d theta| by plain autograd on one event."""
    theta = {k: p.detach().clone().requires_grad_(True) for k, p in model.meta.init_params().items()}
    x = user_inputs(model, tables.users, torch.tensor([history.user_rows[u]]))
    e = model.meta.embed({k: p.unsqueeze(0) for k, p in theta.items()}, x)
    pred = model.global_block(e, item_vectors(model, tables, torch.tensor([history.support.item_rows[j]])))
    loss = pointwise_loss(pred, torch.tensor([history.support.target[j]]), model.cfg.objective).sum()
    grads = torch.autograd.grad(loss, list(theta.values()))
    sizes = [step[k] if isinstance(step, dict) else step for k in theta]
    return float(torch.sqrt(sum(((s * g) ** 2).sum() for s, g in zip(sizes, grads))))


@pytest.mark.parametrize(
    ("mode", "meta_sgd"), [("activation", False), ("activation", True), ("weights", False)]
)
def test_batched_event_gradient_norms_equal_per_event_autograd(spec, tables, history, mode, meta_sgd):
    model = tiny_model(spec, mode=mode, learned_inner_lr=0.3 if meta_sgd else None)
    if meta_sgd:
        with torch.no_grad():
            for p in model.inner_lr.values():
                p.uniform_(0.05, 1.0)  # distinct per-weight step sizes
    cfg = MamlConfig(learn_inner_lr=meta_sgd)
    norms = event_grad_norms(model, tables, history, cfg, batch_users=7)
    step = {k: p.detach() for k, p in model.inner_lr.items()} if meta_sgd else cfg.inner_lr
    for u in (0, 9, 31, 60):
        start, end = history.support.offsets[u], history.support.offsets[u + 1]
        for j in range(start, min(end, start + 3)):
            assert norms[j] == pytest.approx(_reference_norm(model, tables, history, u, j, step), rel=1e-4)


def test_scores_multiply_normalized_gradient_and_popularity():
    rows = np.array([0, 0, 0, 0, 1, 1, 2, 3])  # popularity 4, 2, 1, 1 (item 4: none)
    norms = np.array([1, 1, 1, 1, 5, 5, 9, 2], dtype=float)
    score, mean, pop = item_scores(rows, norms, 5)
    assert pop.tolist() == [4, 2, 1, 1, 0] and np.isnan(mean[4])
    # normalized norms (1, 5, 9, 2) -> (0, .5, 1, .125); normalized popularity (1, 1/3, 0, 0)
    np.testing.assert_allclose(score, [0.0, 0.5 / 3, 0.0, 0.0, 0.0])


def test_evidence_follows_the_gradients_not_just_popularity(spec, tables, history):
    model = tiny_model(spec)
    cfg = MamlConfig()
    k = 8
    top = evidence_candidates(model, tables, history, k, cfg)
    popularity = np.bincount(history.support.item_rows, minlength=len(tables.item_ids) + 1)[:-1]
    by_popularity = np.lexsort((np.arange(len(popularity)), -popularity))[:k]
    assert top["item_row"].to_pylist() != by_popularity.tolist()
    assert top["popularity"].to_pylist() == popularity[top["item_row"].to_numpy()].tolist()

    # Make the best item's events carry no gradient at all: soft labels equal to the
    # model's own prediction at the initialization. Its popularity is unchanged, but it
    # must leave the list.
    best = top["item_row"][0].as_py()
    on_best = np.flatnonzero(history.support.item_rows == best)
    owner = np.repeat(np.arange(len(history)), history.support.lengths)[on_best]
    with torch.no_grad():
        x = user_inputs(model, tables.users, torch.from_numpy(history.user_rows[owner]))
        logits = model.global_block(
            model.meta(x), item_vectors(model, tables, torch.full((len(owner),), best))
        )
    target = history.support.target.copy()
    target[on_best] = torch.sigmoid(logits).numpy()
    changed = dataclasses.replace(history, support=dataclasses.replace(history.support, target=target))
    assert event_grad_norms(model, tables, changed, cfg)[on_best].max() < 1e-6
    assert best not in evidence_candidates(model, tables, changed, k, cfg)["item_row"].to_pylist()


def test_compare_selection_adapts_each_strategy_on_its_own_choice(spec, tables, history):
    model = tiny_model(spec)
    cfg = MamlConfig(inner_steps=2)
    users = np.arange(60, 120)
    score, _, popularity = item_scores(
        history.support.item_rows, np.ones(len(history.support.item_rows)), len(tables.item_ids)
    )
    rows = {
        r["strategy"]: r
        for r in compare_selection(
            model, tables, history, users, score, popularity, k=3, n_query=4, maml_cfg=cfg
        )
    }
    assert set(rows) == {"evidence", "popular", "random", "recent", "none"}
    eligible = int((history.support.lengths[users] >= 7).sum())
    assert all(r["users"] == eligible and r["n_events"] == 4 * eligible for r in rows.values())
    # With unit gradient norms the evidence score is the popularity rank: same choice, same result.
    assert rows["evidence"]["auc"] == pytest.approx(rows["popular"]["auc"])
    assert rows["none"]["auc"] != pytest.approx(rows["recent"]["auc"])
    # "recent" adapts on the k events just before the query: the same as a plain cut there.
    lengths = history.support.lengths[users]
    keep = users[lengths >= 7]
    plain = cut(history, keep, history.support.lengths[keep] - 4, max_support=3, max_query=4)
    assert query_metrics(model, tables, plain, cfg)["auc"] == pytest.approx(rows["recent"]["auc"])
