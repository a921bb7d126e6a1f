"""`meta-embed evidence`: the evidence candidates of a checkpoint on a data folder
(items with a large local-update gradient that are also popular), and optionally the
comparison of adapting held-out users on them vs on popular, random or recent items."""

from __future__ import annotations

import argparse
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

EPILOG = """example:
  meta-embed evidence --checkpoint runs/ckpt --data data/ml-100k --k 20 --out runs/evidence.parquet --compare

Scores are computed over the users not held out for validation (validation_users.parquet
in the checkpoint); --compare adapts the held-out users on k of their own earlier events
chosen by each strategy and reports the AUC on their last --query events.
"""


def evidence(cfg: EvidenceJobConfig) -> tuple[pa.Table, list[dict[str, float]]]:
    """(top-k evidence table, comparison rows or [])."""
    ckpt = checkpoint.load(cfg.checkpoint)
    data = load_data(cfg.data, cfg.until)
    tables = FeatureTables.build(ckpt.spec, data.users, data.items)
    history = timelines(data.interactions, tables, ckpt.spec, ckpt.model_cfg.objective)
    held_out_path = Path(cfg.checkpoint) / "validation_users.parquet"
    held_out = pq.read_table(held_out_path)["user_id"] if held_out_path.exists() else pa.array([], pa.string())
    is_held = np.asarray(pc.is_in(history.user_ids, value_set=held_out.cast(pa.string())), dtype=bool)
    train_users = np.flatnonzero(~is_held)
    scored = cut(history, train_users, history.support.lengths[train_users])  # whole histories as support
    norms = event_grad_norms(ckpt.model, tables, scored, ckpt.maml_cfg)
    score, mean_norm, popularity = item_scores(scored.support.item_rows, norms, len(tables.item_ids))
    table = top_items(tables, score, mean_norm, popularity, cfg.k)
    table = table.append_column("title", data.items["title"].take(table["item_row"]))
    rows: list[dict[str, float]] = []
    if cfg.compare:
        rows = compare_selection(ckpt.model, tables, history, np.flatnonzero(is_held), score, popularity, cfg.k,
                                 cfg.query, ckpt.maml_cfg, cfg.seed)
    return table, rows


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evidence", help="evidence candidates: high-gradient, popular items for new users",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory written by `meta-embed train`")
    p.add_argument("--data", required=True, help="prepared data folder")
    p.add_argument("--k", type=int, default=20, help="number of candidates")
    p.add_argument("--until", help="use only events before this ISO-8601 time")
    p.add_argument("--out", help="write the candidates to this Parquet file (config.json beside it)")
    p.add_argument("--compare", action="store_true", help="compare support selections on held-out users")
    p.add_argument("--query", type=int, default=10, help="query events per held-out user in --compare")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = EvidenceJobConfig(args.checkpoint, args.data, args.k, args.until, args.out, args.compare, args.query,
                            args.seed)
    table, rows = evidence(cfg)
    print(f"{'rank':>4}  {'score':>6}  {'grad_norm':>9}  {'pop':>5}  item")
    for rank, r in enumerate(table.to_pylist(), 1):
        print(f"{rank:>4}  {r['score']:6.3f}  {r['grad_norm']:9.4g}  {r['popularity']:>5}  "
              f"{r['item_id']} {r['title'] or ''}")
    if rows:
        print(f"\n{'strategy':<9} {'k':>3} {'users':>5} {'auc':>7} {'user_auc':>8}")
        for r in rows:
            print(f"{r['strategy']:<9} {int(r['k']):>3} {int(r['users']):>5} {r['auc']:7.4f} {r['user_auc']:8.4f}")
    if cfg.out:
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out)
        write_config(cfg, out.parent, f"{out.stem}.config.json")
    return 0
