"""The evidence job: the evidence candidates of a checkpoint on a data folder
(items with a large local-update gradient that are also popular), and optionally the
comparison of adapting held-out users on them vs on popular, random or recent items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from meta_embed import checkpoint
from meta_embed.config import write_config
from meta_embed.evidence import compare_selection, event_grad_norms, item_scores, top_items
from meta_embed.tasks import FeatureTables, cut
from meta_embed.train import timelines
from pipeline.training.train_job import load_data
from pipeline.training.training_config import EvidenceJobConfig


def evidence(cfg: EvidenceJobConfig) -> tuple[pa.Table, list[dict[str, float]]]:
    """(top-k evidence table, comparison rows or [])."""
    ckpt = checkpoint.load(cfg.checkpoint)
    data = load_data(cfg.data, cfg.until)
    tables = FeatureTables.build(ckpt.spec, data.users, data.items)
    history = timelines(data.interactions, tables, ckpt.spec, ckpt.model_cfg.objective)
    held_out_path = Path(cfg.checkpoint) / "validation_users.parquet"
    held_out = (
        pq.read_table(held_out_path)["user_id"] if held_out_path.exists() else pa.array([], pa.string())
    )
    is_held = np.asarray(pc.is_in(history.user_ids, value_set=held_out.cast(pa.string())), dtype=bool)
    train_users = np.flatnonzero(~is_held)
    scored = cut(history, train_users, history.support.lengths[train_users])  # whole histories as support
    norms = event_grad_norms(ckpt.model, tables, scored, ckpt.maml_cfg)
    score, mean_norm, popularity = item_scores(scored.support.item_rows, norms, len(tables.item_ids))
    table = top_items(tables, score, mean_norm, popularity, cfg.k)
    table = table.append_column("title", data.items["title"].take(table["item_row"]))
    rows: list[dict[str, float]] = []
    if cfg.compare:
        rows = compare_selection(
            ckpt.model,
            tables,
            history,
            np.flatnonzero(is_held),
            score,
            popularity,
            cfg.k,
            cfg.query,
            ckpt.maml_cfg,
            cfg.seed,
        )
    return table, rows


def write(cfg: EvidenceJobConfig, table: pa.Table) -> Path:
    """Write the candidates to cfg.out, with the config beside them."""
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    write_config(cfg, out.parent, f"{out.stem}.config.json")
    return out
