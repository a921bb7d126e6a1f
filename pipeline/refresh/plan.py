"""What the refresh job's launcher checks and decides before any data is read: the
checkpoint and its feature spec, every input file's schema, the item ids, the row-group
chunks the workers will read, the user buckets, and the previous snapshot an incremental
run may carry rows forward from. A refresh that would fail on these fails here, fast."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import pyarrow as pa

from meta_embed import checkpoint, snapshot, storage
from meta_embed.features import FeatureSpec
from meta_embed.tables import unique_ids
from pipeline.refresh import inputs
from pipeline.refresh.adapt import AdaptSettings
from pipeline.refresh.finalize import Previous, plan_previous
from pipeline.refresh.refresh_config import RefreshConfig

USERS_PER_BUCKET = 4096


@dataclasses.dataclass(frozen=True)
class Plan:
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
    current: str | None  # the snapshot CURRENT named when the run started: publishing expects it still


def plan(cfg: RefreshConfig) -> Plan:
    """Check the run's inputs and decide its shape (see the module docstring)."""
    current = snapshot.current_name(cfg.out)
    snapshot.require_not_older(cfg.out, cfg.as_of)  # up front; publish checks again at the end
    ckpt = checkpoint.load(cfg.checkpoint, expect_spec_hash=cfg.expect_spec_hash)
    spec = ckpt.spec
    files = {k: inputs.list_files(getattr(cfg, k)) for k in ("interactions", "users", "items")}
    event_chunks = inputs.chunks(files["interactions"], inputs.interaction_schema(spec))
    user_chunks = inputs.chunks(files["users"], inputs.user_schema(spec))
    inputs.chunks(files["items"], inputs.item_schema(spec))  # the items' schema, checked
    # the catalog's ids, checked here; the users' ids are checked per bucket by the workers (a
    # user's rows all land in one bucket), so the launcher never reads a column per user
    unique_ids(
        inputs.read_all(files["items"], [spec.item_key]).column(spec.item_key),
        f"{cfg.items}: '{spec.item_key}'",
    )
    first = inputs.first_event_time(files["interactions"])
    if not cfg.allow_empty and (first is None or first >= cfg.as_of):
        when = "there are no events" if first is None else f"the first event is at {first.isoformat()}"
        raise ValueError(
            f"--as-of {cfg.as_of.isoformat()}: no event precedes it ({when}), so every user would be "
            "published at zero steps. Pass a later --as-of, or --allow-empty to publish such a snapshot"
        )
    max_support = cfg.max_support or ckpt.maml_cfg.max_support
    meta = snapshot.SnapshotMeta(
        ckpt.model_version,
        spec.hash,
        ckpt.model_cfg.embedding_mode,
        ckpt.model_cfg.embedding_dim,
        cfg.as_of.astimezone(dt.UTC),
    )
    fingerprints = {k: inputs.fingerprint(v) for k, v in files.items()}
    previous = (
        plan_previous(cfg.out, meta, fingerprints, max_support)
        if cfg.incremental
        else Previous(None, "full recompute (not incremental)")
    )
    prev_chunks = inputs.chunks(previous.files, snapshot.schema(meta)) if previous.files else []
    context = inputs.open_parquet(files["interactions"][0]).schema_arrow
    # users: the feature rows, or about 30 events per user where there are more of those
    users = max(sum(c.rows for c in user_chunks), sum(c.rows for c in event_chunks) // 30)
    settings = AdaptSettings(
        str(cfg.checkpoint),
        spec.hash,
        ckpt.model_version,
        tuple(files["items"]),
        meta,
        max_support,
        cfg.batch_size,
        cfg.cold_users,
        cfg.torch_threads,
        cfg.seen_items,
        cfg.device,
        storage.overrides(),
        str(cfg.users),
    )
    return Plan(
        meta,
        settings,
        event_chunks,
        user_chunks,
        prev_chunks,
        previous,
        spec,
        pa.schema([context.field(c.name) for c in spec.context]),
        "label" if ckpt.model_cfg.objective == "binary" else "rating",
        cfg.buckets or max(8, math.ceil(users / USERS_PER_BUCKET)),
        fingerprints,
        current,
    )
