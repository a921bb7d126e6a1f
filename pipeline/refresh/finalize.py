"""The refresh job's launcher-side steps around the Beam pipeline: choosing what an
incremental run may carry forward, and finalizing a run (merge dead letters, check the
writers' shard summaries against the pipeline's own counts, write the manifest, publish
through `meta_embed.publishing.publish`, prune old snapshots).

Finalizing reads one small file per run, `_shards.json` (the pipeline gathers every
writer's `publishing.Shard` into it), never a row: its work grows with the shards, not
with the users.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from meta_embed import publishing, snapshot, storage
from meta_embed.tables import DEAD_LETTER

DEAD_LETTER_FILE = "dead_letter.parquet"
DEAD_LETTER_PARTS = "_dead_letter"
SHARDS = "_shards.json"


@dataclasses.dataclass(frozen=True)
class Previous:
    """The snapshot an incremental run starts from, or why it recomputes everyone."""

    directory: str | None
    reason: str
    files: tuple[str, ...] = ()  # its data files, from its manifest


def plan_previous(
    root: str, meta: snapshot.SnapshotMeta, inputs: dict[str, str], max_support: int
) -> Previous:
    """The CURRENT snapshot if its rows can be carried forward to `meta`; else None with the reason."""
    name = snapshot.current_name(root)
    if name is None:
        return Previous(None, "no previous snapshot (no CURRENT pointer)")
    directory = storage.join(root, "snapshots", name)
    manifest = snapshot.read_manifest(directory)
    checks = [
        (
            manifest.get("model_version") != meta.model_version,
            f"model_version changed ({manifest.get('model_version')} -> {meta.model_version})",
        ),
        (
            manifest.get("max_support") != max_support,
            f"max_support changed ({manifest.get('max_support')} -> {max_support})",
        ),
        (
            snapshot.SnapshotMeta.from_dict(manifest).as_of > meta.as_of,
            f"previous as_of {manifest.get('as_of')} is later than this as_of",
        ),
        (manifest.get("inputs", {}).get("users") != inputs["users"], "the users table changed"),
        (manifest.get("inputs", {}).get("items") != inputs["items"], "the items table changed"),
    ]
    for failed, reason in checks:
        if failed:
            return Previous(None, f"full recompute: {reason}")
    files = tuple(storage.join(directory, f["name"]) for f in manifest["files"])
    return Previous(directory, f"carry forward from {name}", files)


def merge_dead_letters(staged: str) -> int:
    """Merge the pipeline's dead-letter shards into staged/dead_letter.parquet; returns the row count."""
    parts_dir = storage.join(staged, DEAD_LETTER_PARTS)
    parts = [storage.join(parts_dir, n) for n in storage.listdir(parts_dir) if n.endswith(".parquet")]
    table = DEAD_LETTER.empty_table()
    if parts:
        table = pa.concat_tables([pq.read_table(pa.BufferReader(storage.read_bytes(p))) for p in parts])
        table = table.sort_by([("source", "ascending"), ("row", "ascending")])
        storage.write_bytes(storage.join(staged, DEAD_LETTER_FILE), publishing.parquet_bytes(table))
        storage.delete_tree(parts_dir)
    return table.num_rows


def check_shards(
    shards: list[publishing.Shard], counts: dict[str, int], max_support: int, cold_users: bool
) -> None:
    """Refuse a run whose shard summaries disagree with what the pipeline counted or with the
    run's bounds (`publishing.check_shards` then checks what any snapshot must satisfy)."""
    if counts.get("users_nonfinite"):
        raise snapshot.SnapshotError(
            f"{counts['users_nonfinite']} users got non-finite (NaN or inf) embeddings; nothing was "
            "published. "
            "The checkpoint's weights overflow on these users' inputs: check the model (or its training) "
            "before refreshing with it"
        )
    rows = sum(s.rows for s in shards)
    with_events = sum(s.users_with_events for s in shards)
    if "users_with_events" in counts and with_events != counts["users_with_events"]:
        raise snapshot.SnapshotError(
            f"staged snapshot has {with_events} users with events, but the pipeline "
            f"counted {counts['users_with_events']}; some buckets were lost or written twice"
        )
    parts = ("users_adapted", "users_zero_step", "users_carried_forward")
    if all(k in counts for k in parts) and sum(counts[k] for k in parts) != rows:
        raise snapshot.SnapshotError(
            f"staged snapshot has {rows} rows, but adapt emitted "
            f"{sum(counts[k] for k in parts)}; some buckets were lost or written twice"
        )
    if any(s.max_support > max_support or s.min_support < 0 for s in shards):
        raise snapshot.SnapshotError(f"n_support outside [0, {max_support}]")
    if not cold_users and with_events != rows:
        raise snapshot.SnapshotError("rows without events in a run that writes no cold users")
    if late := sum(s.late for s in shards):
        raise snapshot.SnapshotError(f"{late} rows have last_event_ts >= as_of")
    if any(s.ts_mismatch for s in shards):
        raise snapshot.SnapshotError("last_event_ts must be set exactly for the users with events")


def read_shards(staged: str) -> list[publishing.Shard]:
    """The writers' summaries the pipeline gathered into staged/_shards.json (then removed)."""
    path = storage.join(staged, SHARDS)
    shards = [publishing.Shard.from_dict(d) for d in json.loads(storage.read_bytes(path))]
    storage.delete_tree(path)
    return shards


def finalize(
    root: str,
    staged: str,
    meta: snapshot.SnapshotMeta,
    counts: dict[str, int],
    manifest: dict[str, Any],
    max_support: int,
    keep: int,
    cold_users: bool,
    expect: str | None,
) -> str:
    """Check the run's shard summaries, write its manifest and publish it (only if CURRENT
    still names `expect`, the snapshot the run started from); returns the snapshot's path."""
    counts = dict(counts)
    counts["dead_lettered"] = merge_dead_letters(staged)
    if "events_used" in counts:  # exact duplicates in different batches were read as valid: not used
        counts["events_used"] -= counts.get("duplicates_across_batches", 0)
    shards = read_shards(staged)
    check_shards(shards, counts, max_support, cold_users)
    counts["users"] = sum(s.rows for s in shards)
    if "users_with_events" in counts:  # runners that report no metrics leave the counts unchecked
        expected = counts["users_with_events"] + counts.get("cold_users", 0)
        if counts["users"] != expected:
            raise snapshot.SnapshotError(f"snapshot has {counts['users']} users, expected {expected}")
    manifest = dict(manifest) | {"counts": counts}
    return publishing.publish(root, staged, meta, manifest, shards, keep=keep, expect=expect)
