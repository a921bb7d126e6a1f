"""Serving from an object store: a local mirror of the snapshot CURRENT names.

`local_root(root)` gives the directory serving reads. For a local root that is the root.
For an object-store root (s3://, gs://) it is a mirror in the local cache
(`storage.cache_dir()/roots/HASH`): the snapshot CURRENT names is copied there (manifest
first, then each data file, checked against the manifest's bytes and sha256: a missing
or altered file is refused and the snapshot never served), with its built indexes
(checked against their meta.json when a server opens them, serving/cache.py); then the
mirror's own CURRENT is written. Older mirrored snapshots are removed, but the one
before, which a running server may still be swapping away from. `publish_indexes`
uploads indexes built in a mirror, meta.json last, so the next server copies them
instead of building them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

from meta_embed import snapshot, storage
from serving.index import META_JSON

log = logging.getLogger("serving.mirror")


def local_root(root: Path | str) -> Path:
    """The local directory that serves `root` (see the module docstring); syncs a mirror."""
    if not storage.is_remote(root):
        return Path(root)
    mirror = storage.cache_dir() / "roots" / hashlib.sha256(str(root).encode()).hexdigest()[:16]
    name = snapshot.require_current(root)
    if snapshot.current_name(mirror) != name:
        _copy_snapshot(str(root), name, mirror)
        storage.write_text(mirror / snapshot.CURRENT, name + "\n")
        log.info("mirrored snapshot %s of %s into %s", name, root, mirror)
    _prune(mirror, name)
    return mirror


def _copy_snapshot(root: str, name: str, mirror: Path) -> None:
    remote = storage.join(root, "snapshots", name)
    dest = mirror / "snapshots" / name
    if (dest / snapshot.MANIFEST).is_file():  # copied and checked before (by this or another worker)
        return
    manifest = snapshot.read_manifest(remote)  # only a prefix with its manifest is ever read
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".copy-", dir=dest.parent))
    try:
        for f in manifest["files"]:
            (tmp / f["name"]).write_bytes(_read_part(remote, f))
        for key in storage.listdir(storage.join(remote, "indexes")):
            built = storage.join(remote, "indexes", key)
            if storage.exists(storage.join(built, META_JSON)):
                storage.download(built, tmp / "indexes" / key)
        (tmp / snapshot.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(dest, ignore_errors=True)  # an incomplete leftover
        try:
            tmp.rename(dest)
        except OSError:
            if not (dest / snapshot.MANIFEST).is_file():  # not a concurrent copy that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_part(remote: str, f: dict) -> bytes:
    """A data file of a remote snapshot, refused unless it matches its manifest entry."""
    try:
        data = storage.read_bytes(storage.join(remote, f["name"]))
    except FileNotFoundError:
        raise snapshot.SnapshotError(
            f"{remote}/{f['name']}: listed in the manifest but missing; this snapshot is not served"
        ) from None
    if len(data) != f.get("bytes", len(data)) or hashlib.sha256(data).hexdigest() != f.get("sha256"):
        raise snapshot.SnapshotError(
            f"{remote}/{f['name']}: does not match the manifest's bytes and sha256 (altered or "
            "truncated); this snapshot is not served. Publish a new one, or `meta-embed rollback`"
        )
    return data


def _prune(mirror: Path, live: str) -> None:
    """Keep the mirrored snapshot CURRENT names and the newest other one."""
    names = [n for n in snapshot.published(mirror) if n != live]
    for name in names[:-1]:
        shutil.rmtree(mirror / "snapshots" / name, ignore_errors=True)


def publish_indexes(root: Path | str, built: Path) -> None:
    """Upload indexes built in a mirror (ROOT/snapshots/NAME/indexes/KEY) to the remote root."""
    if not storage.is_remote(root):
        return
    name, key = built.parent.parent.name, built.name
    target = storage.join(str(root), "snapshots", name, "indexes", key)
    if not storage.exists(storage.join(target, META_JSON)):
        storage.upload(built, target, last=(META_JSON,))
