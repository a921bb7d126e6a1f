"""The nightly refresh job: recompute every user's meta embedding from their most
recent interactions before `as_of`, on Apache Beam, and publish it as a snapshot.

    row groups ──ReadEvents──> (bucket, newest N per user of each batch) ──┐   (packed bytes, or
    one empty seed per bucket ──────────────────────────────────────────────┤    spill files on
      GroupByKey ──> TopNCombineFn ──> (bucket, newest N per user)  <────────┘    local runners)
      ──> AdaptUsers (users, previous snapshot: per-bucket side inputs) ──> WriteParts (staging)
    dead letters ──> WriteDeadLetters

All checks that need no data (checkpoint and its feature spec, every input file's
schema) run before the pipeline starts. The pipeline writes into a private staging
directory; `refresh_finalize.finalize` validates it and publishes atomically. A run
that fails leaves CURRENT where it was and removes its staging directory.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineState

from meta_embed import checkpoint
from meta_embed import snapshot
from meta_embed.config import to_dict, write_config
from meta_embed.features import FeatureSpec
from meta_embed.tables import unique_ids
from pipeline.refresh import inputs
from pipeline.refresh import runners
from pipeline.refresh.adapt import AdaptSettings
from pipeline.refresh.arrow import event_schema, pack
from pipeline.refresh.finalize import DEAD_LETTER_PARTS, Previous, finalize, plan_previous
from pipeline.refresh.shuffle import SHUFFLE_DIR
from pipeline.refresh.transforms import (DEAD, NS, AdaptUsers, CountUsers, Keyed, Packed, ReadEvents, ReadKeyed,
                                         TopNCombineFn, WriteDeadLetters, WriteParts)


@dataclasses.dataclass(frozen=True)
class RefreshConfig:
    """One refresh run. `max_support` None takes the checkpoint's MamlConfig.max_support;
    `buckets` None sizes the user buckets from the input (about 4,000 users each)."""

    interactions: str
    users: str
    items: str
    checkpoint: str
    as_of: dt.datetime
    out: str
    max_support: int | None = None
    incremental: bool = False
    keep: int = 3
    batch_size: int = 64
    buckets: int | None = None
    cold_users: bool = True
    expect_spec_hash: str | None = None
    torch_threads: int = 1
    read_batch_rows: int = 1 << 18
    shuffle: str = "auto"  # "beam", "files" (spill files under staging/), or "auto": files on local runners

    def __post_init__(self) -> None:
        for name in ("interactions", "users", "items", "checkpoint", "out"):
            if not getattr(self, name):
                raise ValueError(f"RefreshConfig.{name} must be a path, got {getattr(self, name)!r}")
        if not isinstance(self.as_of, dt.datetime) or self.as_of.tzinfo is None:
            raise ValueError(f"RefreshConfig.as_of must be a timezone-aware datetime (UTC), got {self.as_of!r}")
        for name in ("keep", "batch_size", "torch_threads", "read_batch_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"RefreshConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.shuffle not in ("auto", "beam", "files"):
            raise ValueError(f"RefreshConfig.shuffle must be 'auto', 'beam' or 'files', got {self.shuffle!r}")
        for name in ("max_support", "buckets"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"RefreshConfig.{name} must be >= 1 or None, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class RefreshResult:
    snapshot_dir: Path
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


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything the launcher checked and decided before the pipeline starts."""

    meta: snapshot.SnapshotMeta
    settings: AdaptSettings
    event_chunks: list[inputs.Chunk]
    user_chunks: list[inputs.Chunk]
    previous_chunks: list[inputs.Chunk]
    previous: Previous
    spec: FeatureSpec
    context: pa.Schema  # the spec's context columns, as typed in the interactions
    target: str
    buckets: int
    fingerprints: dict[str, str]


def _plan(cfg: RefreshConfig) -> _Plan:
    ckpt = checkpoint.load(cfg.checkpoint, expect_spec_hash=cfg.expect_spec_hash)
    spec = ckpt.spec
    files = {k: inputs.list_files(getattr(cfg, k)) for k in ("interactions", "users", "items")}
    event_chunks = inputs.chunks(files["interactions"], inputs.interaction_schema(spec))
    user_chunks = inputs.chunks(files["users"], inputs.user_schema(spec))
    items = inputs.read_all([c.path for c in inputs.chunks(files["items"], inputs.item_schema(spec))], [spec.item_key])
    unique_ids(items.column(spec.item_key), f"{cfg.items}: '{spec.item_key}'")
    max_support = cfg.max_support or ckpt.maml_cfg.max_support
    meta = snapshot.SnapshotMeta(ckpt.model_version, spec.hash, ckpt.model_cfg.embedding_mode,
                                 ckpt.model_cfg.embedding_dim, cfg.as_of.astimezone(dt.timezone.utc))
    fingerprints = {k: inputs.fingerprint(v) for k, v in files.items()}
    previous = plan_previous(cfg.out, meta, fingerprints, max_support) if cfg.incremental \
        else Previous(None, "full recompute (not incremental)")
    prev_files = sorted(str(p) for p in previous.directory.glob("part-*.parquet")) if previous.directory else []
    prev_chunks = inputs.chunks(prev_files, snapshot.schema(meta)) if prev_files else []
    context = inputs.open_parquet(files["interactions"][0]).schema_arrow
    users = sum(c.rows for c in user_chunks) + sum(c.rows for c in event_chunks) // 30
    settings = AdaptSettings(str(cfg.checkpoint), spec.hash, ckpt.model_version, tuple(files["items"]), meta,
                             max_support, cfg.batch_size, cfg.cold_users, cfg.torch_threads)
    return _Plan(meta, settings, event_chunks, user_chunks, prev_chunks, previous, spec,
                 pa.schema([context.field(c.name) for c in spec.context]),
                 "label" if ckpt.model_cfg.objective == "binary" else "rating",
                 cfg.buckets or max(8, math.ceil(users / 4096)), fingerprints)


def build(p: beam.Pipeline, cfg: RefreshConfig, plan: _Plan, staged: str, *, spill: bool = False,
          fail_after_users: int | None = None) -> None:
    """Add the refresh transforms to `p`, writing snapshot parts and dead letters under `staged`
    (and, with `spill`, the exchanged events under staged/_shuffle: see refresh_shuffle)."""
    key = plan.spec.user_key
    read = ReadEvents(plan.settings.item_files, plan.spec.item_key, int(plan.meta.as_of.timestamp() * 1_000_000),
                      plan.target, tuple(plan.context.names), plan.settings.max_support, plan.buckets,
                      cfg.read_batch_rows, os.path.join(staged, SHUFFLE_DIR) if spill else None)
    events = (p | "EventChunks" >> beam.Create(plan.event_chunks)
              | "ReadEvents" >> beam.ParDo(read).with_output_types(Packed).with_outputs(DEAD, main="events"))
    empty = pack(event_schema(plan.context).empty_table())
    seeds = p | "Buckets" >> beam.Create([(b, empty) for b in range(plan.buckets)]).with_output_types(Packed)
    top = ((events.events, seeds) | "AllBuckets" >> beam.Flatten()
           | "GroupBuckets" >> beam.GroupByKey()  # not CombinePerKey: see TopNCombineFn on lifting
           | "TopN" >> beam.CombineValues(TopNCombineFn(plan.settings.max_support)).with_output_types(Keyed))
    user_cols = tuple([key] + [c.name for c in plan.spec.user])
    users = (p | "UserChunks" >> beam.Create(plan.user_chunks)
             | "ReadUsers" >> beam.ParDo(ReadKeyed(user_cols, key, plan.buckets)).with_output_types(Keyed))
    prev_cols = tuple(snapshot.schema(plan.meta).names)
    previous = (p | "PreviousChunks" >> beam.Create(plan.previous_chunks)
                | "ReadPrevious" >> beam.ParDo(ReadKeyed(prev_cols, "user_id", plan.buckets)).with_output_types(Keyed))
    rows = (top | "CountUsers" >> beam.ParDo(CountUsers())
            | "Adapt" >> beam.ParDo(AdaptUsers(plan.settings, fail_after_users),
                                    users=beam.pvalue.AsMultiMap(users), previous=beam.pvalue.AsMultiMap(previous)))
    _ = rows | "WriteParts" >> beam.ParDo(WriteParts(staged))
    _ = events[DEAD] | "WriteDeadLetters" >> beam.ParDo(WriteDeadLetters(os.path.join(staged, DEAD_LETTER_PARTS)))


def _metrics(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    """The job's counters, summed over steps (committed values where the runner has them)."""
    out: dict[str, int] = {}
    for m in result.metrics().query(MetricsFilter().with_namespace(NS))["counters"]:
        value = m.committed if m.committed is not None else m.attempted
        out[m.key.metric.name] = out.get(m.key.metric.name, 0) + int(value or 0)
    return out


def _run(cfg: RefreshConfig, plan: _Plan, staged: Path, opts: beam.options.pipeline_options.PipelineOptions,
         spill: bool, fail_after_users: int | None) -> dict[str, int]:
    p = beam.Pipeline(options=opts)
    build(p, cfg, plan, str(staged), spill=spill, fail_after_users=fail_after_users)
    result = p.run()
    state = result.wait_until_finish()
    if state != PipelineState.DONE:
        raise RuntimeError(f"refresh pipeline ended in state {state}; nothing was published")
    return _metrics(result)


def _manifest(cfg: RefreshConfig, plan: _Plan, runner: str, seconds: float, spill: bool, run_id: str) -> dict:
    """What the manifest records besides counts (publish adds the snapshot meta and the files)."""
    return {"as_of": plan.meta.as_of.isoformat(), "inputs": plan.fingerprints, "runner": runner,
            "duration_s": round(seconds, 3), "mode": "incremental" if plan.previous.directory else "full",
            "reason": plan.previous.reason, "max_support": plan.settings.max_support, "buckets": plan.buckets,
            "cold_users": cfg.cold_users, "shuffle": "files" if spill else "beam", "run_id": run_id,
            "checkpoint": str(Path(cfg.checkpoint).resolve()), "config": to_dict(cfg)}


def refresh(cfg: RefreshConfig, pipeline_options: Sequence[str] | None = None, *,
            fail_after_users: int | None = None) -> RefreshResult:
    """Run the refresh job and publish its snapshot under cfg.out; returns what it did.

    `pipeline_options` are Beam arguments (default: local FnApiRunner, 2 processes);
    `fail_after_users` injects a fault into the adapt step (tests of failure handling).
    """
    start = time.perf_counter()
    plan = _plan(cfg)
    phase = {"plan": time.perf_counter() - start}
    opts = runners.options(pipeline_options)
    local = runners.is_local(opts)
    if local:
        runners.limit_heap_retention()
    spill = cfg.shuffle == "files" or (cfg.shuffle == "auto" and local)
    run_id = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    staged = snapshot.staging_dir(cfg.out, plan.meta, run_id)
    try:
        counters = _run(cfg, plan, staged, opts, spill, fail_after_users)
        shutil.rmtree(staged / SHUFFLE_DIR, ignore_errors=True)
        phase["pipeline"] = time.perf_counter() - start - phase["plan"]
        write_config(cfg, staged, "refresh_config.json")
        stage_ms = {k: v for k, v in counters.items() if k.endswith("_ms")}
        counts = {k: v for k, v in counters.items() if not k.endswith("_ms")}
        manifest = _manifest(cfg, plan, runners.runner_name(opts), time.perf_counter() - start, spill, run_id)
        final = finalize(cfg.out, staged, plan.meta, counts, manifest, plan.settings.max_support, cfg.keep,
                         cfg.cold_users)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    phase["finalize"] = time.perf_counter() - start - phase["plan"] - phase["pipeline"]
    published = json.loads((final / snapshot.MANIFEST).read_text())
    seconds = time.perf_counter() - start
    return RefreshResult(final, final.name, manifest["mode"], plan.previous.reason, plan.meta.as_of,
                         plan.meta.model_version, published["counts"], stage_ms,
                         {k: round(v, 3) for k, v in phase.items()}, seconds,
                         published["counts"]["users"] / seconds if seconds else 0.0, manifest["runner"])
