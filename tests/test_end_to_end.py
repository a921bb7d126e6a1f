"""The whole journey on a tiny synthetic world: generate data, meta-train, refresh
through Beam, serve in-process through the HTTP app (checking the exactness contract
end to end), and run the offline evaluation."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from fastapi.testclient import TestClient

from meta_embed import checkpoint, snapshot
from meta_embed.config import MamlConfig, ModelConfig, TrainConfig
from meta_embed.inference import embed_users, item_vectors
from meta_embed.tables import INTERACTIONS, ITEMS, TS_TYPE, USERS, data_table, read_table
from meta_embed.tasks import FeatureTables, build_tasks
from pipeline.data.data_config import SynthConfig
from pipeline.data.synth import synth
from pipeline.evaluation.evaluation_config import EvalConfig
from pipeline.evaluation.evaluation_job import evaluate
from pipeline.refresh.refresh_config import RefreshConfig
from pipeline.refresh.refresh_job import refresh
from pipeline.training.train_job import train
from pipeline.training.training_config import TrainJobConfig
from serving.app import create_app
from serving.serving_config import ServingConfig

LOCAL = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


VARIANTS = {  # the defaults, and every optional input and training stage of the model
    "defaults": ({}, {}),
    "user-ids-pretrained": ({"user_id_dim": 4}, {"pretrain_epochs": 1, "zero_step_weight": 0.5}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_train_refresh_serve_evaluate(tmp_path, variant):
    model_extra, train_extra = VARIANTS[variant]
    data = tmp_path / "data"
    synth(SynthConfig(n_users=120, n_items=60, events_per_user=20, seed=3, n_shards=2), data)
    small = ModelConfig(
        meta_dim=8, meta_hidden=16, item_dim=8, global_hidden=(16,), retrieval_dim=8, **model_extra
    )
    maml = MamlConfig(inner_steps=2, max_support=10)
    trained = train(
        TrainJobConfig(
            data=str(data),
            out=str(tmp_path / "ckpt"),
            model=small,
            maml=maml,
            train=TrainConfig(max_epochs=2, batch_users=32, threads=1, progress=False, **train_extra),
        )
    )
    as_of = dt.datetime(2021, 1, 2, tzinfo=dt.UTC)
    snap = refresh(
        RefreshConfig(
            interactions=str(data_table(data, "interactions")),
            users=str(data / "users.parquet"),
            items=str(data / "items.parquet"),
            checkpoint=str(trained.checkpoint),
            as_of=as_of,
            out=str(tmp_path / "snapshots"),
        ),
        LOCAL,
    )
    assert snap.model_version == trained.model_version and snap.counts["users_adapted"] > 0

    cfg = ServingConfig(
        root=tmp_path / "snapshots",
        items=data / "items.parquet",
        users=data / "users.parquet",
        checkpoint=trained.checkpoint,
        reload_interval_s=0,
    )
    with TestClient(create_app(cfg.root, cfg)) as client:
        info = client.get("/v1/info").json()
        assert info["model_version"] == trained.model_version and info["snapshot"] == snap.name
        row = snapshot.read_dir(snap.snapshot_dir)[0].sort_by("user_id").slice(0, 1).to_pylist()[0]
        items = ["i00", "i01", "i02"]
        answer = client.post("/v1/score", json={"user_id": row["user_id"], "item_ids": items}).json()
        recs = client.post("/v1/recommend", json={"user_id": row["user_id"], "k": 5}).json()
        assert len(recs["items"]) == 5

    # Exactness: the HTTP scores are the global block applied to the stored embedding.
    ckpt = checkpoint.load(trained.checkpoint)
    tables = FeatureTables.build(
        ckpt.spec,
        read_table(str(data / "users.parquet"), USERS),
        read_table(str(data / "items.parquet"), ITEMS),
    )
    with torch.no_grad():
        v = item_vectors(ckpt.model, tables, torch.from_numpy(tables.item_rows(pa.array(items))))
        expected = ckpt.model.global_block(torch.tensor(row["embedding"]).unsqueeze(0), v).numpy()
    np.testing.assert_allclose(answer["scores"], expected, atol=1e-5)
    # ... and the stored embedding is the user adapted on their newest events before as_of, as
    # meta_embed's own path computes it from the checkpoint (the refresh job's code not involved).
    events = read_table(str(data_table(data, "interactions")), INTERACTIONS)
    events = events.filter(pc.less(events["ts"], pa.scalar(as_of, TS_TYPE)))
    tasks = build_tasks(events, None, tables, ckpt.spec, "label", maml.max_support,
                        user_ids=pa.array([row["user_id"]]))  # fmt: skip
    reference = embed_users(ckpt.model, tables, tasks, ckpt.maml_cfg)[0]
    np.testing.assert_allclose(row["embedding"], reference, atol=1e-5)
    if model_extra:
        assert ckpt.spec.user[-1].name == "user_id" and row["user_id"] in ckpt.spec.user[-1].vocab

    if variant != "defaults":
        return  # the evaluation of the defaults covers the replay; the variant is served above
    result = evaluate(
        EvalConfig(
            dataset="synthetic",
            out=str(tmp_path / "report"),
            days=2,
            retrain_every=2,
            synth_users=120,
            meta_epochs=1,
            wd_lrs=(3e-3,),
            wd_dims=(8,),
            wd_max_epochs=1,
            resamples=20,
            melu=False,
            weights_arm=False,
            beam_args=tuple(LOCAL),
        )
    )
    assert result.report.is_file() and "GAUC" in result.headline
