"""The `train` stage: read prepared Parquet tables, fit the feature spec, meta-train the
two-block model and save a checkpoint with the config and a training summary.

Output directory (the checkpoint, see `meta_embed.checkpoint`): weights.pt, model.json,
feature_spec.json, VERSION, plus config.json (this job's config), train_summary.json
(metrics, history, counts) and validation_users.parquet (the held-out users).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from meta_embed import checkpoint, storage
from meta_embed.config import to_dict, write_config
from meta_embed.devices import resolve_device
from meta_embed.features import fit_spec, movielens_template, with_user_ids
from meta_embed.flags import parse_time
from meta_embed.tables import INTERACTIONS, ITEMS, TS_TYPE, USERS, data_table, read_table
from meta_embed.tasks import FeatureTables
from meta_embed.train import meta_train, timelines
from pipeline.training.training_config import TrainJobConfig


@dataclasses.dataclass(frozen=True)
class TrainJobResult:
    checkpoint: Path | str  # a local path, or the URL it was uploaded to
    model_version: str
    metric: str  # "auc" or "neg_mse"
    best_metric: float
    best_epoch: int
    seconds: float
    summary: dict


@dataclasses.dataclass(frozen=True)
class Data:
    users: pa.Table
    items: pa.Table
    interactions: pa.Table


def load_data(data: str | Path, until: str | None = None) -> Data:
    """The users, items and interactions of a prepared data folder (local, or on an object store,
    read through a local copy), events before `until`."""
    data = storage.local_copy(data, "config.json")
    events = read_table(data_table(data, "interactions"), INTERACTIONS)
    if until is not None:
        events = events.filter(pc.less(events["ts"], pa.scalar(parse_time(until), TS_TYPE)))
    return Data(
        read_table(data_table(data, "users"), USERS), read_table(data_table(data, "items"), ITEMS), events
    )


def _unknown(ids: pa.ChunkedArray, known: pa.ChunkedArray) -> int:
    return int(len(ids) - pc.sum(pc.is_in(ids, value_set=known.combine_chunks())).as_py()) if len(ids) else 0


def _json_safe(value):
    """NaN and infinities become null (strict JSON)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def train(cfg: TrainJobConfig) -> TrainJobResult:
    """Run the train stage (see the module docstring); returns where it saved what."""
    start = time.perf_counter()
    resolve_device(cfg.train.device)  # refuse a missing CUDA before reading the data
    data = load_data(cfg.data, cfg.until)
    if data.interactions.num_rows == 0:
        raise ValueError(f"{cfg.data}: no interactions" + (f" before {cfg.until}" if cfg.until else ""))
    spec = fit_spec(movielens_template(), data.users, data.items)
    if cfg.model.user_id_dim:  # a vocabulary of the users with training events; others are new users
        spec = with_user_ids(spec, pc.unique(data.interactions["user_id"]).to_pylist(), cfg.model.user_id_dim)
    tables = FeatureTables.build(spec, data.users, data.items)
    history = timelines(data.interactions, tables, spec, cfg.model.objective)
    torch.manual_seed(cfg.train.seed)
    model = checkpoint.build_model(spec, cfg.model, cfg.maml)
    result = meta_train(model, tables, history, cfg.train, cfg.maml)
    with storage.staged_output(cfg.out, last=("VERSION",)) as out:  # on an object store: VERSION last
        version = checkpoint.save(result.model, cfg.maml, out)
        write_config(cfg, out)
        pq.write_table(pa.table({"user_id": result.val_user_ids}), out / "validation_users.parquet")
        summary = {
            "model_version": version,
            "feature_spec_hash": spec.hash,
            "metric": result.metric,
            "best_metric": result.best_metric,
            "best_epoch": result.best_epoch,
            "train_seconds": result.seconds,
            "seconds": time.perf_counter() - start,
            "n_users": len(history),
            "n_events": int(len(history.support.target)),
            "n_validation_users": len(result.val_user_ids),
            "events_with_unknown_user": _unknown(data.interactions["user_id"], data.users["user_id"]),
            "events_with_unknown_item": _unknown(data.interactions["item_id"], data.items["item_id"]),
            "history": result.history,
            "config": to_dict(cfg),
        }
        (out / "train_summary.json").write_text(
            json.dumps(_json_safe(summary), indent=2, sort_keys=True) + "\n"
        )
    return TrainJobResult(
        cfg.out if storage.is_remote(cfg.out) else Path(cfg.out),
        version,
        result.metric,
        result.best_metric,
        result.best_epoch,
        summary["seconds"],
        summary,
    )
