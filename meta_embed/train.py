"""Meta-training driver: samples tasks from user timelines, runs the batched inner loop
and the outer (global) update, validates on held-out users and stops early.

Tasks come from a time split inside each timeline: for a split position t, support =
the user's most recent `MamlConfig.max_support` events before t, query = the next
`TrainConfig.max_query` events from t on. Every epoch draws a fresh split per training
user (so all of a user's history serves as query some time), and a `cold_fraction` of
the tasks get an empty support so that the initialization itself learns cold start.
Validation users are held out of training and cut at a fixed position.

The outer update trains everything with Adam: user feature embeddings, the meta
block's initialization, learned inner step sizes (Meta-SGD), item tower, global block
and, through an auxiliary loss, the retrieval head.

Training runs on `TrainConfig.device`: the model, built and seeded on the CPU, moves there
with the feature tables, batches are built there, and the trained model comes back to the
CPU. Random draws stay on the CPU's generator, so a device changes the arithmetic only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from meta_embed import metrics
from meta_embed.config import MamlConfig, TrainConfig, default_threshold
from meta_embed.devices import CPU, device_of, resolve_device
from meta_embed.features import FeatureSpec
from meta_embed.inference import embed_episodes, event_inputs, item_vectors, user_inputs
from meta_embed.maml import adapt, masked_user_mean, pointwise_loss
from meta_embed.model import TwoBlockModel
from meta_embed.pretrain import pretrain
from meta_embed.tasks import Episodes, FeatureTables, Padded, TaskSet, build_tasks, cut, episodes

log = logging.getLogger("meta_embed.train")


@dataclasses.dataclass
class TrainResult:
    model: TwoBlockModel
    history: list[dict[str, float]]  # one row per epoch; epoch 0 = the model before training
    metric: str  # "auc" (binary) or "neg_mse" (regression): higher is better
    best_metric: float
    best_epoch: int
    seconds: float
    val_user_ids: pa.Array
    pretrain_history: list[dict[str, float]]  # one row per pretraining epoch (empty without pretraining)


def timelines(events: pa.Table, tables: FeatureTables, spec: FeatureSpec, objective: str) -> TaskSet:
    """Every user's whole history as the support block of a TaskSet (oldest first), with
    the label (binary) or rating (regression; events without a rating are dropped) as target."""
    target = "label" if objective == "binary" else "rating"
    if target == "rating":
        events = events.filter(events.column("rating").is_valid())
    return build_tasks(events, None, tables, spec, target=target)


def sample_splits(lengths: np.ndarray, rng: np.random.Generator, cold_fraction: float) -> np.ndarray:
    """A random split position per timeline: uniform in 1..n-1 (support and query both
    non-empty), or 0 (cold) with probability `cold_fraction` and for single-event users."""
    split = 1 + np.floor(rng.random(len(lengths)) * np.maximum(lengths - 1, 1)).astype(np.int64)
    cold = (rng.random(len(lengths)) < cold_fraction) | (lengths < 2)
    return np.where(cold, 0, split)


def fixed_splits(lengths: np.ndarray, max_query: int) -> np.ndarray:
    """The validation split: the last `max_query` events are the query, keeping at least
    half of the timeline (and at least one event) as support."""
    return np.clip(
        np.maximum(lengths - max_query, lengths // 2), np.minimum(lengths, 1), np.maximum(lengths - 1, 0)
    )


def holdout(lengths: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) user indices; validation users have at least 2 events."""
    eligible = np.flatnonzero(lengths >= 2)
    n_val = int(round(fraction * len(eligible)))
    val = np.sort(rng.choice(eligible, size=n_val, replace=False)) if n_val else np.zeros(0, dtype=np.int64)
    train = np.setdiff1d(np.flatnonzero(lengths >= 1), val)
    return train, val


def retrieval_loss(
    model: TwoBlockModel, e: torch.Tensor, v: torch.Tensor, query: Padded, threshold: float, kind: str
) -> torch.Tensor:
    """Auxiliary loss of the retrieval head on query events: an in-batch sampled softmax
    over positive events (other positives of the same user are masked out), or BCE."""
    q, r = model.retrieval.query(e), model.retrieval.item(v)  # (users, R), (users, slots, R)
    pos = query.mask & (query.y > threshold)
    if kind == "bce":
        scores = (q.unsqueeze(1) * r).sum(-1)  # (users, slots)
        losses = F.binary_cross_entropy_with_logits(scores, pos.to(scores.dtype), reduction="none")
        return (losses * query.mask).sum() / query.mask.sum().clamp(min=1)
    users, slots = pos.nonzero(as_tuple=True)  # (P,)
    if len(users) == 0:
        return e.sum() * 0.0
    cand, which = torch.unique(query.items[users, slots], return_inverse=True)  # (M,), (P,)
    device = e.device
    first = torch.full((len(cand),), len(users), device=device).scatter_reduce(
        0, which, torch.arange(len(users), device=device), "amin"
    )
    logits = q[users] @ r[users, slots][first].T  # (P, M)
    owned = torch.zeros(e.shape[0], len(cand), dtype=torch.bool, device=device)
    owned[users, which] = True
    other = owned[users] & (torch.arange(len(cand), device=device) != which.unsqueeze(1))  # (P, M)
    return F.cross_entropy(logits.masked_fill(other, float("-inf")), which)


class TwoBlockTrainTask(nn.Module):
    """The training task of a `TwoBlockModel` (which returns logits): one batch of episodes
    -> (loss to minimize, query task loss). The inner loop adapts the meta block on each
    user's support events; the query loss (BCE or MSE, weighted per `cfg.loss_weighting`)
    scores the adapted users' query events, plus the retrieval head's auxiliary loss and,
    with `cfg.zero_step_weight`, the same query events scored at zero steps (the shared
    model alone, as a user is scored before any event is known)."""

    def __init__(self, model: TwoBlockModel, tables: FeatureTables, maml: MamlConfig, cfg: TrainConfig):
        super().__init__()
        self.model, self.tables, self.maml, self.cfg = model, tables, maml, cfg

    def forward(self, ep: Episodes) -> tuple[torch.Tensor, torch.Tensor]:
        model, maml, cfg = self.model, self.maml, self.cfg
        x0 = user_inputs(model, self.tables.users, ep.user_rows, self._new(ep))  # (users, in_dim): no history
        s_shape, q_shape = ep.support.items.shape, ep.query.items.shape
        vecs = item_vectors(
            model, self.tables, torch.cat([ep.support.items.flatten(), ep.query.items.flatten()])
        )
        v_s = vecs[: s_shape.numel()].view(*s_shape, -1)  # (users, support slots, item_dim)
        v_q = vecs[s_shape.numel() :].view(*q_shape, -1)  # (users, query slots, item_dim)
        ctx_s, ctx_q = model.context_vectors(ep.support.context), model.context_vectors(ep.query.context)
        x = model.with_history(x0, v_s, ep.support.y, ep.support.mask)
        params = adapt(
            model, x, v_s, ctx_s, ep.support.y, ep.support.mask, maml, second_order=not maml.first_order
        )
        e = model.meta.embed(params, x)  # (users, D)
        pred = model.global_block(e.unsqueeze(1), v_q, ctx_q)  # (users, query slots)
        task = self._query_loss(pred, ep)
        total = task
        if cfg.zero_step_weight > 0:
            cold = model.global_block(model.meta(x0).unsqueeze(1), v_q, ctx_q)  # (users, query slots)
            total = total + cfg.zero_step_weight * self._query_loss(cold, ep)
        if cfg.retrieval_weight == 0:
            return total, task
        aux = retrieval_loss(model, e, v_q, ep.query, cfg.threshold(model.cfg.objective), cfg.retrieval_loss)
        return total + cfg.retrieval_weight * aux, task

    def _new(self, ep: Episodes) -> torch.Tensor | None:
        """Tasks to score as new users (out-of-vocabulary id): every cold task, and a
        `user_id_dropout` share of the others; None where the spec has no user-id column."""
        if self.model.spec.user_key not in self.tables.users:
            return None
        cold = ~ep.support.mask.any(1)
        drop = torch.rand(len(cold)) < self.cfg.user_id_dropout  # the CPU's generator on every device
        return cold | drop.to(cold.device)

    def _query_loss(self, pred: torch.Tensor, ep: Episodes) -> torch.Tensor:
        """The pointwise loss of query predictions (users, slots), per event or per user first."""
        losses = pointwise_loss(pred, ep.query.y, self.model.cfg.objective)
        if self.cfg.loss_weighting == "event":
            return (losses * ep.query.mask).sum() / ep.query.mask.sum().clamp(min=1)
        return masked_user_mean(losses, ep.query.mask)[ep.query.mask.any(1)].mean()


def predict_query(
    model: TwoBlockModel, tables: FeatureTables, tasks: TaskSet, maml: MamlConfig, batch_users: int = 512
) -> np.ndarray:
    """Model output for every query event of `tasks` (aligned with tasks.query), from the
    stored-embedding path: adapted meta embedding -> global block; on the model's device,
    with `tables` there too."""
    out = np.zeros(len(tasks.query.target), dtype=np.float32)
    order = np.argsort(tasks.support.lengths, kind="stable")
    device = device_of(model)
    for start in range(0, len(order), batch_users):
        users = order[start : start + batch_users]
        ep = episodes(tasks, users, device)
        e = embed_episodes(model, tables, ep, maml)  # (users, D)
        with torch.no_grad():
            v, ctx = event_inputs(model, tables, ep.query)
            pred = model.global_block(e.unsqueeze(1), v, ctx).cpu().numpy()  # (users, slots)
        mask = ep.query.mask.cpu().numpy()
        pos = tasks.query.offsets[users][:, None] + np.arange(mask.shape[1])[None, :]
        out[pos[mask]] = pred[mask]
    return out


def query_metrics(
    model: TwoBlockModel,
    tables: FeatureTables,
    tasks: TaskSet,
    maml: MamlConfig,
    threshold: float | None = None,
    batch_users: int = 512,
) -> dict[str, float]:
    """Query metrics of `tasks`: pooled AUC, mean per-user AUC, and logloss or MSE."""
    objective = model.cfg.objective
    threshold = default_threshold(objective) if threshold is None else threshold
    pred = predict_query(model, tables, tasks, maml, batch_users)
    target = tasks.query.target
    groups = np.repeat(np.arange(len(tasks)), tasks.query.lengths)
    out = {
        "auc": metrics.auc(pred, target > threshold),
        "user_auc": metrics.mean_group_auc(pred, target > threshold, groups),
        "n_events": float(len(target)),
        "n_users": float(int((tasks.query.lengths > 0).sum())),
    }
    if objective == "binary":
        out["logloss"] = metrics.logloss(pred, target)
    else:
        out["mse"] = metrics.mse(pred, target)
        out["neg_mse"] = -out["mse"]
    return out


def init_output_bias(model: TwoBlockModel, value: float) -> None:
    """Set the global block's output bias (regression: start at the mean rating)."""
    with torch.no_grad():
        model.global_block.mlp[-1].bias.fill_(value)


def without_ids(tables: FeatureTables, key: str, rows: np.ndarray) -> FeatureTables:
    """`tables` with the users at `rows` reading the out-of-vocabulary user id (held-out users,
    whose id rows training never saw); the same tables where the spec has no user-id column."""
    if key not in tables.users:
        return tables
    ids = tables.users[key].clone()
    ids[torch.as_tensor(rows, device=ids.device)] = 0
    return dataclasses.replace(tables, users=tables.users | {key: ids})


@contextlib.contextmanager
def determinism(
    seed: int, deterministic: bool = True, threads: int | None = None, device: torch.device = CPU
) -> Iterator[None]:
    """Seed torch, optionally force deterministic kernels and a thread count; restores both after.
    On CUDA, deterministic kernels need cuBLAS's fixed workspace: CUBLAS_WORKSPACE_CONFIG is
    set for the process unless it is set already (it is read when cuBLAS starts)."""
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    prev = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.get_num_threads(),
    )
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.set_num_threads(prev[2])


def _epoch(
    task: TwoBlockTrainTask, tasks: TaskSet, opt: torch.optim.Optimizer, rng: np.random.Generator, bar: Any
) -> float:
    """One pass over the training tasks in random batches; returns the mean query loss."""
    cfg, order, losses = task.cfg, rng.permutation(len(tasks)), []
    device = device_of(task.model)
    for start in range(0, len(order), cfg.batch_users):
        ep = episodes(tasks, order[start : start + cfg.batch_users], device)
        opt.zero_grad(set_to_none=True)
        loss, query_loss = task(ep)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(task.model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(float(query_loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
    return float(np.mean(losses))


def meta_train(
    model: TwoBlockModel, tables: FeatureTables, history: TaskSet, cfg: TrainConfig, maml: MamlConfig
) -> TrainResult:
    """Meta-train `model` in place on the timelines in `history` (see `timelines`), on
    `cfg.device`; restores the best validation state and returns it, on the CPU, with the
    training history."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    model.to(device)
    tables = tables.to(device)
    with determinism(cfg.seed, cfg.deterministic, cfg.threads, device):
        rng = np.random.default_rng(cfg.seed)
        lengths = history.support.lengths
        train_users, val_users = holdout(lengths, cfg.val_fraction, rng)
        if len(train_users) == 0:
            raise ValueError("meta_train: no training users with events; check the input interactions")
        val = cut(
            history,
            val_users,
            fixed_splits(lengths[val_users], cfg.max_query),
            maml.max_support,
            cfg.max_query,
        )
        metric = cfg.select_on if model.cfg.objective == "binary" else "neg_mse"
        if model.cfg.objective == "regression":
            in_train = np.repeat(np.isin(np.arange(len(history)), train_users), lengths)
            init_output_bias(model, float(np.mean(history.support.target[in_train])))
        pretrained = pretrain(model, tables, history, train_users, cfg, rng) if cfg.pretrain_epochs else []
        val_tables = without_ids(tables, model.spec.user_key, history.user_rows[val_users])
        task = TwoBlockTrainTask(model, tables, maml, cfg)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        n_batches = -(-len(train_users) // cfg.batch_users)
        rows: list[dict[str, float]] = []

        def validate(epoch: int, loss: float) -> float:
            if len(val):
                scores = query_metrics(
                    model, val_tables, val, maml, cfg.threshold(model.cfg.objective), cfg.eval_batch_users
                )
            else:  # no validation users: the training loss decides
                scores = {metric: -loss if np.isfinite(loss) else -np.inf}
            rows.append(
                {
                    "epoch": epoch,
                    "train_loss": loss,
                    **{f"val_{k}": v for k, v in scores.items()},
                    "seconds": time.perf_counter() - start,
                }
            )
            return scores[metric]

        validate(0, float("nan"))  # the untrained model, for reference; the best state is a trained one
        best, best_epoch, best_state = -np.inf, 0, {}
        # one bar per epoch (early stopping makes a whole-run ETA wrong); none when stderr is not
        # a terminal (disable=None), so a log file gets the epoch lines and no bar updates
        bar = tqdm(total=n_batches, unit="batch", disable=None if cfg.progress else True)
        level = logging.INFO if cfg.progress else logging.DEBUG  # quiet epoch lines without progress
        with bar, logging_redirect_tqdm():  # log lines printed above the bar, not through it
            for epoch in range(1, cfg.max_epochs + 1):
                bar.reset(total=n_batches)
                bar.set_description(f"meta-train epoch {epoch}/{cfg.max_epochs}")
                tasks = cut(
                    history,
                    train_users,
                    sample_splits(lengths[train_users], rng, cfg.cold_fraction),
                    maml.max_support,
                    cfg.max_query,
                )
                value = validate(epoch, _epoch(task, tasks, opt, rng, bar))
                if best_epoch == 0 or value > best:
                    best, best_epoch = value, epoch
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                bar.set_postfix(loss=f"{rows[-1]['train_loss']:.4f}", **{f"val_{metric}": f"{value:.4f}"})
                log.log(
                    level,
                    "epoch %d/%d: train loss %.4f, validation %s %.4f (best %.4f at epoch %d), %.1f s",
                    epoch, cfg.max_epochs, rows[-1]["train_loss"], metric, value, best, best_epoch,
                    rows[-1]["seconds"],
                )  # fmt: skip
                if epoch - best_epoch >= cfg.patience:
                    log.log(
                        level, "stopped early: no better validation %s for %d epochs", metric, cfg.patience
                    )
                    break
        model.load_state_dict(best_state)
    model.to(CPU)
    return TrainResult(
        model,
        rows,
        metric,
        best,
        best_epoch,
        time.perf_counter() - start,
        history.user_ids.take(pa.array(val_users, type=pa.int64())),
        pretrained,
    )
