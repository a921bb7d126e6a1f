"""The nightly refresh job: recompute every user's meta embedding from their most
recent interactions before `as_of`, on Apache Beam, and publish it as a snapshot.

RefreshSnapshot, one composite transform:
    row groups ──ReadEvents──> (bucket, newest N per user of each batch) ─┐  one value per bucket and
    users' rows ──ReadKeyed──> (bucket, feature rows) ─────────────────────┤  bundle flush: packed
    previous snapshot ──ReadKeyed──> (bucket, rows to carry forward) ──────┤  bytes, or spill files
        CoGroupByKey by bucket ──> AdaptUsers (merge to each user's newest N, adapt) <─┘  on local runners
    ──> WriteParts (staging) ──> each part's summary ──> ToList ──> WriteShardList (_shards.json)
    dead letters ──> WriteDeadLetters

All checks that need no data (checkpoint and its feature spec, every input file's
schema) run before the pipeline starts (`plan.py`). The pipeline writes into a private
staging directory (on an object store: the snapshot's own write-once prefix);
`finalize.finalize` checks the writers' summaries of it and publishes. A run that fails
leaves CURRENT where it was and removes what it wrote. `--out` and `--checkpoint` may be
s3:// URLs (`meta_embed.storage`); Beam's `--s3_*` options configure both the workers'
and the launcher's client.

`refresh(cfg)` is the library entry; `run(argv)` the command-line one, Beam's way: the
job's flags, then pipeline options.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import re
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import S3Options
from apache_beam.runners.runner import PipelineState

from meta_embed import publishing, snapshot, storage
from meta_embed.config import to_dict, write_config
from meta_embed.devices import resolve_device
from meta_embed.flags import flag_specs
from pipeline.refresh import runners
from pipeline.refresh.arrow import event_schema, pack
from pipeline.refresh.finalize import DEAD_LETTER_PARTS, SHARDS, finalize
from pipeline.refresh.plan import Plan
from pipeline.refresh.plan import plan as make_plan
from pipeline.refresh.refresh_config import RefreshConfig
from pipeline.refresh.shuffle import SHUFFLE_DIR
from pipeline.refresh.transforms import (
    DEAD,
    NS,
    AdaptUsers,
    Packed,
    ReadEvents,
    ReadKeyed,
)
from pipeline.refresh.writers import WriteDeadLetters, WriteParts, WriteShardList


@dataclasses.dataclass(frozen=True)
class RefreshResult:
    snapshot_dir: str  # a local path or an object-store URL
    name: str
    mode: str  # "full" or "incremental"
    reason: str  # why incremental carried forward or recomputed everyone
    as_of: dt.datetime
    model_version: str
    counts: dict[str, int]  # users, users_with_events, users_adapted, users_carried_forward, cold_users, ...
    stage_ms: dict[str, int]  # read/combine/adapt/write time summed over workers
    phase_s: dict[str, float]  # wall time of plan (checks), pipeline, finalize (validate + publish)
    seconds: float
    users_per_s: float
    runner: str


class RefreshSnapshot(beam.PTransform):
    """The refresh job as one composite transform, from the pipeline's start: read the
    events before as_of, keep each user's newest N, join each bucket with its users'
    feature rows and (incremental) previous snapshot rows, adapt, and write the snapshot
    parts, their summaries (staged/_shards.json) and the dead letters under `staged` (and,
    with `spill`, the exchanged events under that directory: see shuffle.py). Returns the
    written paths: `shards`, `dead_letters`.
    """

    def __init__(
        self,
        plan: Plan,
        staged: str,
        read_batch_rows: int,
        spill: str | None = None,
        fail_after_users: int | None = None,
    ):
        super().__init__()
        self.plan, self.staged, self.read_batch_rows = plan, staged, read_batch_rows
        self.spill, self.fail_after_users = spill, fail_after_users

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        plan, key = self.plan, self.plan.spec.user_key
        read = ReadEvents(
            plan.settings.item_files,
            plan.spec.item_key,
            int(plan.meta.as_of.timestamp() * 1_000_000),
            plan.target,
            tuple(plan.context.names),
            plan.settings.max_support,
            plan.buckets,
            self.read_batch_rows,
            self.spill,
        )
        events = (
            pbegin
            | "EventChunks" >> beam.Create(plan.event_chunks)
            | "ReadEvents" >> beam.ParDo(read).with_output_types(Packed).with_outputs(DEAD, main="events")
        )
        user_cols = tuple(dict.fromkeys([key] + [c.name for c in plan.spec.user]))  # the key may be a feature
        users = (
            pbegin
            | "UserChunks" >> beam.Create(plan.user_chunks)
            | "ReadUsers"
            >> beam.ParDo(ReadKeyed(user_cols, key, plan.buckets, self.spill)).with_output_types(Packed)
        )
        prev_cols = tuple(snapshot.schema(plan.meta).names)
        previous = (
            pbegin
            | "PreviousChunks" >> beam.Create(plan.previous_chunks)
            | "ReadPrevious"
            >> beam.ParDo(ReadKeyed(prev_cols, "user_id", plan.buckets, self.spill)).with_output_types(Packed)
        )
        empty = pack(event_schema(plan.context).empty_table())
        rows = (
            {"events": events.events, "users": users, "previous": previous}
            | "JoinBuckets" >> beam.CoGroupByKey()
            | "Adapt" >> beam.ParDo(AdaptUsers(plan.settings, empty, self.fail_after_users))
        )
        shards = (
            rows
            | "WriteParts" >> beam.ParDo(WriteParts(self.staged, plan.meta, plan.buckets, plan.settings.s3))
            | "GatherShards" >> beam.combiners.ToList()
            | "WriteShardList"
            >> beam.ParDo(WriteShardList(storage.join(self.staged, SHARDS), plan.settings.s3))
        )
        dead = events[DEAD] | "WriteDeadLetters" >> beam.ParDo(
            WriteDeadLetters(storage.join(self.staged, DEAD_LETTER_PARTS), plan.settings.s3)
        )
        return {"shards": shards, "dead_letters": dead}


def _metrics(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    """The job's counters, summed over steps (committed values where the runner has them)."""
    out: dict[str, int] = {}
    for m in result.metrics().query(MetricsFilter().with_namespace(NS))["counters"]:
        value = m.committed if m.committed is not None else m.attempted
        out[m.key.metric.name] = out.get(m.key.metric.name, 0) + int(value or 0)
    return out


class PipelineFailed(ValueError):
    """A step failed on a worker; the message is the worker's own error."""


def _worker_error(err: Exception) -> str:
    """The last `Name: message` line of a runner's error, which carries the failed worker's
    traceback as text (the first such line is the runner's own wrapper)."""
    lines = [line for line in str(err).splitlines() if re.match(r"[A-Za-z_][\w.]*: ", line)]
    return lines[-1] if lines else f"{type(err).__name__}: {err}"


def _run(p: beam.Pipeline, transform: RefreshSnapshot) -> dict[str, int]:
    _ = p | "RefreshSnapshot" >> transform
    try:
        result = p.run()
        state = result.wait_until_finish()
    except (ValueError, OSError):
        raise  # an in-process runner raises the step's own error
    except Exception as err:  # a worker process's error, as text in the runner's
        raise PipelineFailed(f"a refresh worker failed: {_worker_error(err)}; nothing was published") from err
    if state != PipelineState.DONE:
        raise RuntimeError(f"refresh pipeline ended in state {state}; nothing was published")
    return _metrics(result)


def _manifest(
    cfg: RefreshConfig, plan: Plan, runner: str, seconds: float, spill: str | None, run_id: str
) -> dict:
    """What the manifest records besides counts (publish adds the snapshot meta and the files)."""
    return {
        "as_of": plan.meta.as_of.isoformat(),
        "inputs": plan.fingerprints,
        "runner": runner,
        "duration_s": round(seconds, 3),
        "mode": "incremental" if plan.previous.directory else "full",
        "reason": plan.previous.reason,
        "max_support": plan.settings.max_support,
        "buckets": plan.buckets,
        "cold_users": cfg.cold_users,
        "shuffle": "files" if spill is not None else "beam",
        "run_id": run_id,
        "checkpoint": cfg.checkpoint
        if storage.is_remote(cfg.checkpoint)
        else str(Path(cfg.checkpoint).resolve()),
        "config": to_dict(cfg),
    }


def refresh(
    cfg: RefreshConfig,
    pipeline_options: Sequence[str] | None = None,
    *,
    pipeline: beam.Pipeline | None = None,
    fail_after_users: int | None = None,
) -> RefreshResult:
    """Run the refresh job and publish its snapshot under cfg.out; returns what it did.

    `pipeline_options` are Beam arguments (default: local FnApiRunner, 2 processes);
    `pipeline` a pipeline to run on instead (a `TestPipeline`); `fail_after_users`
    injects a fault into the adapt step (tests of failure handling).
    """
    start = time.perf_counter()
    opts = runners.options(pipeline_options)
    s3 = opts.view_as(S3Options)
    # Beam's --s3_* options, for the launcher's own client too (and the workers', via AdaptSettings.s3)
    storage.configure(s3.s3_endpoint_url, s3.s3_access_key_id, s3.s3_secret_access_key, s3.s3_region_name)
    FileSystems.set_options(opts)  # the launcher reads remote inputs with the workers' settings
    plan = make_plan(cfg)
    phase = {"plan": time.perf_counter() - start}
    local = runners.is_local(opts)
    if local:
        runners.limit_heap_retention()
        resolve_device(cfg.device)  # local workers are this machine: refuse a missing CUDA before the run
    run_id = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    staged = publishing.staging_dir(cfg.out, plan.meta, run_id)
    spill = None
    if cfg.shuffle == "files" or (cfg.shuffle == "auto" and local):  # local workers spill to local disk
        remote = storage.is_remote(staged)
        spill = (
            tempfile.mkdtemp(prefix="meta-embed-shuffle-")
            if remote and local
            else storage.join(staged, SHUFFLE_DIR)
        )
    try:
        transform = RefreshSnapshot(plan, staged, cfg.read_batch_rows, spill, fail_after_users)
        counters = _run(pipeline or beam.Pipeline(runner=runners.runner(opts), options=opts), transform)
        phase["pipeline"] = time.perf_counter() - start - phase["plan"]
        write_config(cfg, staged, "refresh_config.json")
        stage_ms = {k: v for k, v in counters.items() if k.endswith("_ms")}
        counts = {k: v for k, v in counters.items() if not k.endswith("_ms")}
        manifest = _manifest(cfg, plan, runners.runner_name(opts), time.perf_counter() - start, spill, run_id)
        final = finalize(
            cfg.out,
            staged,
            plan.meta,
            counts,
            manifest,
            plan.settings.max_support,
            cfg.keep,
            cfg.cold_users,
            plan.current,
        )
    except BaseException:
        storage.delete_tree(staged)
        raise
    finally:
        if spill is not None:
            storage.delete_tree(spill)
    phase["finalize"] = time.perf_counter() - start - phase["plan"] - phase["pipeline"]
    published = snapshot.read_manifest(final)
    seconds = time.perf_counter() - start
    return RefreshResult(
        final,
        storage.basename(final),
        manifest["mode"],
        plan.previous.reason,
        plan.meta.as_of,
        plan.meta.model_version,
        published["counts"],
        stage_ms,
        {k: round(v, 3) for k, v in phase.items()},
        seconds,
        published["counts"]["users"] / seconds if seconds else 0.0,
        manifest["runner"],
    )


def run(argv: Sequence[str] | None = None, pipeline: beam.Pipeline | None = None) -> RefreshResult:
    """`python -m pipeline.refresh.refresh_job --interactions ... [Beam options]`: the job's
    own flags (those of `RefreshConfig`), then Beam pipeline options; a flag neither knows is
    refused before any work. `meta-embed refresh` is the same job behind the project's CLI."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.refresh.refresh_job",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for spec in flag_specs(RefreshConfig):
        if spec.parse is None:
            parser.add_argument(
                spec.flag,
                dest=spec.field,
                default=spec.default,
                help=spec.help,
                action=argparse.BooleanOptionalAction if spec.default else "store_true",
            )
        else:
            parser.add_argument(
                spec.flag,
                dest=spec.field,
                type=spec.parse,
                default=spec.default,
                required=spec.required,
                choices=spec.choices,
                help=spec.help,
            )
    known, pipeline_args = parser.parse_known_args(argv)
    unknown = runners.unknown_options(pipeline_args)
    if unknown:
        parser.error(
            f"unrecognized arguments: {' '.join(unknown)} (neither flags of this job nor Beam options)"
        )
    result = refresh(RefreshConfig(**vars(known)), pipeline_args, pipeline=pipeline)
    print(summary(result))
    return result


def summary(result: RefreshResult) -> str:
    """What a run did, for a terminal: the snapshot, where its users came from, counts and speed."""
    c = result.counts
    return "\n".join(
        [
            f"refresh: published {result.snapshot_dir}",
            f"  mode {result.mode} ({result.reason}); as_of {result.as_of.isoformat()}; "
            f"model_version {result.model_version}; runner {result.runner}",
            f"  users {c['users']} = adapted {c.get('users_adapted', 0)} + zero-step "
            f"{c.get('users_zero_step', 0)} "
            f"+ carried forward {c.get('users_carried_forward', 0)}; cold (no events) "
            f"{c.get('cold_users', 0)}, "
            f"without features {c.get('users_without_features', 0)}",
            f"  events read {c.get('events_read', 0)}, used {c.get('events_used', 0)}, "
            f"dead-lettered {c.get('dead_lettered', 0)}, duplicates across batches "
            f"{c.get('duplicates_across_batches', 0)}",
            f"  stage time (ms, summed over workers): {result.stage_ms}",
            f"  {result.seconds:.1f} s, {result.users_per_s:,.0f} users/s",
        ]
    )


if __name__ == "__main__":
    run()
