"""MeLU's published protocol on MovieLens, to put our numbers beside the paper's table.

Regression (MSE on ratings) on `pipeline.evaluation.splits.melu_split`: users with 13-100 ratings,
10 random query ratings per user, the rest support; the last-joined 20% of users are
new, items released in 1998 or later are new. Models are trained on the support
ratings of existing users on existing items only (new users and new items are never
seen in training; no query rating is). Each test user is then adapted on its support
ratings (K inner steps: 1 and 5, as MeLU-1 and MeLU-5) and scored on its query items
of each scenario: MAE over the query ratings, and nDCG@1/@3 (gain 2^rating - 1) of the
user's query items ranked by predicted rating, averaged over users with at least 3
query items in the scenario (with fewer, nDCG@3 is not informative).
The wide-and-deep baseline is trained on the same ratings; new users and items are
out of its vocabulary.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from meta_embed import baseline
from meta_embed.checkpoint import load
from meta_embed.config import MamlConfig, ModelConfig, TrainConfig
from meta_embed.features import FeatureSpec
from meta_embed.tasks import FeatureTables, build_tasks
from meta_embed.train import predict_query
from pipeline.evaluation.splits import SCENARIOS, MeluSplit, melu_split
from pipeline.training.train_job import train
from pipeline.training.training_config import TrainJobConfig

PUBLISHED = {  # MeLU (KDD 2019), MovieLens-1M: (MAE, nDCG@1, nDCG@3)
    "Wide&Deep": {
        "warm_state": (0.9047, 0.9090, 0.9117),
        "user_cold_state": (1.0694, 0.8559, 0.8639),
        "item_cold_state": (1.2655, 0.7420, 0.7721),
        "user_and_item_cold_state": (1.3114, 0.7680, 0.7874),
    },
    "MeLU-1": {
        "warm_state": (0.7661, 0.8866, 0.8904),
        "user_cold_state": (0.7884, 0.8799, 0.8810),
        "item_cold_state": (0.9361, 0.7715, 0.7990),
        "user_and_item_cold_state": (0.9299, 0.7760, 0.8011),
    },
    "MeLU-5": {
        "warm_state": (0.7567, 0.8870, 0.8919),
        "user_cold_state": (0.7854, 0.8803, 0.8812),
        "item_cold_state": (0.9275, 0.7697, 0.8005),
        "user_and_item_cold_state": (0.9235, 0.7752, 0.8008),
    },
}
SCENARIO_NAMES = {
    "warm_state": "existing items, existing users",
    "user_cold_state": "existing items, new users",
    "item_cold_state": "new items, existing users",
    "user_and_item_cold_state": "new items, new users",
}
MIN_NDCG_ITEMS = 3


def ndcg(pred: np.ndarray, rating: np.ndarray, group: np.ndarray, k: int) -> tuple[float, int]:
    """Mean nDCG@k (gain 2^rating - 1) over groups with >= MIN_NDCG_ITEMS items; and their count."""
    values = []
    for g in np.unique(group):
        m = group == g
        if m.sum() < MIN_NDCG_ITEMS:
            continue
        r, p = rating[m], pred[m]
        disc = 1.0 / np.log2(np.arange(2, min(k, len(r)) + 2))
        gain = lambda order: float(((2.0 ** r[order][:k] - 1) * disc).sum())  # noqa: E731
        ideal = gain(np.argsort(-r, kind="stable"))
        values.append(gain(np.argsort(-p, kind="stable")) / ideal if ideal > 0 else 1.0)
    return (float(np.mean(values)) if values else float("nan")), len(values)


def scenario_metrics(split: MeluSplit, pred: np.ndarray) -> dict[str, dict]:
    """MAE and nDCG@1/@3 of predictions aligned with split.tasks.query, per scenario."""
    rating = split.tasks.query.column("rating").to_numpy(zero_copy_only=False).astype(np.float64)
    task = split.tasks.query_task()
    out = {}
    for s in SCENARIOS:
        m = split.scenario_mask(s)
        n1, users = ndcg(pred[m], rating[m], task[m], 1)
        n3, _ = ndcg(pred[m], rating[m], task[m], 3)
        out[s] = {
            "mae": float(np.abs(pred[m] - rating[m]).mean()) if m.any() else float("nan"),
            "ndcg_at_1": n1,
            "ndcg_at_3": n3,
            "n_ratings": int(m.sum()),
            "n_users": users,
        }
    return out


def training_ratings(split: MeluSplit, items: pa.Table) -> pa.Table:
    """Support ratings of existing users on existing items: all that training may see."""
    sup = split.tasks.support
    new_user = split.user_is_new[split.tasks.support_task()]
    years = items.column("year").take(pc.index_in(sup.column("item_id"), value_set=items.column("item_id")))
    new_item = pc.fill_null(pc.greater_equal(years, 1998), False).to_numpy(zero_copy_only=False)
    return sup.filter(pa.array(~new_user & ~new_item))


def _aligned(split: MeluSplit, tasks_query_users: pa.Array, pred: np.ndarray, query: pa.Table) -> np.ndarray:
    """Reorder predictions of build_tasks' query block to split.tasks.query row order."""
    key = lambda t: pc.binary_join_element_wise(t.column("user_id"), t.column("item_id"), "\x1f")  # noqa: E731
    idx = pc.index_in(key(split.tasks.query), value_set=key(query)).to_numpy(zero_copy_only=False)
    return pred[idx]


def meta_predictions(checkpoint: Path, split: MeluSplit, users: pa.Table, items: pa.Table) -> np.ndarray:
    """Each test user adapted on its support ratings, scored on its query items."""
    ckpt = load(checkpoint)
    tables = FeatureTables.build(ckpt.spec, users, items)
    tasks = build_tasks(
        split.tasks.support,
        split.tasks.query,
        tables,
        ckpt.spec,
        target="rating",
        max_support=ckpt.maml_cfg.max_support,
        user_ids=split.tasks.user_id,
    )
    pred = predict_query(ckpt.model, tables, tasks, ckpt.maml_cfg)
    # build_tasks orders each user's query events oldest first: re-key them to the split's rows
    order = np.lexsort((split.tasks.query.column("ts").cast(pa.int64()).to_numpy(), split.tasks.query_task()))
    out = np.empty_like(pred)
    out[order] = pred
    return out


@dataclasses.dataclass(frozen=True)
class MeluResult:
    rows: tuple[dict, ...]  # model, scenario, mae, ndcg_at_1, ndcg_at_3, n_ratings, n_users
    train_seconds: dict[str, float]
    counts: dict[str, int]


def run_melu(
    interactions: pa.Table,
    users: pa.Table,
    items: pa.Table,
    workdir: Path,
    spec: FeatureSpec,
    wd_cfg: baseline.WideDeepConfig,
    steps: tuple[int, ...],
    train_cfg: TrainConfig,
    seed: int = 0,
    log=print,
) -> MeluResult:
    """Train the regression models on the MeLU split and score the four scenarios."""
    split = melu_split(interactions.filter(pc.is_valid(interactions.column("rating"))), items, seed)
    ratings = training_ratings(split, items)
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, table in (("interactions", ratings), ("users", users), ("items", items)):
        pq.write_table(table, data / f"{name}.parquet")
    rows, seconds = [], {}
    for k in steps:
        cfg = TrainJobConfig(
            str(data),
            str(workdir / f"meta-{k}"),
            model=ModelConfig(objective="regression"),
            maml=MamlConfig(inner_steps=k),
            train=dataclasses.replace(train_cfg, seed=seed),
        )
        result = train(cfg)
        seconds[f"meta-{k}"] = result.seconds
        pred = meta_predictions(result.checkpoint, split, users, items)
        rows += [{"model": f"meta-{k}", "scenario": s, **v} for s, v in scenario_metrics(split, pred).items()]
        log(f"MeLU protocol: meta model with {k} inner step(s) trained in {result.seconds:.0f}s")
    rng = np.random.default_rng(seed)
    held = rng.random(ratings.num_rows) < 0.1  # early-stopping ratings, drawn from the training ratings
    start = time.perf_counter()
    wd = baseline.fit(
        dataclasses.replace(wd_cfg, objective="regression"),
        spec,
        users,
        items,
        ratings.filter(pa.array(~held)),
        ratings.filter(pa.array(held)),
    )
    seconds["wide_deep"] = time.perf_counter() - start
    pred = baseline.predict(wd.model, baseline.index_events(wd.model, split.tasks.query))
    rows += [{"model": "wide_deep", "scenario": s, **v} for s, v in scenario_metrics(split, pred).items()]
    counts = {
        "users": len(split.tasks),
        "new_users": int(split.user_is_new.sum()),
        "training_ratings": ratings.num_rows,
        "query_ratings": split.tasks.query.num_rows,
    }
    return MeluResult(tuple(rows), seconds, counts)
