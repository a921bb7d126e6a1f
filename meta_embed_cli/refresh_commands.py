"""`meta-embed refresh`: parse the flags into a `RefreshConfig`, run `pipeline.refresh.refresh_job.refresh`
and print a summary. Flags the command does not know are Beam pipeline options and pass
through unchanged (`--runner=DataflowRunner --project=...`)."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any, Sequence

from pipeline.refresh.refresh_job import RefreshConfig, RefreshResult, refresh

DESCRIPTION = """Adapt every user's meta block on their most recent events before --as-of (Apache Beam),
validate, and publish a snapshot atomically under --out (CURRENT is switched last).
Flags this command does not know are Beam pipeline options and pass through unchanged."""

EPILOG = """example:
  meta-embed refresh --interactions 'data/interactions/*.parquet' --users data/users.parquet \\
      --items data/items.parquet --checkpoint runs/train/checkpoint --as-of 2024-06-01T00:00:00Z \\
      --out runs/snapshots --incremental --keep 7 \\
      --direct_running_mode=multi_processing --direct_num_workers=2

Any other --flag is a Beam option (see docs/operations.md for Dataflow, Flink and Spark)."""


class _BeamPassThroughParser(argparse.ArgumentParser):
    """Keeps the flags it does not know in `beam_args` instead of rejecting them (parse_known_args)."""

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None):  # type: ignore[override]
        ns, extras = super().parse_known_args(args, namespace)
        ns.beam_args = [*(getattr(ns, "beam_args", None) or []), *extras]
        return ns, []


def parse_as_of(text: str) -> dt.datetime:
    """ISO-8601 time; without a zone it is taken as UTC."""
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--as-of {text!r}: expected ISO-8601 like 2024-06-01T00:00:00Z") from err
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("refresh", help="nightly refresh of meta embeddings on Apache Beam",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.__class__ = _BeamPassThroughParser  # sub-parsers are created by the top-level parser's class
    p.add_argument("--interactions", required=True, help="interactions Parquet: file, directory or glob")
    p.add_argument("--users", required=True, help="users Parquet (features rows)")
    p.add_argument("--items", required=True, help="items Parquet (item features for the item tower)")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory written by `meta-embed train`")
    p.add_argument("--as-of", required=True, type=parse_as_of, help="use events with ts < this time (ISO-8601)")
    p.add_argument("--out", required=True, help="snapshot root (CURRENT, snapshots/, staging/)")
    p.add_argument("--incremental", action="store_true", help="re-adapt only users with new events since CURRENT")
    p.add_argument("--max-support", type=int, default=None, help="most recent events per user (default: checkpoint's)")
    p.add_argument("--keep", type=int, default=3, help="snapshots to keep (default 3)")
    p.add_argument("--batch-size", type=int, default=64, help="users per inner-loop batch (default 64)")
    p.add_argument("--buckets", type=int, default=None, help="user buckets (default: about 4,000 users each)")
    p.add_argument("--no-cold-users", dest="cold_users", action="store_false",
                   help="do not write zero-step embeddings for users without events")
    p.add_argument("--expect-spec-hash", default=None, help="refuse a checkpoint whose feature spec has another hash")
    p.add_argument("--torch-threads", type=int, default=1, help="torch threads per Beam worker process (default 1)")
    p.add_argument("--shuffle", choices=("auto", "beam", "files"), default="auto",
                   help="event exchange: Beam's shuffle, spill files in staging/, or auto (files on local runners)")
    p.set_defaults(func=run, beam_args=[])
    return p


def config_from_args(args: argparse.Namespace) -> RefreshConfig:
    return RefreshConfig(args.interactions, args.users, args.items, args.checkpoint, args.as_of, args.out,
                         max_support=args.max_support, incremental=args.incremental, keep=args.keep,
                         batch_size=args.batch_size, buckets=args.buckets, cold_users=args.cold_users,
                         expect_spec_hash=args.expect_spec_hash, torch_threads=args.torch_threads,
                         shuffle=args.shuffle)


def summary(result: RefreshResult) -> str:
    c = result.counts
    return "\n".join([
        f"refresh: published {result.snapshot_dir}",
        f"  mode {result.mode} ({result.reason}); as_of {result.as_of.isoformat()}; "
        f"model_version {result.model_version}; runner {result.runner}",
        f"  users {c['users']} = adapted {c.get('users_adapted', 0)} + zero-step {c.get('users_zero_step', 0)} "
        f"+ carried forward {c.get('users_carried_forward', 0)}; cold (no events) {c.get('cold_users', 0)}, "
        f"without features {c.get('users_without_features', 0)}",
        f"  events read {c.get('events_read', 0)}, used {c.get('events_used', 0)}, "
        f"dead-lettered {c.get('dead_lettered', 0)}",
        f"  stage time (ms, summed over workers): {result.stage_ms}",
        f"  {result.seconds:.1f} s, {result.users_per_s:,.0f} users/s",
    ])


def run(args: argparse.Namespace) -> int:
    result = refresh(config_from_args(args), args.beam_args)
    print(summary(result))
    return 0
