"""The embedding store: meta embeddings of one published snapshot, looked up by user id.

Built from the snapshot's Parquet parts (`EmbeddingStore.from_snapshot`) and written
beside the FAISS indexes as plain arrays (`save`): the `IdIndex` files, the embeddings
as one (users, D) `.npy` (float32, or float16 with `fp16`), n_support, last_event_ts,
and the items each user has seen as catalog rows in CSR form (`seen_offsets`, users + 1
int64; `seen_rows`, int32). `EmbeddingStore.open` memory-maps them, so a server holds no
Python object per user and a 10M-user snapshot costs page cache, not heap. The seen
items cost 8 + 4 x (at most 50) bytes per user, beside 4 x D (2 x D in fp16) for the
embedding (docs/api.md has the figures measured on MovieLens).

A store refuses a snapshot whose model_version is not the scorer's: embeddings are
only meaningful to the global block they were computed for.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from meta_embed.snapshot import SnapshotError, SnapshotMeta, embeddings_of, read_dir, seen_of
from serving.ids import IdIndex, mapped

NO_TS = np.iinfo(np.int64).min
STORE_JSON = "store.json"
STORE_FORMAT = 2  # part of the artifact key: 2 added the seen items (stores of format 1 are rebuilt)


class Status(str, enum.Enum):
    """Where a served embedding came from."""

    FRESH = "fresh"  # in the snapshot, snapshot younger than max age
    STALE = "stale"  # in the snapshot, snapshot older than max age
    COLD = "cold"  # not in the snapshot, features known: zero-step embedding
    DEFAULT = "default"  # nothing known: zero-step embedding of all-missing features


def check_version(meta: SnapshotMeta, model_version: str, where: str) -> None:
    if meta.model_version != model_version:
        raise SnapshotError(
            f"{where}: snapshot embeddings are from model_version {meta.model_version}, the scorer is "
            f"{model_version}; refusing to mix them. Serve the checkpoint that wrote this snapshot "
            "(manifest 'checkpoint' key or ROOT/MODEL) or refresh the snapshot with this model."
        )


def _check_finite(embeddings: np.ndarray, ids: pa.Array | pa.ChunkedArray, where: str) -> None:
    """Refuse embeddings with NaN or inf: served, they would answer scores of null."""
    ok = np.isfinite(embeddings).all(axis=1)
    if not ok.all():
        bad = np.flatnonzero(~ok)
        raise SnapshotError(
            f"{where}: {len(bad)} users have non-finite embeddings (e.g. user {ids[int(bad[0])]}); refusing "
            "to serve the snapshot. Publish a good snapshot (the refresh job refuses such rows) or roll back"
        )


@dataclasses.dataclass(frozen=True)
class EmbeddingStore:
    """Embeddings of one snapshot; rows are the snapshot's row order."""

    meta: SnapshotMeta
    name: str
    ids: IdIndex
    embeddings: np.ndarray  # (users, D) float32 or float16
    n_support: np.ndarray  # (users,) int32
    last_event_us: np.ndarray  # (users,) int64 µs since the epoch, NO_TS when unknown
    seen_offsets: np.ndarray  # (users + 1,) int64: user r's seen items are seen_rows[offsets[r]:offsets[r+1]]
    seen_rows: np.ndarray  # int32 catalog rows, newest first per user

    @classmethod
    def from_snapshot(
        cls, directory: str | Path, model_version: str, items: IdIndex, fp16: bool = False
    ) -> EmbeddingStore:
        """Read a published snapshot directory (Parquet parts + manifest) into memory; seen
        item ids become rows of the catalog `items` (ids it does not hold are dropped)."""
        table, manifest = read_dir(directory)
        meta = SnapshotMeta.from_dict(manifest)
        check_version(meta, model_version, str(directory))
        emb = embeddings_of(table).astype(np.float16 if fp16 else np.float32)
        _check_finite(emb, table.column("user_id"), str(directory))
        if emb.shape[1] != meta.dim:
            raise SnapshotError(f"{directory}: embeddings have dim {emb.shape[1]}, manifest says {meta.dim}")
        ts = table.column("last_event_ts").cast(pa.int64()).fill_null(NO_TS)
        seen = seen_of(table)
        rows = items.find_many(seen.flatten())
        user = np.repeat(np.arange(len(seen)), np.diff(seen.offsets.to_numpy()))[rows >= 0]
        return cls(
            meta,
            str(manifest.get("name", Path(directory).name)),
            IdIndex.build(table.column("user_id"), f"{directory}: snapshot user_id"),
            emb,
            table.column("n_support").to_numpy().astype(np.int32),
            ts.to_numpy().astype(np.int64),
            np.concatenate([[0], np.cumsum(np.bincount(user, minlength=len(seen)))]).astype(np.int64),
            rows[rows >= 0].astype(np.int32),
        )

    def save(self, directory: Path) -> None:
        """Write the store's arrays into `directory` (which must exist)."""
        self.ids.save(directory, "users")
        np.save(directory / "embeddings.npy", np.ascontiguousarray(self.embeddings))
        np.save(directory / "n_support.npy", np.ascontiguousarray(self.n_support))
        np.save(directory / "last_event_us.npy", np.ascontiguousarray(self.last_event_us))
        np.save(directory / "seen_offsets.npy", np.ascontiguousarray(self.seen_offsets))
        np.save(directory / "seen_rows.npy", np.ascontiguousarray(self.seen_rows))
        info = json.loads(self.meta.to_metadata()[b"meta_embed"]) | {
            "name": self.name,
            "users": len(self),
            "dtype": str(self.embeddings.dtype),
        }
        (directory / STORE_JSON).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")

    @classmethod
    def open(cls, directory: Path, model_version: str) -> EmbeddingStore:
        """Memory-map a store written by `save`; refuses another model_version."""
        info = json.loads((directory / STORE_JSON).read_text())
        meta = SnapshotMeta.from_dict(info)
        check_version(meta, model_version, str(directory))
        emb, ids = mapped(directory / "embeddings.npy"), IdIndex.open(directory, "users")
        _check_finite(emb, ids.ids, str(directory))
        store = cls(
            meta,
            info["name"],
            ids,
            emb,
            mapped(directory / "n_support.npy"),
            mapped(directory / "last_event_us.npy"),
            mapped(directory / "seen_offsets.npy"),
            mapped(directory / "seen_rows.npy"),
        )
        offsets = store.seen_offsets
        if (
            not (len(store.ids) == emb.shape[0] == len(store.n_support) == len(offsets) - 1 == info["users"])
            or emb.shape[1] != meta.dim
            or offsets[-1] != len(store.seen_rows)
        ):
            raise SnapshotError(f"{directory}: store files disagree with {STORE_JSON}; rebuild the indexes")
        return store

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        """Bytes of every array the store holds (ids, hashes, rows, embeddings, columns)."""
        ids = sum(b.size for b in self.ids.ids.buffers() if b is not None)
        arrays = (self.ids.hashes, self.ids.order, self.embeddings, self.n_support, self.last_event_us,
                  self.seen_offsets, self.seen_rows)  # fmt: skip
        return ids + sum(a.nbytes for a in arrays)

    def row(self, user_id: str) -> int:
        """Row of a user, or -1 if the snapshot does not know the user."""
        return self.ids.find(user_id)

    def embedding(self, row: int) -> np.ndarray:
        """The stored embedding of a row as float32 (D,)."""
        return np.array(self.embeddings[row], dtype=np.float32)  # a copy: the store may be read-only mmap

    def seen(self, row: int) -> np.ndarray:
        """Catalog rows of the items the user of `row` has seen, newest first."""
        return self.seen_rows[self.seen_offsets[row] : self.seen_offsets[row + 1]]

    def last_event(self, row: int) -> dt.datetime | None:
        us = int(self.last_event_us[row])
        return None if us == NO_TS else dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)

    def age_s(self, now: dt.datetime) -> float:
        return (now - self.meta.as_of).total_seconds()

    def known_status(self, now: dt.datetime, max_age_s: float) -> Status:
        """Status of a user found in this snapshot: fresh, or stale past `max_age_s`."""
        return Status.STALE if self.age_s(now) > max_age_s else Status.FRESH
