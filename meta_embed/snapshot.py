"""The meta-embedding snapshot format, shared by the refresh job (writer) and serving (reader).

Layout under a snapshot root (a local directory or an object-store prefix, `meta_embed.storage`):

    ROOT/CURRENT                       one line: the name of the published snapshot
    ROOT/snapshots/NAME/part-*.parquet user_id, embedding, n_support, last_event_ts, seen_item_ids
    ROOT/snapshots/NAME/manifest.json  counts, as_of, model_version, spec hash, files, content hash
    ROOT/snapshots/NAME/indexes/       FAISS indexes built for this snapshot (serving)
    ROOT/staging/                      local disk only: work in progress, never read by serving

Writers summarize their files and publish through `meta_embed.publishing`: the manifest
is the last file written into the snapshot and CURRENT is written after it, by
compare-and-swap (`set_current`), so a reader that follows CURRENT never sees a partial
snapshot. A publish never moves CURRENT to an older as_of; only `rollback` does.

`seen_item_ids` holds the distinct items of the user's most recent events, newest first
(at most `--seen-items`, 50 by default): serving leaves them out of recommendations. A
snapshot written before the column existed reads as every user having seen nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
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


AS_READ = object()  # `expect` default of set_current: whatever CURRENT names when it is read


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


def set_current(root: str | Path, name: str, expect: Any = AS_READ) -> None:
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
        if expect is not AS_READ and live != expect:
            raise storage.Conflict(f"CURRENT names {live}")
        storage.swap(path, f"{name}\n".encode(), now)
    except storage.Conflict as err:
        raise SnapshotError(
            f"{root}: another publisher moved CURRENT (from {expect if expect is not AS_READ else live} "
            f"while this one ran; {err}); {name} was not published. Only one refresh may publish to a "
            "root at a time: rerun this one once the other has finished"
        ) from err


def current_name(root: str | Path) -> str | None:
    try:
        return storage.read_text(storage.join(root, CURRENT)).strip()
    except FileNotFoundError:
        return None


def require_current(root: str | Path) -> str:
    """The name CURRENT holds; refuses a root where nothing was published yet."""
    name = current_name(root)
    if name is None:
        raise SnapshotError(
            f"{root}: no {CURRENT} pointer; run `meta-embed refresh` to publish a snapshot first"
        )
    return name


def current_dir(root: str | Path) -> Path:
    """The local directory of the snapshot CURRENT names (serving reads local roots)."""
    return Path(root) / "snapshots" / require_current(root)


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
