"""The meta-embedding snapshot format, shared by the refresh job (writer) and serving (reader).

Layout under a snapshot root:

    ROOT/CURRENT                       one line: the name of the published snapshot
    ROOT/snapshots/NAME/part-*.parquet user_id, embedding, n_support, last_event_ts, seen_item_ids
    ROOT/snapshots/NAME/manifest.json  counts, as_of, model_version, spec hash, files...
    ROOT/snapshots/NAME/indexes/       FAISS indexes built for this snapshot (serving)
    ROOT/staging/                      work in progress; never read by serving

Publishing is atomic: data files are written to staging, validated, the manifest is
written, the directory is renamed into snapshots/, and only then is CURRENT replaced
(write a temp file, fsync, os.replace). A reader that follows CURRENT never sees a
partial snapshot.

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
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

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


def validate(table: pa.Table, meta: SnapshotMeta, expected_users: int | None = None) -> None:
    """Refuse a snapshot with duplicate users, NaN/inf, the wrong dim or another model_version."""
    got = json.loads((table.schema.metadata or {}).get(b"meta_embed", b"{}"))
    if got.get("model_version") != meta.model_version:
        raise SnapshotError(
            f"snapshot rows carry model_version {got.get('model_version')}, expected {meta.model_version}"
        )
    if table.schema.field("embedding").type.list_size != meta.dim:
        raise SnapshotError(f"embedding dim {table.schema.field('embedding').type.list_size} != {meta.dim}")
    if pc.count_distinct(table.column("user_id")).as_py() != table.num_rows:
        raise SnapshotError("snapshot has more than one row for some user_id")
    if expected_users is not None and table.num_rows != expected_users:
        raise SnapshotError(f"snapshot has {table.num_rows} users, expected {expected_users}")
    bad = ~np.isfinite(embeddings_of(table)).all(axis=1) if table.num_rows else np.zeros(0, bool)
    if bad.any():
        users = table.column("user_id").take(pa.array(np.flatnonzero(bad)[:3])).to_pylist()
        raise SnapshotError(
            f"{int(bad.sum())} users have NaN or inf embeddings (e.g. {users}); refusing them"
        )


def write_part(table: pa.Table, directory: str | Path, index: int) -> Path:
    path = Path(directory) / f"part-{index:05d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def staging_dir(root: str | Path, meta: SnapshotMeta, run_id: str) -> Path:
    path = Path(root) / "staging" / f"{meta.name}-{run_id}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_dir(directory: str | Path, memory_map: bool = True) -> tuple[pa.Table, dict[str, Any]]:
    """Read a snapshot directory's rows and manifest."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise SnapshotError(f"{directory}: no {MANIFEST}; this is not a published snapshot")
    manifest = json.loads(manifest_path.read_text())
    parts = [pq.read_table(directory / f["name"], memory_map=memory_map) for f in manifest["files"]]
    meta = SnapshotMeta.from_dict(manifest)
    table = pa.concat_tables(parts) if parts else schema(meta).empty_table()
    return table, manifest


def _fsync_write(path: Path, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


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
    return h.hexdigest()[:8]


def publish(
    root: str | Path, staged: str | Path, meta: SnapshotMeta, manifest: dict[str, Any], keep: int = 3
) -> Path:
    """Validate the staged files, write the manifest, move into place, switch CURRENT, prune old ones.

    The snapshot is named by as_of, model version and a hash of its rows, so publishing the
    same result twice is idempotent (the second copy is dropped and CURRENT re-pointed).
    """
    root, staged = Path(root), Path(staged)
    require_not_older(root, meta.as_of)
    files = sorted(staged.glob("part-*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files]) if files else schema(meta).empty_table()
    validate(table, meta, manifest.get("counts", {}).get("users"))
    name = f"{meta.name}-{content_hash(table)}"
    full = dict(manifest) | {
        "format": FORMAT,
        "name": name,
        **json.loads(meta.to_metadata()[b"meta_embed"]),
        "files": [{"name": f.name, "rows": pq.read_metadata(f).num_rows} for f in files],
    }
    _fsync_write(staged / MANIFEST, json.dumps(full, indent=2, sort_keys=True, default=str) + "\n")
    final = root / "snapshots" / name
    final.parent.mkdir(parents=True, exist_ok=True)
    if (final / MANIFEST).is_file():
        shutil.rmtree(staged)
    else:
        shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover of a crashed move
        os.replace(staged, final)
    set_current(root, name)
    prune(root, keep)
    return final


def require_not_older(root: str | Path, as_of: dt.datetime) -> None:
    """Refuse to publish a snapshot older than the one CURRENT names: a publish never moves
    CURRENT back (an older --as-of, or an overlapping run that finished last); only a
    rollback does, on purpose."""
    live = current_name(root)
    path = Path(root) / "snapshots" / str(live) / MANIFEST
    if live is None or not path.is_file():
        return
    live_as_of = dt.datetime.fromisoformat(json.loads(path.read_text())["as_of"])
    if live_as_of > as_of:
        raise SnapshotError(
            f"{root}: CURRENT is {live} with as_of {live_as_of.isoformat()}, newer than {as_of.isoformat()}; "
            "a publish never moves CURRENT back. Refresh with a later --as-of, or go back on purpose with "
            "`meta-embed rollback`"
        )


def set_current(root: str | Path, name: str) -> None:
    """Atomically point CURRENT at snapshots/NAME (which must exist and be complete)."""
    root = Path(root)
    if not (root / "snapshots" / name / MANIFEST).is_file():
        raise SnapshotError(f"{root}/snapshots/{name}: not a complete snapshot; cannot point CURRENT at it")
    tmp = root / f".{CURRENT}.tmp"
    _fsync_write(tmp, name + "\n")
    os.replace(tmp, root / CURRENT)


def current_name(root: str | Path) -> str | None:
    path = Path(root) / CURRENT
    return path.read_text().strip() if path.is_file() else None


def current_dir(root: str | Path) -> Path:
    name = current_name(root)
    if name is None:
        raise SnapshotError(
            f"{root}: no {CURRENT} pointer; run `meta-embed refresh` to publish a snapshot first"
        )
    return Path(root) / "snapshots" / name


def published(root: str | Path) -> list[str]:
    """Names of complete snapshots, oldest first (names sort by as_of)."""
    base = Path(root) / "snapshots"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / MANIFEST).is_file() and not p.name.startswith("."))


def listing(root: str | Path) -> list[dict[str, Any]]:
    """The complete snapshots under `root`, oldest first: name, as_of, model_version, users
    and whether CURRENT names it."""
    live, rows = current_name(root), []
    for name in published(root):
        manifest = json.loads((Path(root) / "snapshots" / name / MANIFEST).read_text())
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
    """Delete all but the newest `keep` snapshots (never the one CURRENT names); returns deleted names."""
    names, live = published(root), current_name(root)
    doomed = [n for n in names[: max(len(names) - keep, 0)] if n != live]
    for name in doomed:
        shutil.rmtree(Path(root) / "snapshots" / name)
    return doomed


def rollback(root: str | Path) -> str:
    """Point CURRENT at the snapshot published before the current one; returns its name."""
    names, live = published(root), current_name(root)
    if live not in names or names.index(live) == 0:
        raise SnapshotError(f"{root}: no snapshot older than {live!r} to roll back to (kept: {names})")
    previous = names[names.index(live) - 1]
    set_current(root, previous)
    return previous
