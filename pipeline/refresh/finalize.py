"""The refresh job's launcher-side steps around the Beam pipeline: choosing what an
incremental run may carry forward, and finalizing a run (merge dead letters, validate
the staged rows against the pipeline's own counts, write the manifest, publish
atomically through `meta_embed.snapshot.publish`, prune old snapshots).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from meta_embed import snapshot
from meta_embed.tables import DEAD_LETTER, write_dead_letter

DEAD_LETTER_FILE = "dead_letter.parquet"
DEAD_LETTER_PARTS = "_dead_letter"


@dataclasses.dataclass(frozen=True)
class Previous:
    """The snapshot an incremental run starts from, or why it recomputes everyone."""

    directory: Path | None
    reason: str


def plan_previous(
    root: str | Path, meta: snapshot.SnapshotMeta, inputs: dict[str, str], max_support: int
) -> Previous:
    """The CURRENT snapshot if its rows can be carried forward to `meta`; else None with the reason."""
    name = snapshot.current_name(root)
    if name is None:
        return Previous(None, "no previous snapshot (no CURRENT pointer)")
    directory = Path(root) / "snapshots" / name
    manifest = snapshot.read_dir(directory)[1]
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
    return Previous(directory, f"carry forward from {name}")


def merge_dead_letters(staged: Path) -> int:
    """Merge the pipeline's dead-letter shards into staged/dead_letter.parquet; returns the row count."""
    parts_dir = staged / DEAD_LETTER_PARTS
    parts = sorted(parts_dir.glob("dl-*.parquet")) if parts_dir.is_dir() else []
    table = pa.concat_tables([pq.read_table(p) for p in parts]) if parts else DEAD_LETTER.empty_table()
    if table.num_rows:
        table = table.sort_by([("source", "ascending"), ("row", "ascending")])
        write_dead_letter(table, staged / DEAD_LETTER_FILE)
    shutil.rmtree(parts_dir, ignore_errors=True)
    return table.num_rows


def check_rows(
    table: pa.Table, counts: dict[str, int], max_support: int, meta: snapshot.SnapshotMeta, cold_users: bool
) -> None:
    """Refuse staged rows that disagree with what the pipeline counted or with the run's bounds."""
    if counts.get("users_nonfinite"):
        raise snapshot.SnapshotError(
            f"{counts['users_nonfinite']} users got non-finite (NaN or inf) embeddings; nothing was "
            "published. "
            "The checkpoint's weights overflow on these users' inputs: check the model (or its training) "
            "before refreshing with it"
        )
    n_support = table.column("n_support").to_numpy()
    with_events = int((n_support > 0).sum())
    if "users_with_events" in counts and with_events != counts["users_with_events"]:
        raise snapshot.SnapshotError(
            f"staged snapshot has {with_events} users with events, but the pipeline "
            f"counted {counts['users_with_events']}; some buckets were lost or written twice"
        )
    parts = ("users_adapted", "users_zero_step", "users_carried_forward")
    if all(k in counts for k in parts) and sum(counts[k] for k in parts) != table.num_rows:
        raise snapshot.SnapshotError(
            f"staged snapshot has {table.num_rows} rows, but adapt emitted "
            f"{sum(counts[k] for k in parts)}; some buckets were lost or written twice"
        )
    if n_support.size and (n_support.max() > max_support or n_support.min() < 0):
        raise snapshot.SnapshotError(f"n_support outside [0, {max_support}]")
    if not cold_users and with_events != table.num_rows:
        raise snapshot.SnapshotError("rows without events in a run that writes no cold users")
    last = table.column("last_event_ts")
    late = pc.sum(pc.greater_equal(last, pa.scalar(meta.as_of, last.type))).as_py() or 0
    if late:
        raise snapshot.SnapshotError(f"{late} rows have last_event_ts >= as_of {meta.as_of.isoformat()}")
    if bool(np.any((n_support > 0) == np.asarray(last.is_null()))):
        raise snapshot.SnapshotError("last_event_ts must be set exactly for the users with events")


def finalize(
    root: str | Path,
    staged: Path,
    meta: snapshot.SnapshotMeta,
    counts: dict[str, int],
    manifest: dict[str, Any],
    max_support: int,
    keep: int,
    cold_users: bool,
) -> Path:
    """Validate the staged run, write its manifest and publish it; returns the snapshot directory."""
    counts = dict(counts)
    counts["dead_lettered"] = merge_dead_letters(staged)
    if "events_used" in counts:  # exact duplicates in different batches were read as valid: not used
        counts["events_used"] -= counts.get("duplicates_across_batches", 0)
    files = sorted(staged.glob("part-*.parquet"))
    table = (
        pa.concat_tables([pq.read_table(f) for f in files]) if files else snapshot.schema(meta).empty_table()
    )
    check_rows(table, counts, max_support, meta, cold_users)
    counts["users"] = table.num_rows
    expected = None
    if "users_with_events" in counts:  # runners that report no metrics leave the counts unchecked
        expected = counts["users_with_events"] + counts.get("cold_users", 0)
    snapshot.validate(table, meta, expected)
    return snapshot.publish(root, staged, meta, dict(manifest) | {"counts": counts}, keep=keep)
