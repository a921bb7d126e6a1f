"""A server's private, verified copy of a snapshot's serving artifacts.

The store arrays are memory-mapped, and a memory map of a file that shrinks underneath
kills the process (SIGBUS) the next time it reads past the new end. So a server never maps
the published files: `private_copy` copies an artifact directory into a cache directory
of its own, checking every file's size and sha256 against the digests the builder recorded
in meta.json, and the server maps the copy. A file truncated or rewritten under the
snapshot root then changes nothing for a running server, and is refused (the server keeps
its old state) at the next load. The workers of one deployment share one cache directory;
an entry is written under a temporary name and renamed in once complete, and removed when
the server has swapped to a newer one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from meta_embed.snapshot import SnapshotError

CHUNK = 1 << 20


def digests(directory: Path, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """{file name: {"bytes", "sha256"}} of every file directly in `directory` but `skip`."""
    out = {}
    for path in sorted(p for p in directory.iterdir() if p.is_file() and p.name not in skip):
        h = hashlib.sha256()
        with path.open("rb") as fh:
            while block := fh.read(CHUNK):
                h.update(block)
        out[path.name] = {"bytes": path.stat().st_size, "sha256": h.hexdigest()}
    return out


def _copy_checked(src: Path, dst: Path, want: dict[str, Any]) -> None:
    size = src.stat().st_size if src.is_file() else None
    if size != want["bytes"]:
        raise SnapshotError(f"{src.name}: {size if size is not None else 'no'} bytes on disk, but the "
                            f"artifacts' meta.json records {want['bytes']}; the file was truncated or "
                            "replaced: rebuild the indexes (`meta-embed index build`)")  # fmt: skip
    h = hashlib.sha256()
    with src.open("rb") as fin, dst.open("wb") as fout:
        while block := fin.read(CHUNK):
            h.update(block)
            fout.write(block)
    if h.hexdigest() != want["sha256"] or dst.stat().st_size != want["bytes"]:
        raise SnapshotError(f"{src.name}: its content does not match the sha256 in the artifacts' "
                            "meta.json; the file was altered: rebuild the indexes "
                            "(`meta-embed index build`)")  # fmt: skip


def private_copy(
    directory: Path, files: dict[str, dict[str, Any]], cache: Path, extra: tuple[str, ...]
) -> Path:
    """A verified copy of `directory`'s `files` (and of the `extra` files, unchecked: the
    metadata that records the digests) under `cache`, named like `directory`; an existing
    complete copy is reused after its sizes are checked."""
    dest = cache / directory.name
    if dest.is_dir() and all(
        (dest / n).is_file() and (dest / n).stat().st_size == f["bytes"] for n, f in files.items()
    ):
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    os.chmod(cache, 0o700)
    tmp = Path(tempfile.mkdtemp(prefix=".copy-", dir=cache))
    try:
        for name, want in files.items():
            _copy_checked(directory / name, tmp / name, want)
        for name in extra:
            shutil.copyfile(directory / name, tmp / name)
        shutil.rmtree(dest, ignore_errors=True)  # an incomplete or stale entry
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def remove_entry(path: Path, cache: Path) -> None:
    """Delete a cache entry the server no longer serves (open maps of it stay valid: the
    files go when the last map of them is closed)."""
    if path.parent == cache:
        shutil.rmtree(path, ignore_errors=True)
