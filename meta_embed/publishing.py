"""Writing and publishing a snapshot (the format is `meta_embed.snapshot`).

Each data file is summarized by its writer (`Shard`: rows, users with events, support
bounds, finiteness, bytes, sha256, a hash of its rows), so publishing checks and hashes a
snapshot from its shards' summaries and never reads a row back. The snapshot's content
hash is the sha256 of its shards' `file content` lines in file order.

`publish`: the manifest is the last file written into the snapshot, and CURRENT is
written after it with a compare-and-swap against the name the run started from
(`snapshot.set_current`), so a concurrent second publisher is refused, never silently
overwritten; a publish never moves CURRENT to an older as_of (only `rollback` does). On
a local disk the data goes to staging/ and the directory is renamed into snapshots/; on
an object store (no rename) the run writes straight into a write-once prefix with a
unique name (`staging_dir`), and a prefix without a manifest is never read. A reader
that follows CURRENT never sees a partial snapshot.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from meta_embed import storage
from meta_embed.snapshot import (
    AS_READ,
    FORMAT,
    MANIFEST,
    SnapshotError,
    SnapshotMeta,
    embeddings_of,
    prune,
    published,
    read_manifest,
    require_not_older,
    set_current,
)


@dataclasses.dataclass(frozen=True)
class Shard:
    """What a writer records about one data file it wrote; publishing checks a snapshot from
    these alone. `misplaced` counts rows its writer found outside the file's user bucket."""

    file: str
    rows: int
    users_with_events: int
    min_support: int
    max_support: int
    late: int  # rows with last_event_ts >= as_of
    ts_mismatch: int  # rows whose last_event_ts is set when n_support is 0, or missing when not
    nonfinite: int
    duplicate_users: int
    dim: int
    model_version: str
    content: str  # content_hash of the rows
    bytes: int
    sha256: str
    misplaced: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Shard:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def summarize(table: pa.Table, file: str, data: bytes, meta: SnapshotMeta, misplaced: int = 0) -> Shard:
    """The `Shard` of rows `table`, written as the Parquet bytes `data` under the name `file`."""
    n_support = table.column("n_support").to_numpy()
    last = table.column("last_event_ts")
    late = pc.sum(pc.greater_equal(last, pa.scalar(meta.as_of, last.type))).as_py() or 0
    emb = embeddings_of(table) if table.num_rows else np.zeros((0, meta.dim), np.float32)
    got = json.loads((table.schema.metadata or {}).get(b"meta_embed", b"{}"))
    return Shard(
        file=file,
        rows=table.num_rows,
        users_with_events=int((n_support > 0).sum()),
        min_support=int(n_support.min()) if n_support.size else 0,
        max_support=int(n_support.max()) if n_support.size else 0,
        late=int(late),
        ts_mismatch=int(np.sum((n_support > 0) == np.asarray(last.is_null()))),
        nonfinite=int((~np.isfinite(emb).all(axis=1)).sum()),
        duplicate_users=table.num_rows - (pc.count_distinct(table.column("user_id")).as_py() or 0),
        dim=table.schema.field("embedding").type.list_size,
        model_version=str(got.get("model_version")),
        content=content_hash(table),
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        misplaced=misplaced,
    )


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def write_part(table: pa.Table, directory: str | Path, index: int) -> Shard:
    """Write rows as DIRECTORY/part-INDEX.parquet (local or object store); returns its summary."""
    name = f"part-{index:05d}.parquet"
    data = parquet_bytes(table)
    storage.write_bytes(storage.join(directory, name), data)
    meta = SnapshotMeta.from_dict(json.loads((table.schema.metadata or {})[b"meta_embed"]))
    return summarize(table, name, data, meta)


def staging_dir(root: str | Path, meta: SnapshotMeta, run_id: str) -> str:
    """Where a run writes its data files: ROOT/staging/NAME-RUN on a local disk (renamed into
    snapshots/ when published); on an object store the write-once prefix
    ROOT/snapshots/NAME-RUN itself, never read before its manifest is there."""
    if storage.is_remote(root):
        return storage.join(root, "snapshots", f"{meta.name}-{run_id.rsplit('-', 1)[-1]}")
    path = Path(root) / "staging" / f"{meta.name}-{run_id}"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def content_hash(table: pa.Table) -> str:
    """Fingerprint of a snapshot's rows, independent of shard layout and row order."""
    rows = table.sort_by("user_id")
    h = hashlib.sha256()
    for name in ("user_id", "n_support", "last_event_ts"):
        col = rows.column(name).combine_chunks()
        h.update(np.asarray(col.is_null()).tobytes())
        text = col.cast(pa.string()).fill_null("").cast(pa.large_binary())
        h.update(text.buffers()[1] or b"")  # offsets: value boundaries
        h.update(text.buffers()[2] or b"")
    h.update(embeddings_of(rows).tobytes())
    if "seen_item_ids" in rows.column_names:
        seen = rows.column("seen_item_ids").combine_chunks()
        h.update(np.diff(seen.offsets.to_numpy()).astype(np.int64).tobytes())
        values = seen.flatten().cast(pa.large_binary())
        h.update(values.buffers()[1] or b"")
        h.update(values.buffers()[2] or b"")
    return h.hexdigest()


def check_shards(shards: Sequence[Shard], meta: SnapshotMeta, expected_users: int | None = None) -> None:
    """Refuse a snapshot, from its shards' summaries, with duplicate users, NaN/inf, the wrong
    dim or another model_version."""
    for s in shards:
        if s.model_version != meta.model_version:
            raise SnapshotError(
                f"{s.file}: rows carry model_version {s.model_version}, expected {meta.model_version}"
            )
        if s.dim != meta.dim:
            raise SnapshotError(f"{s.file}: embedding dim {s.dim} != {meta.dim}")
        if s.duplicate_users or s.misplaced:
            raise SnapshotError(f"{s.file}: snapshot has more than one row for some user_id")
        if s.nonfinite:
            raise SnapshotError(f"{s.file}: {s.nonfinite} users have NaN or inf embeddings; refusing them")
    if len({s.file for s in shards}) != len(shards):
        raise SnapshotError("two shard summaries name the same file; some buckets were written twice")
    users = sum(s.rows for s in shards)
    if expected_users is not None and users != expected_users:
        raise SnapshotError(f"snapshot has {users} users, expected {expected_users}")


def combined_hash(shards: Sequence[Shard]) -> str:
    """The snapshot's content hash: sha256 of its shards' `file content` lines, by file name."""
    lines = "".join(f"{s.file} {s.content}\n" for s in sorted(shards, key=lambda s: s.file))
    return hashlib.sha256(lines.encode()).hexdigest()


def publish(
    root: str | Path,
    staged: str | Path,
    meta: SnapshotMeta,
    manifest: dict[str, Any],
    shards: Sequence[Shard],
    keep: int = 3,
    expect: Any = AS_READ,
) -> str:
    """Check the shards, write the manifest, put the snapshot in place, switch CURRENT (only
    if it still names `expect`: the snapshot the run started from), prune old ones; returns
    the snapshot's path.

    Publishing the same result twice is idempotent: the second copy is dropped and CURRENT
    re-pointed to the first (such as the complete snapshot of a run killed before CURRENT
    moved). On a local disk a snapshot is named by as_of, model version and content hash;
    on an object store it keeps the write-once prefix the run wrote into.
    """
    require_not_older(root, meta.as_of)
    check_shards(shards, meta, manifest.get("counts", {}).get("users"))
    content = combined_hash(shards)
    same = _published_as(root, meta, content)  # e.g. left by a run killed before CURRENT moved
    name = same or (storage.basename(staged) if storage.is_remote(root) else f"{meta.name}-{content[:8]}")
    final = storage.join(root, "snapshots", name)
    if same:
        storage.delete_tree(staged)  # the same content is published already: that copy stays
    else:
        files = [
            {"name": s.file, "rows": s.rows, "bytes": s.bytes, "sha256": s.sha256, "content": s.content}
            for s in sorted(shards, key=lambda s: s.file)
        ]
        full = dict(manifest) | {
            "format": FORMAT,
            "name": name,
            **json.loads(meta.to_metadata()[b"meta_embed"]),
            "content_hash": content,
            "files": files,
        }
        text = json.dumps(full, indent=2, sort_keys=True, default=str) + "\n"
        storage.write_text(storage.join(staged, MANIFEST), text)  # the last file of the snapshot
        if not storage.is_remote(root):
            Path(final).parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover of a crashed move
            os.replace(staged, final)
    try:
        set_current(root, name, expect)
    except SnapshotError:
        if not same:
            storage.delete_tree(final)  # never left where a rollback could find it
        raise
    prune(root, keep)
    return final


def _published_as(root: str | Path, meta: SnapshotMeta, content: str) -> str | None:
    """A complete snapshot of `root` with the same as_of, model and content, if there is one."""
    names = [n for n in published(root) if n.startswith(f"{meta.name}-")]
    same = (
        n for n in names if read_manifest(storage.join(root, "snapshots", n)).get("content_hash") == content
    )
    return next(same, None)
