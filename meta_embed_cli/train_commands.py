"""`meta-embed train`: flags -> TrainJobConfig -> `pipeline.training.train_job.train`; prints a
summary. Also registers `meta-embed evidence` (pipeline.training.evidence_job)."""

from __future__ import annotations

import argparse

from meta_embed.config import MamlConfig, ModelConfig
from meta_embed.config import TrainConfig
from pipeline.training import evidence_job as evidence_cli
from pipeline.training.training_config import TrainJobConfig
from pipeline.training.train_job import train

EPILOG = """example:
  meta-embed data prepare --source movielens-100k --out data/ml-100k
  meta-embed train --data data/ml-100k --out runs/ckpt --mode activation --inner-steps 3 --epochs 20 --seed 0

The checkpoint directory receives weights.pt, model.json, feature_spec.json, VERSION,
config.json, train_summary.json and validation_users.parquet.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="meta-train the two-block model and save a checkpoint",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="prepared data folder (interactions, users, items)")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--until", help="use only events before this ISO-8601 time")
    p.add_argument("--mode", choices=["activation", "weights"], default="activation", help="embedding mode")
    p.add_argument("--objective", choices=["binary", "regression"], default="binary")
    p.add_argument("--meta-dim", type=int, default=ModelConfig.meta_dim)
    p.add_argument("--inner-steps", type=int, default=MamlConfig.inner_steps)
    p.add_argument("--inner-lr", type=float, default=MamlConfig.inner_lr)
    p.add_argument("--learn-inner-lr", action="store_true", help="Meta-SGD: learn per-weight inner step sizes")
    p.add_argument("--first-order", action="store_true", help="first-order MAML (no second-order terms)")
    p.add_argument("--max-support", type=int, default=MamlConfig.max_support)
    p.add_argument("--epochs", type=int, default=TrainConfig.max_epochs, help="maximum epochs")
    p.add_argument("--patience", type=int, default=TrainConfig.patience)
    p.add_argument("--batch-users", type=int, default=TrainConfig.batch_users)
    p.add_argument("--lr", type=float, default=TrainConfig.lr, help="outer (Adam) learning rate")
    p.add_argument("--max-query", type=int, default=TrainConfig.max_query)
    p.add_argument("--val-fraction", type=float, default=TrainConfig.val_fraction)
    p.add_argument("--retrieval-weight", type=float, default=TrainConfig.retrieval_weight)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)
    evidence_cli.register(sub)


def config_from_args(args: argparse.Namespace) -> TrainJobConfig:
    return TrainJobConfig(
        data=args.data, out=args.out, until=args.until,
        model=ModelConfig(embedding_mode=args.mode, objective=args.objective, meta_dim=args.meta_dim),
        maml=MamlConfig(inner_steps=args.inner_steps, inner_lr=args.inner_lr, learn_inner_lr=args.learn_inner_lr,
                        first_order=args.first_order, max_support=args.max_support),
        train=TrainConfig(seed=args.seed, batch_users=args.batch_users, lr=args.lr, max_epochs=args.epochs,
                          patience=args.patience, retrieval_weight=args.retrieval_weight, max_query=args.max_query,
                          val_fraction=args.val_fraction, threads=args.threads, progress=not args.no_progress),
    )


def run(args: argparse.Namespace) -> int:
    result = train(config_from_args(args))
    s = result.summary
    last = s["history"][result.best_epoch] if s["history"] else {}
    print(f"checkpoint     {result.checkpoint}")
    print(f"model_version  {result.model_version}")
    print(f"users/events   {s['n_users']} / {s['n_events']} ({s['n_validation_users']} held out for validation)")
    figures = ", ".join(f"{name} {last[f'val_{key}']:.4f}" for name, key in
                        (("auc", "auc"), ("user AUC", "user_auc"), ("MSE", "mse")) if f"val_{key}" in last)
    print(f"best epoch     {result.best_epoch} (selected on {result.metric}): val {figures}")
    print(f"seconds        {result.seconds:.1f}")
    return 0
