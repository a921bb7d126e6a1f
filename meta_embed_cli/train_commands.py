"""`meta-embed train` (meta-train the two-block model into a checkpoint) and `meta-embed
evidence` (MeLU's evidence candidates of a checkpoint)."""

from __future__ import annotations

import click

from meta_embed.config import DEVICES, MamlConfig, ModelConfig, TrainConfig
from meta_embed_cli.options import build, examples, option
from pipeline.training.training_config import EvidenceJobConfig, TrainJobConfig

TRAIN_EPILOG = examples(
    "meta-embed data prepare --source movielens-100k --out data/ml-100k",
    "meta-embed train --data data/ml-100k --out runs/ckpt --mode activation --inner-steps 3 --epochs 20 "
    "--seed 0",
    "",
    "The checkpoint directory receives weights.pt, model.json, feature_spec.json, VERSION,",
    "config.json, train_summary.json and validation_users.parquet.",
)


EVIDENCE_COLUMNS = """\
Items to ask a new user about first: their ratings move the meta embedding most.
  score      grad_norm x popularity, each min-max scaled over the items with events (0..1)
  grad_norm  mean norm of the first local update of the meta block by an event on the item
  pop        events on the item in the data used
"""


@click.command(epilog=TRAIN_EPILOG)
@option("--data", required=True, help="prepared data folder (interactions, users, items)")
@option("--out", required=True, help="checkpoint directory to write")
@option("--until", help="use only events before this ISO-8601 time")
@option(
    "--mode",
    type=click.Choice(["activation", "weights"]),
    default=ModelConfig.embedding_mode,
    help="embedding mode",
)
@option("--objective", type=click.Choice(["binary", "regression"]), default=ModelConfig.objective)
@option("--meta-dim", type=int, default=ModelConfig.meta_dim, help="meta embedding size (activation mode)")
@option("--inner-steps", type=int, default=MamlConfig.inner_steps)
@option("--inner-lr", type=float, default=MamlConfig.inner_lr)
@option("--learn-inner-lr", is_flag=True, help="Meta-SGD: learn per-weight inner step sizes")
@option("--first-order", is_flag=True, help="first-order MAML (no second-order terms)")
@option("--max-support", type=int, default=MamlConfig.max_support, help="most recent events per user")
@option("--epochs", type=int, default=TrainConfig.max_epochs, help="maximum epochs")
@option(
    "--patience", type=int, default=TrainConfig.patience, help="epochs without improvement before stopping"
)
@option("--batch-users", type=int, default=TrainConfig.batch_users)
@option("--lr", type=float, default=TrainConfig.lr, help="outer (Adam) learning rate")
@option("--max-query", type=int, default=TrainConfig.max_query)
@option("--val-fraction", type=float, default=TrainConfig.val_fraction, help="users held out for validation")
@option("--retrieval-weight", type=float, default=TrainConfig.retrieval_weight)
@option("--seed", type=int, default=TrainConfig.seed)
@option("--threads", type=int, help="torch threads (default: torch's choice)")
@option(
    "--device",
    type=click.Choice(DEVICES),
    default=TrainConfig.device,
    help="where meta-training runs: auto = CUDA when present (the checkpoint is the same files either way)",
)
@option("--no-progress", is_flag=True, help="hide the progress bar")
def train(
    data: str,
    out: str,
    until: str | None,
    mode: str,
    objective: str,
    meta_dim: int,
    inner_steps: int,
    inner_lr: float,
    learn_inner_lr: bool,
    first_order: bool,
    max_support: int,
    epochs: int,
    patience: int,
    batch_users: int,
    lr: float,
    max_query: int,
    val_fraction: float,
    retrieval_weight: float,
    seed: int,
    threads: int | None,
    device: str,
    no_progress: bool,
) -> int:
    """Meta-train the two-block model and save a checkpoint."""
    from pipeline.training.train_job import train as train_job

    cfg = build(
        TrainJobConfig,
        data=data,
        out=out,
        until=until,
        model=build(
            ModelConfig,
            {"embedding_mode": "--mode"},
            embedding_mode=mode,
            objective=objective,
            meta_dim=meta_dim,
        ),
        maml=build(
            MamlConfig,
            inner_steps=inner_steps,
            inner_lr=inner_lr,
            learn_inner_lr=learn_inner_lr,
            first_order=first_order,
            max_support=max_support,
        ),
        train=build(
            TrainConfig,
            {"max_epochs": "--epochs"},
            seed=seed,
            batch_users=batch_users,
            lr=lr,
            max_epochs=epochs,
            patience=patience,
            retrieval_weight=retrieval_weight,
            max_query=max_query,
            val_fraction=val_fraction,
            threads=threads,
            device=device,
            progress=not no_progress,
        ),
    )
    result = train_job(cfg)
    s = result.summary
    last = s["history"][result.best_epoch] if s["history"] else {}
    click.echo(f"checkpoint     {result.checkpoint}")
    click.echo(f"model_version  {result.model_version}")
    click.echo(
        f"users/events   {s['n_users']} / {s['n_events']} ({s['n_validation_users']} held out for validation)"
    )
    figures = ", ".join(
        f"{name} {last[f'val_{key}']:.4f}"
        for name, key in (("auc", "auc"), ("user AUC", "user_auc"), ("MSE", "mse"))
        if f"val_{key}" in last
    )
    click.echo(f"best epoch     {result.best_epoch} (selected on {result.metric}): val {figures}")
    click.echo(f"seconds        {result.seconds:.1f}")
    return 0


EVIDENCE_EPILOG = examples(
    "meta-embed evidence --checkpoint runs/ckpt --data data/ml-100k --k 20 --out runs/evidence.parquet "
    "--compare",
    "",
    "Scores are computed over the users not held out for validation (validation_users.parquet",
    "in the checkpoint); --compare adapts the held-out users on k of their own earlier events",
    "chosen by each strategy and reports the AUC on their last --query events.",
)


@click.command(epilog=EVIDENCE_EPILOG)
@option("--checkpoint", required=True, help="checkpoint directory written by `meta-embed train`")
@option("--data", required=True, help="prepared data folder")
@option("--k", type=int, default=EvidenceJobConfig.k, help="number of candidates")
@option("--until", help="use only events before this ISO-8601 time")
@option("--out", help="write the candidates to this Parquet file (config.json beside it)")
@option("--compare", is_flag=True, help="compare support selections on held-out users")
@option(
    "--query", type=int, default=EvidenceJobConfig.query, help="query events per held-out user in --compare"
)
@option("--seed", type=int, default=EvidenceJobConfig.seed)
def evidence(
    checkpoint: str,
    data: str,
    k: int,
    until: str | None,
    out: str | None,
    compare: bool,
    query: int,
    seed: int,
) -> int:
    """Evidence candidates: high-gradient, popular items to ask new users about."""
    from pipeline.training.evidence_job import evidence as evidence_job
    from pipeline.training.evidence_job import write

    cfg = build(
        EvidenceJobConfig,
        checkpoint=checkpoint,
        data=data,
        k=k,
        until=until,
        out=out,
        compare=compare,
        query=query,
        seed=seed,
    )
    table, rows = evidence_job(cfg)
    click.echo(EVIDENCE_COLUMNS)
    click.echo(f"{'rank':>4}  {'score':>6}  {'grad_norm':>9}  {'pop':>5}  item")
    for rank, r in enumerate(table.to_pylist(), 1):
        title = r["title"] if r["title"] and r["title"] != r["item_id"] else ""  # ML-1M's ids are titles
        click.echo(
            f"{rank:>4}  {r['score']:6.3f}  {r['grad_norm']:9.4g}  {r['popularity']:>5}  "
            f"{r['item_id']}{'  ' + title if title else ''}"
        )
    if rows:
        click.echo(f"\n{'strategy':<9} {'k':>3} {'users':>5} {'auc':>7} {'user_auc':>8}")
        for r in rows:
            click.echo(
                f"{r['strategy']:<9} {int(r['k']):>3} {int(r['users']):>5} {r['auc']:7.4f} "
                f"{r['user_auc']:8.4f}"
            )
    if cfg.out:
        write(cfg, table)
    return 0
