"""Operations commands: `nightly` (incremental refresh for "now" + serving artifacts),
`release` (a new checkpoint published together with a full refresh) and `rollback`
(point CURRENT at the previous snapshot).

These compose the refresh job and the serving index build, so this module is part of
the command-line layer that may dispatch to both `pipeline` and `serving`. A running
server notices the new CURRENT and swaps model and embeddings together.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from meta_embed import checkpoint
from meta_embed import snapshot
from meta_embed.tables import data_table
from pipeline.refresh.refresh_job import RefreshConfig, refresh
from meta_embed_cli.refresh_commands import _BeamPassThroughParser, parse_as_of, summary

EPILOG = """examples:
  # every night at 00:30 UTC (cron): refresh for today's 00:00 UTC, incremental when possible
  meta-embed nightly --data data/ml-1m --checkpoint models/current --out /srv/meta-embed
  # a newly trained model: full refresh with it, then serving switches model and embeddings together
  meta-embed release --data data/ml-1m --checkpoint models/2024-06-02 --out /srv/meta-embed
  # something is wrong with the newest snapshot
  meta-embed rollback --out /srv/meta-embed
"""


def midnight_utc(now: dt.datetime | None = None) -> dt.datetime:
    """00:00 UTC of the current day: the as_of of tonight's refresh."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return now.astimezone(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def _inputs(p: argparse.ArgumentParser) -> None:
    p.__class__ = _BeamPassThroughParser  # unknown flags are Beam options
    p.add_argument("--data", type=Path, help="prepared data folder (interactions, users, items)")
    p.add_argument("--interactions", help="interactions Parquet (default DATA/interactions.parquet)")
    p.add_argument("--users", help="users Parquet (default DATA/users.parquet)")
    p.add_argument("--items", help="items Parquet (default DATA/items.parquet)")
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory")
    p.add_argument("--out", required=True, type=Path, help="snapshot root (CURRENT, snapshots/)")
    p.add_argument("--as-of", type=parse_as_of, help="default: today 00:00 UTC")
    p.add_argument("--keep", type=int, default=7, help="snapshots to keep (default 7)")
    p.add_argument("--no-indexes", action="store_true", help="skip building the serving artifacts (FAISS indexes)")
    p.set_defaults(beam_args=[])


def _path(args: argparse.Namespace, name: str) -> str:
    given = getattr(args, name)
    if given:
        return given
    if args.data is None:
        raise ValueError(f"give --data or --{name}")
    return str(data_table(args.data, name))


def _refresh_and_index(args: argparse.Namespace, incremental: bool) -> int:
    cfg = RefreshConfig(interactions=_path(args, "interactions"), users=_path(args, "users"),
                        items=_path(args, "items"), checkpoint=str(args.checkpoint.resolve()),
                        as_of=args.as_of or midnight_utc(), out=str(args.out), incremental=incremental, keep=args.keep)
    result = refresh(cfg, args.beam_args)
    print(summary(result))
    if not args.no_indexes:
        # The serving artifacts are built before any server reloads: a server that
        # polls CURRENT would otherwise build them itself on reload.
        from serving.serving_config import ServingConfig
        from serving.state import Sources, load_state

        serving_cfg = ServingConfig(root=args.out, items=Path(cfg.items), checkpoint=args.checkpoint,
                                    users=Path(cfg.users))
        state = load_state(serving_cfg, Sources.read(serving_cfg))
        print(f"indexes: {state.directory}")
    return 0


def run_nightly(args: argparse.Namespace) -> int:
    return _refresh_and_index(args, incremental=True)


def run_release(args: argparse.Namespace) -> int:
    ckpt = checkpoint.load(args.checkpoint)
    live = snapshot.current_name(args.out)
    print(f"release: model_version {ckpt.model_version} (live snapshot: {live or 'none'})")
    # A new model_version makes the refresh recompute every user; the manifest names the
    # checkpoint, so a server switches scorer and embeddings in one swap.
    return _refresh_and_index(args, incremental=False)


def run_rollback(args: argparse.Namespace) -> int:
    before = snapshot.current_name(args.out)
    after = snapshot.rollback(args.out)
    print(f"rollback: CURRENT {before} -> {after}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    nightly = sub.add_parser("nightly", help="incremental refresh for today 00:00 UTC, then serving indexes",
                             epilog=EPILOG, formatter_class=fmt)
    _inputs(nightly)
    nightly.set_defaults(func=run_nightly)
    release = sub.add_parser("release", help="publish a new checkpoint with a full refresh", epilog=EPILOG,
                             formatter_class=fmt)
    _inputs(release)
    release.set_defaults(func=run_release)
    rollback = sub.add_parser("rollback", help="point CURRENT at the previous snapshot", epilog=EPILOG,
                              formatter_class=fmt)
    rollback.add_argument("--out", required=True, type=Path, help="snapshot root")
    rollback.set_defaults(func=run_rollback)
