"""`meta-embed refresh` (the Beam refresh job), and the operations around it: `nightly`
(an incremental refresh for today, then the serving indexes), `release` (a new checkpoint
with a full refresh), `rollback` (CURRENT back one snapshot) and `snapshots` (what a
snapshot root holds).

`nightly` and `release` build the serving artifacts right after publishing, so this module
is where a refresh and serving meet; a running server notices the new CURRENT and swaps
model and embeddings together.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from meta_embed_cli.options import BeamCommand, build, config_options, examples, option
from pipeline.refresh.refresh_config import RefreshConfig

REFRESH_EPILOG = examples(
    "meta-embed refresh --interactions 'data/interactions/*.parquet' --users data/users.parquet \\",
    "    --items data/items.parquet --checkpoint runs/ckpt --as-of 2024-06-01T00:00:00Z \\",
    "    --out runs/snapshots --incremental --keep 7 --direct_running_mode=multi_processing "
    "--direct_num_workers=2",
    "",
    "Any other --flag must be a Beam pipeline option (docs/operations.md has the flags for Dataflow,",
    "Flink and Spark); anything else is refused before the job starts.",
)


@click.command(cls=BeamCommand, epilog=REFRESH_EPILOG)
@config_options(RefreshConfig)
@click.pass_context
def refresh(ctx: click.Context, **flags: Any) -> int:
    """Adapt every user's meta block on their most recent events before --as-of (Apache Beam),
    validate, and publish a snapshot atomically under --out (CURRENT is switched last)."""
    from pipeline.refresh.refresh_job import refresh as refresh_job
    from pipeline.refresh.refresh_job import summary

    result = refresh_job(build(RefreshConfig, **flags), ctx.args)
    click.echo(summary(result))
    return 0


def midnight_utc(now: dt.datetime | None = None) -> dt.datetime:
    """00:00 UTC of the current day: the as_of of tonight's refresh."""
    now = now or dt.datetime.now(dt.UTC)
    return now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


OPS_EPILOG = examples(
    "# every night at 00:30 UTC (cron): refresh for today's 00:00 UTC, incremental when possible",
    "meta-embed nightly --data data/ml-1m --checkpoint models/current --out /srv/meta-embed",
    "# a newly trained model: full refresh with it, then serving switches model and embeddings together",
    "meta-embed release --data data/ml-1m --checkpoint models/2024-06-02 --out /srv/meta-embed",
    "# something is wrong with the newest snapshot",
    "meta-embed rollback --out /srv/meta-embed",
)


def _ops(f: Any) -> Any:
    """The flags of `nightly` and `release`: the refresh's, with the tables found in --data."""
    f = option("--no-indexes", is_flag=True, help="skip building the serving artifacts (FAISS indexes)")(f)
    f = config_options(
        RefreshConfig, skip={"incremental"}, optional={"interactions", "users", "items", "as_of"}
    )(f)
    f = option("--data", help="prepared data folder; gives --interactions, --users and --items not named")(f)
    return click.pass_context(f)


def _refresh_and_index(
    ctx: click.Context, data: str | None, no_indexes: bool, incremental: bool, flags: dict[str, Any]
) -> int:
    from meta_embed.tables import data_table
    from pipeline.refresh.refresh_job import refresh as refresh_job
    from pipeline.refresh.refresh_job import summary

    for name in ("interactions", "users", "items"):
        if flags[name] is None:
            if data is None:
                raise click.UsageError(f"give --data or --{name}", ctx)
            flags[name] = str(data_table(data, name))
    flags["as_of"] = flags["as_of"] or midnight_utc()
    cfg = build(RefreshConfig, incremental=incremental, **flags)
    click.echo(summary(refresh_job(cfg, ctx.args)))
    if (
        not no_indexes
    ):  # built before any server reloads: one polling CURRENT would otherwise build them itself
        from serving.serving_config import ServingConfig
        from serving.state import Sources, load_state

        serving_cfg = ServingConfig(root=cfg.out, items=cfg.items, checkpoint=cfg.checkpoint, users=cfg.users)
        state = load_state(serving_cfg, Sources.read(serving_cfg))
        click.echo(f"indexes: {state.directory}")
    return 0


@click.command(cls=BeamCommand, epilog=OPS_EPILOG)
@_ops
def nightly(ctx: click.Context, data: str | None, no_indexes: bool, **flags: Any) -> int:
    """Incremental refresh for today 00:00 UTC (or --as-of), then the serving indexes."""
    return _refresh_and_index(ctx, data, no_indexes, True, flags)


@click.command(cls=BeamCommand, epilog=OPS_EPILOG)
@_ops
def release(ctx: click.Context, data: str | None, no_indexes: bool, **flags: Any) -> int:
    """Publish a new checkpoint with a full refresh (serving switches model and embeddings together)."""
    from meta_embed import checkpoint, snapshot

    ckpt = checkpoint.load(flags["checkpoint"])
    click.echo(
        f"release: model_version {ckpt.model_version} (live snapshot: "
        f"{snapshot.current_name(flags['out']) or 'none'})"
    )
    return _refresh_and_index(ctx, data, no_indexes, False, flags)


@click.command(epilog=OPS_EPILOG)
@option("--out", required=True, help="snapshot root")
def rollback(out: str) -> int:
    """Point CURRENT at the snapshot published before the current one."""
    from meta_embed import snapshot

    before = snapshot.current_name(out)
    after = snapshot.rollback(out)
    click.echo(f"rollback: CURRENT {before} -> {after}")
    return 0


@click.command(epilog=examples("meta-embed snapshots --out runs/snapshots"))
@option("--out", required=True, help="snapshot root")
def snapshots(out: str) -> int:
    """List the published snapshots: name, as_of, model_version, users, and which one is CURRENT."""
    from meta_embed import snapshot

    rows = snapshot.listing(out)
    if not rows:
        click.echo(f"{out}: no published snapshots")
        return 0
    width = max(len(r["name"]) for r in rows)
    click.echo(f"  {'name':<{width}}  {'as_of':<25}  {'model_version':<16}  {'users':>9}")
    for r in rows:
        mark = "*" if r["current"] else " "
        click.echo(
            f"{mark} {r['name']:<{width}}  {r['as_of']:<25}  {r['model_version']:<16}  {r['users']:>9,}"
        )
    click.echo("(* = CURRENT)")
    return 0
