"""The immutable serving state and how it is loaded from a snapshot root.

A `ServingState` bundles everything one answer needs: the scorer (checkpoint + item
catalog), the embedding store of one snapshot and its two FAISS indexes. It is never
mutated; hot reload builds a new one and swaps a single reference (serving/reload.py).

`load_state` follows ROOT/CURRENT, finds the checkpoint whose model_version equals the
snapshot's (manifest `checkpoint` key, then the ROOT/MODEL pointer, then the configured
fallback), builds the snapshot's serving artifacts if missing and opens them:

    ROOT/snapshots/NAME/indexes/KEY/   meta.json  store.json  users_*.{arrow,npy}
                                       embeddings.npy  n_support.npy  last_event_us.npy
                                       items.faiss  users.faiss  index_config.json

KEY hashes (model_version, snapshot, item catalog fingerprint, index config, fp16), so
a directory is complete once it exists: it is built in a temp dir and renamed in.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from meta_embed import storage
from meta_embed.checkpoint import Checkpoint, CheckpointError, load
from meta_embed.config import to_dict, write_config
from meta_embed.snapshot import MANIFEST, SnapshotError, current_dir
from serving.cache import digests, private_copy
from serving.index import META_JSON, VectorIndex, build_index, load_index, read_meta, save_index, write_meta
from serving.mirror import local_root, publish_indexes
from serving.scorer import Scorer, read_features
from serving.serving_config import ServingConfig
from serving.store import STORE_FORMAT, EmbeddingStore

MODEL_POINTER = "MODEL"


@dataclasses.dataclass(frozen=True)
class Sources:
    """The feature tables a server reads once: items (required) and users (optional)."""

    items: pa.Table
    users: pa.Table | None = None

    @classmethod
    def read(cls, cfg: ServingConfig) -> Sources:
        return cls(
            read_features(cfg.items, "items"), read_features(cfg.users, "users") if cfg.users else None
        )


@dataclasses.dataclass(frozen=True)
class ServingState:
    """Everything one request reads; swapped as a whole, never mutated."""

    scorer: Scorer
    store: EmbeddingStore
    items_index: VectorIndex
    users_index: VectorIndex
    directory: Path  # the published artifact directory (ROOT/snapshots/NAME/indexes/KEY)
    mapped: Path  # what the state reads: a private verified copy of it (see serving/cache.py), or itself
    max_age_s: float
    rerank_depth: int
    loaded_at: dt.datetime

    @property
    def model_version(self) -> str:
        return self.scorer.model_version

    @property
    def snapshot(self) -> str:
        return self.store.name


def checkpoint_candidates(
    root: Path, manifest: dict[str, Any], fallback: Path | str | None
) -> list[Path | str]:
    """Where the snapshot's checkpoint may be, in order: the manifest's `checkpoint` key, the
    refresh config recorded in the manifest (`config.checkpoint`), ROOT/MODEL, then `fallback`.

    A relative path is tried against ROOT, then as given; a URL as given. Every
    candidate is verified by model_version before use, so an extra candidate can never
    pick the wrong model.
    """
    run_config = manifest.get("config")
    named = [
        manifest.get("checkpoint"),
        run_config.get("checkpoint") if isinstance(run_config, dict) else None,
    ]
    if (root / MODEL_POINTER).is_file():
        named.append((root / MODEL_POINTER).read_text().strip())
    paths: list[Path | str] = []
    for name in (str(n) for n in named if n):
        if storage.is_remote(name):
            paths.append(name)
        else:
            p = Path(name)
            paths += [p] if p.is_absolute() else [root / p, p]
    paths += [fallback] if fallback is not None else []
    return list(dict.fromkeys(paths))  # in order, without repeats


def matching_checkpoint(root: Path, manifest: dict[str, Any], fallback: Path | str | None) -> Checkpoint:
    """Load the first candidate checkpoint whose model_version is the snapshot's."""
    want, tried = manifest["model_version"], []
    for path in checkpoint_candidates(root, manifest, fallback):
        hint = Path(path, "VERSION")
        if isinstance(path, Path) and hint.is_file() and hint.read_text().strip() != want:
            tried.append(f"{path} (model_version {hint.read_text().strip()})")
            continue
        try:
            ckpt = load(path)
        except CheckpointError as err:
            tried.append(f"{path} ({err})")
            continue
        if ckpt.model_version == want:
            return ckpt
        tried.append(f"{path} (model_version {ckpt.model_version})")
    raise SnapshotError(
        f"{root}: snapshot {manifest.get('name')} needs model_version {want}; no checkpoint found with it "
        f"(tried: {tried or 'none'}). Put its path in the manifest's 'checkpoint' key or in "
        f"{root / MODEL_POINTER}, "
        "or pass --checkpoint."
    )


def artifact_key(model_version: str, snapshot: str, items_fingerprint: str, cfg: ServingConfig) -> str:
    payload = {
        "model_version": model_version,
        "snapshot": snapshot,
        "items": items_fingerprint,
        "index": to_dict(cfg.index),
        "fp16": cfg.fp16,
        "store_format": STORE_FORMAT,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def user_vectors(embeddings: np.ndarray) -> np.ndarray:
    """L2-normalized embeddings (cosine similarity as inner product) for the lookalike index."""
    x = np.asarray(embeddings, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def build_artifacts(
    snapshot_dir: Path, scorer: Scorer, cfg: ServingConfig, items_from: Path | None = None
) -> Path:
    """Build the snapshot's store files and FAISS indexes unless present; returns their directory.

    `items_from`: an artifact directory built by this process for the same scorer and
    config, whose item index is reused (hard-linked) instead of rebuilt.
    """
    name = snapshot_dir.name
    final = (
        snapshot_dir / "indexes" / artifact_key(scorer.model_version, name, scorer.catalog.fingerprint, cfg)
    )
    if (final / META_JSON).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    try:
        _write_artifacts(tmp, snapshot_dir, scorer, cfg, items_from)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / META_JSON).is_file():  # not a concurrent builder that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_artifacts(
    tmp: Path, snapshot_dir: Path, scorer: Scorer, cfg: ServingConfig, items_from: Path | None
) -> None:
    store = EmbeddingStore.from_snapshot(snapshot_dir, scorer.model_version, scorer.catalog.ids, cfg.fp16)
    store.save(tmp)
    if items_from is not None and (items_from / "items.faiss").is_file():
        items_factory = json.loads((items_from / META_JSON).read_text())["items_factory"]
        try:
            os.link(items_from / "items.faiss", tmp / "items.faiss")
        except OSError:  # another filesystem: copy
            shutil.copyfile(items_from / "items.faiss", tmp / "items.faiss")
    else:
        items = build_index(scorer.catalog.retrieval, cfg.index, cfg.index.items_approx)
        save_index(items, tmp / "items.faiss")
        items_factory = items.factory
    users = build_index(user_vectors(store.embeddings), cfg.index, cfg.index.users_approx)
    save_index(users, tmp / "users.faiss")
    write_config(cfg.index, tmp, "index_config.json")
    write_meta(
        tmp,
        {
            "model_version": scorer.model_version,
            "snapshot": snapshot_dir.name,
            "items_fingerprint": scorer.catalog.fingerprint,
            "as_of": store.meta.as_of.isoformat(),
            "items_factory": items_factory,
            "users_factory": users.factory,
            "items": scorer.item_count,
            "users": users.ntotal,
            "fp16": cfg.fp16,
            "built_at": dt.datetime.now(dt.UTC).isoformat(),
            "files": digests(tmp, skip=(META_JSON,)),  # what a server verifies its private copy against
        },
    )


def open_state(
    directory: Path, scorer: Scorer, cfg: ServingConfig, cache: Path | None = None
) -> ServingState:
    """Open built artifacts, checking they belong to this scorer's model and catalog; with a
    `cache`, from a private copy verified against the digests in their meta.json (a server
    must never map files that can be truncated underneath it)."""
    snapshot = directory.parent.parent.name
    meta = read_meta(directory, scorer.model_version, snapshot, scorer.catalog.fingerprint)
    mapped = directory
    if cache is not None:
        if "files" not in meta:
            raise SnapshotError(f"{directory}: built before file digests were recorded; rebuild the indexes")
        mapped = private_copy(directory, meta["files"], cache, extra=(META_JSON,))
    store = EmbeddingStore.open(mapped, scorer.model_version)
    items = load_index(mapped / "items.faiss", meta["items_factory"], cfg.index)
    users = load_index(mapped / "users.faiss", meta["users_factory"], cfg.index)
    if items.ntotal != scorer.item_count or users.ntotal != len(store):
        raise SnapshotError(
            f"{directory}: index sizes ({items.ntotal} items, {users.ntotal} users) do not "
            f"match the catalog ({scorer.item_count}) and store ({len(store)}); rebuild them"
        )
    return ServingState(
        scorer,
        store,
        items,
        users,
        directory,
        mapped,
        cfg.max_age_s,
        cfg.rerank_depth,
        dt.datetime.now(dt.UTC),
    )


def load_state(
    cfg: ServingConfig, sources: Sources, previous: ServingState | None = None, cache: Path | None = None
) -> ServingState:
    """The state for the snapshot CURRENT names; reuses `previous`'s scorer if the model is the same.
    `cache`: where the server's private copies of the artifacts go (None: read them in place,
    for building them). An object-store root is served from a local mirror (serving/mirror.py), and
    indexes built there are uploaded beside the snapshot."""
    root = local_root(cfg.root)
    snapshot_dir = current_dir(root)
    manifest = json.loads((snapshot_dir / MANIFEST).read_text())
    if manifest.get("name") != snapshot_dir.name:
        raise SnapshotError(
            f"snapshots/{snapshot_dir.name}: its manifest names it {manifest.get('name')!r}; a snapshot "
            "folder must not be renamed or copied under another name. Point CURRENT at a snapshot as "
            "published"
        )
    same_model = previous is not None and previous.model_version == manifest["model_version"]
    if same_model:
        scorer = previous.scorer
    else:
        scorer = Scorer(matching_checkpoint(root, manifest, cfg.checkpoint), sources.items, sources.users)
    items_from = previous.directory if same_model else None  # same model and catalog: reuse the item index
    built = build_artifacts(snapshot_dir, scorer, cfg, items_from)
    publish_indexes(cfg.root, built)
    return open_state(built, scorer, cfg, cache)
