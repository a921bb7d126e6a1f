"""The meta-embedding snapshot format, shared by the refresh job (writer) and serving (reader).

Layout under a snapshot root (a local directory or an object-store prefix, `meta_embed.storage`):

    ROOT/CURRENT                       one line: the name of the published snapshot
    ROOT/snapshots/NAME/part-*.parquet user_id, embedding, n_support, last_event_ts, seen_item_ids
    ROOT/snapshots/NAME/manifest.json  counts, as_of, model_version, spec hash, files, content hash
    ROOT/snapshots/NAME/indexes/       FAISS indexes built for this snapshot (serving)
    ROOT/staging/                      local disk only: work in progress, never read by serving

Each data file is summarized by its writer (`Shard`: rows, users with events, support
bounds, finiteness, bytes, sha256, a hash of its rows), so publishing checks and hashes a
snapshot from its shards' summaries and never reads a row back. The snapshot's content
hash is the sha256 of its shards' `file content` lines in file order.

Publishing (`publish`): the manifest is the last file written into the snapshot, and
CURRENT is written after it with a compare-and-swap against the name the run started
from (`storage.swap`), so a concurrent second publisher is refused, never silently
overwritten; a publish never moves CURRENT to an older as_of (only `rollback` does). On
a local disk the data goes to staging/ and the directory is renamed into snapshots/; on
an object store (no rename) the run writes straight into a write-once prefix with a
unique name, and a prefix without a manifest is never read. A reader that follows
CURRENT never sees a partial snapshot.

`seen_item_ids` holds the distinct items of the user's most recent events, newest first
(at most `--seen-items`, 50 by default): serving leaves them out of recommendations. A
snapshot written before the column existed reads as every user having seen nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
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
from meta_embed.tables import TS_TYPE

FORMAT = 1
SEEN_TYPE = pa.list_(pa.string())
CURRENT = "CURRENT"
MANIFEST = "manifest.json"


class SnapshotError(ValueError):
    """A snapshot is missing, invalid, or does not match the model that reads it."""


@dataclasses.dataclass(frozen=True)
class SnapshotMeta:
    """What every data file of a snapshot carries in its Parquet metadata."""

    model_version: str
    feature_spec_hash: str
    embedding_mode: str
    dim: int
    as_of: dt.datetime

    def __post_init__(self) -> None:
        if self.as_of.tzinfo is None:
            raise ValueError("SnapshotMeta.as_of must be timezone-aware (UTC)")
        if self.dim <= 0:
            raise ValueError(f"SnapshotMeta.dim must be > 0, got {self.dim}")

    @property
    def name(self) -> str:
        """Prefix of the snapshot's directory name (publish appends a hash of the rows)."""
        return f"{self.as_of.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}-{self.model_version[:12]}"

    def to_metadata(self) -> dict[bytes, bytes]:
        d = dataclasses.asdict(self) | {"as_of": self.as_of.isoformat(), "format": FORMAT}
        return {b"meta_embed": json.dumps(d, sort_keys=True).encode()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SnapshotMeta:
        return cls(
            d["model_version"],
            d["feature_spec_hash"],
            d["embedding_mode"],
            int(d["dim"]),
            dt.datetime.fromisoformat(d["as_of"]),
        )


def schema(meta: SnapshotMeta) -> pa.Schema:
    return pa.schema(
        [
            pa.field("user_id", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), meta.dim), nullable=False),
            pa.field("n_support", pa.int32(), nullable=False),
            pa.field("last_event_ts", TS_TYPE, nullable=True),
            pa.field("seen_item_ids", SEEN_TYPE, nullable=False),
        ],
        metadata=meta.to_metadata(),
    )


def to_table(
    meta: SnapshotMeta,
    user_ids: pa.Array | list[str],
    embeddings: np.ndarray,
    n_support: np.ndarray,
    last_event_ts: pa.Array | np.ndarray,
    seen_item_ids: pa.Array | None = None,
) -> pa.Table:
    """Rows of a snapshot; `embeddings` is (users, dim) float32, `last_event_ts` in µs or
    timestamps, `seen_item_ids` a list of item ids per user (None: empty lists)."""
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[1] != meta.dim:
        raise SnapshotError(f"embeddings have shape {emb.shape}, expected (users, {meta.dim})")
    flat = pa.array(emb.reshape(-1), pa.float32())
    ts = (
        last_event_ts
        if isinstance(last_event_ts, (pa.Array, pa.ChunkedArray))
        else pa.array(last_event_ts, pa.int64())
    )
    if seen_item_ids is None:
        seen_item_ids = pa.ListArray.from_arrays(np.zeros(len(emb) + 1, np.int32), pa.array([], pa.string()))
    return pa.table(
        [
            pa.array(user_ids, pa.string()),
            pa.FixedSizeListArray.from_arrays(flat, meta.dim),
            pa.array(n_support, pa.int32()),
            ts.cast(TS_TYPE),
            seen_item_ids.cast(SEEN_TYPE),
        ],
        schema=schema(meta),
    )


def seen_of(table: pa.Table) -> pa.ListArray:
    """The seen_item_ids column as one list array (empty lists for a snapshot without it)."""
    if "seen_item_ids" not in table.column_names:
        return pa.ListArray.from_arrays(np.zeros(table.num_rows + 1, np.int32), pa.array([], pa.string()))
    return table.column("seen_item_ids").combine_chunks()


def embeddings_of(table: pa.Table) -> np.ndarray:
    """(users, dim) float32 view of a snapshot table's embedding column (zero-copy when possible)."""
    col = table.column("embedding").combine_chunks()
    dim = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)


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


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """A published snapshot's manifest (local or object store)."""
    try:
        return json.loads(storage.read_bytes(storage.join(directory, MANIFEST)))
    except FileNotFoundError:
        raise SnapshotError(f"{directory}: no {MANIFEST}; this is not a published snapshot") from None


def read_dir(directory: str | Path, memory_map: bool = True) -> tuple[pa.Table, dict[str, Any]]:
    """Read a local snapshot directory's rows and manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    parts = [pq.read_table(directory / f["name"], memory_map=memory_map) for f in manifest["files"]]
    meta = SnapshotMeta.from_dict(manifest)
    table = pa.concat_tables(parts) if parts else schema(meta).empty_table()
    return table, manifest


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


_READ = object()  # `expect` default of set_current: whatever CURRENT names when it is read


def publish(
    root: str | Path,
    staged: str | Path,
    meta: SnapshotMeta,
    manifest: dict[str, Any],
    shards: Sequence[Shard],
    keep: int = 3,
    expect: Any = _READ,
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


def require_not_older(root: str | Path, as_of: dt.datetime) -> None:
    """Refuse to publish a snapshot older than the one CURRENT names: a publish never moves
    CURRENT back (an older --as-of, or an overlapping run that finished last); only a
    rollback does, on purpose."""
    live = current_name(root)
    if live is None or not storage.exists(storage.join(root, "snapshots", live, MANIFEST)):
        return
    live_as_of = dt.datetime.fromisoformat(read_manifest(storage.join(root, "snapshots", live))["as_of"])
    if live_as_of > as_of:
        raise SnapshotError(
            f"{root}: CURRENT is {live} with as_of {live_as_of.isoformat()}, newer than {as_of.isoformat()}; "
            "a publish never moves CURRENT back. Refresh with a later --as-of, or go back on purpose with "
            "`meta-embed rollback`"
        )


def set_current(root: str | Path, name: str, expect: Any = _READ) -> None:
    """Point CURRENT at snapshots/NAME (which must be complete), atomically and only if CURRENT
    still names `expect` (None: no CURRENT yet); a concurrent writer is refused, never overwritten."""
    if not storage.exists(storage.join(root, "snapshots", name, MANIFEST)):
        raise SnapshotError(f"{root}/snapshots/{name}: not a complete snapshot; cannot point CURRENT at it")
    path = storage.join(root, CURRENT)
    try:
        now: bytes | None = storage.read_bytes(path)
    except FileNotFoundError:
        now = None
    live = now.decode().strip() if now is not None else None
    try:
        if expect is not _READ and live != expect:
            raise storage.Conflict(f"CURRENT names {live}")
        storage.swap(path, f"{name}\n".encode(), now)
    except storage.Conflict as err:
        raise SnapshotError(
            f"{root}: another publisher moved CURRENT (from {expect if expect is not _READ else live} "
            f"while this one ran; {err}); {name} was not published. Only one refresh may publish to a "
            "root at a time: rerun this one once the other has finished"
        ) from err


def current_name(root: str | Path) -> str | None:
    try:
        return storage.read_text(storage.join(root, CURRENT)).strip()
    except FileNotFoundError:
        return None


def current_dir(root: str | Path) -> Path:
    """The local directory of the snapshot CURRENT names (serving reads local roots)."""
    name = current_name(root)
    if name is None:
        raise SnapshotError(
            f"{root}: no {CURRENT} pointer; run `meta-embed refresh` to publish a snapshot first"
        )
    return Path(root) / "snapshots" / name


def published(root: str | Path) -> list[str]:
    """Names of complete snapshots, oldest first (names sort by as_of)."""
    base = storage.join(root, "snapshots")
    return [
        n
        for n in storage.listdir(base)
        if not n.startswith(".") and storage.exists(storage.join(base, n, MANIFEST))
    ]


def listing(root: str | Path) -> list[dict[str, Any]]:
    """The complete snapshots under `root`, oldest first: name, as_of, model_version, users
    and whether CURRENT names it."""
    live, rows = current_name(root), []
    for name in published(root):
        manifest = read_manifest(storage.join(root, "snapshots", name))
        users = sum(int(f["rows"]) for f in manifest.get("files", []))
        rows.append(
            {
                "name": name,
                "as_of": manifest.get("as_of", ""),
                "model_version": manifest.get("model_version", ""),
                "users": users,
                "current": name == live,
            }
        )
    return rows


def prune(root: str | Path, keep: int) -> list[str]:
    """Delete all but the newest `keep` snapshots (never the one CURRENT names), and the
    incomplete prefixes of runs older than CURRENT (they can never publish); returns the
    deleted names."""
    names, live = published(root), current_name(root)
    doomed = [n for n in names[: max(len(names) - keep, 0)] if n != live]
    if live is not None:
        stamp = live[:16]  # %Y%m%dT%H%M%SZ of its as_of
        base = storage.join(root, "snapshots")
        doomed += [
            n for n in storage.listdir(base) if n not in names and not n.startswith(".") and n[:16] < stamp
        ]
    for name in doomed:
        storage.delete_tree(storage.join(root, "snapshots", name))
    return doomed


def rollback(root: str | Path) -> str:
    """Point CURRENT at the snapshot published before the current one; returns its name."""
    names, live = published(root), current_name(root)
    if live not in names or names.index(live) == 0:
        raise SnapshotError(f"{root}: no snapshot older than {live!r} to roll back to (kept: {names})")
    previous = names[names.index(live) - 1]
    set_current(root, previous, expect=live)
    return previous
