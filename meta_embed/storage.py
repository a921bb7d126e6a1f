"""Where the system's files live: a local path or an object-store URL (`s3://bucket/key`,
`gs://bucket/key`).

The few operations publishing and serving need, one meaning on every backend:

- `read_bytes` / `write_bytes`: a whole object. A local write goes to a temp file that
  is fsynced and renamed in; an object-store PUT is atomic by itself.
- `swap`: compare-and-swap of a small object (CURRENT). It writes only if the object
  still holds what the caller last read, else raises `Conflict`: on S3 a conditional
  PUT (`If-Match` on the ETag read, `If-None-Match: *` when it was absent); on GCS an
  upload with `ifGenerationMatch` (the generation read, 0 when it was absent); on a
  local disk under an exclusive `flock` of a lock file beside it.
- `listdir`, `exists`, `delete_tree`, and `download` / `upload` of a whole prefix.
- `staged_output` (a command writes a local folder that is uploaded when it is done) and
  `local_copy` (a remote folder such as a checkpoint, copied once into a local cache).

s3:// goes through boto3 (installed with `apache-beam[aws]`), configured the standard way
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION) or by `configure`,
which the refresh calls with Beam's `--s3_*` options so that launcher and workers reach
the same store. gs:// goes through google-cloud-storage with the application default
credentials (or STORAGE_EMULATOR_HOST for an emulator). The pipeline's inputs may use
any scheme Beam's FileSystems knows.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meta_embed.stores import GCSStore, S3Store, Store

_S3_SETTINGS: dict[str, Any] = {}  # overrides of the environment's S3 settings (see `configure`)


class Conflict(RuntimeError):
    """A conditional write lost: another writer changed the object since it was read."""


def is_remote(path: str | Path) -> bool:
    return "://" in str(path)


def join(base: str | Path, *parts: str) -> str:
    """`base`/`parts...` for local paths and URLs alike (URLs keep their `//`)."""
    if not is_remote(base):
        return str(Path(base, *parts))
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


def basename(path: str | Path) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def configure(
    endpoint_url: str | None = None,
    aws_access_key_id: str | None = None,
    aws_secret_access_key: str | None = None,
    region_name: str | None = None,
) -> None:
    """Settings for s3:// that override the environment's (None: keep the environment's)."""
    given = {
        "endpoint_url": endpoint_url,
        "aws_access_key_id": aws_access_key_id,
        "aws_secret_access_key": aws_secret_access_key,
        "region_name": region_name,
    }
    _S3_SETTINGS.update({k: v for k, v in given.items() if v})
    _STORES.pop("s3", None)


def overrides() -> tuple[tuple[str, str], ...]:
    """The settings given to `configure`, to hand to another process (`configure(**dict(...))`)."""
    return tuple(sorted(_S3_SETTINGS.items()))


_STORES: dict[str, Store] = {}  # one client per scheme, made on first use


def _locate(url: str | Path) -> tuple[Store, str, str]:
    """The backend of `url`'s scheme, its bucket and its key (no trailing slash)."""
    scheme, _, rest = str(url).partition("://")
    if scheme not in ("s3", "gs"):
        raise ValueError(
            f"{url}: only local paths, s3:// and gs:// URLs are supported for snapshots, checkpoints "
            "and indexes (Beam reads the refresh's inputs from any scheme it knows)"
        )
    if scheme not in _STORES:
        _STORES[scheme] = S3Store(_S3_SETTINGS) if scheme == "s3" else GCSStore()
    bucket, _, key = rest.partition("/")
    return _STORES[scheme], bucket, key.rstrip("/")


def read_bytes(path: str | Path) -> bytes:
    """The whole file or object; FileNotFoundError when there is none."""
    if not is_remote(path):
        return Path(path).read_bytes()
    store, bucket, key = _locate(path)
    return store.get(bucket, key)[0]


def read_text(path: str | Path) -> str:
    return read_bytes(path).decode()


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write a whole file or object atomically (readers see the old content or the new)."""
    if is_remote(path):
        store, bucket, key = _locate(path)
        store.put(bucket, key, data)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def swap(path: str | Path, new: bytes, expected: bytes | None) -> None:
    """Write `new` only if the object still holds `expected` (None: it must not exist yet);
    otherwise raise `Conflict` naming what it holds now."""
    if not is_remote(path):
        with _locked(Path(path)):
            now = Path(path).read_bytes() if Path(path).is_file() else None
            if now != expected:
                raise Conflict(_conflict(path, expected, now))
            write_bytes(path, new)
        return
    store, bucket, key = _locate(path)
    try:
        now, version = store.get(bucket, key)
    except FileNotFoundError:
        now, version = None, None
    if now != expected:
        raise Conflict(_conflict(path, expected, now))
    if not store.put_if(bucket, key, new, version):
        raise Conflict(f"{path}: changed by another writer while this one was writing it")


def _conflict(path: str | Path, expected: bytes | None, now: bytes | None) -> str:
    def show(b: bytes | None) -> str:
        return "absent" if b is None else repr(b.decode(errors="replace").strip())

    return f"{path}: expected {show(expected)}, found {show(now)}; another writer changed it"


def exists(path: str | Path) -> bool:
    if not is_remote(path):
        return Path(path).exists()
    store, bucket, key = _locate(path)
    return store.is_object(bucket, key) or bool(listdir(path))  # or a "directory": objects under it


def _keys(url: str) -> Iterator[tuple[str, int]]:
    """(key relative to `url`, size) of every object under the prefix `url`/."""
    store, bucket, key = _locate(url)
    prefix = f"{key}/" if key else ""
    for name, size in store.keys(bucket, prefix):
        yield name[len(prefix) :], size


def listdir(path: str | Path) -> list[str]:
    """Names directly under a directory or prefix (files and sub-directories), sorted; [] if none."""
    if not is_remote(path):
        return sorted(p.name for p in Path(path).iterdir()) if Path(path).is_dir() else []
    store, bucket, key = _locate(path)
    return sorted(store.children(bucket, f"{key}/" if key else "") - {""})


def delete_tree(path: str | Path) -> None:
    """Remove a file, or a directory or prefix and everything under it (nothing there: no error)."""
    if not is_remote(path):
        if Path(path).is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            Path(path).unlink(missing_ok=True)
        return
    store, bucket, key = _locate(path)
    store.delete(bucket, key, [rel for rel, _ in _keys(str(path))])


def download(url: str, local: Path) -> list[Path]:
    """Copy every object under the prefix `url` into the directory `local`; returns the files."""
    store, bucket, key = _locate(url)
    out = []
    for rel, _size in _keys(url):
        dest = local / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        store.download(bucket, f"{key}/{rel}", dest)
        out.append(dest)
    return out


def upload(local: Path, url: str, last: tuple[str, ...] = ()) -> None:
    """Copy the directory `local` to the prefix `url`; the files named in `last` (relative
    paths) go after all others, so a reader that waits for them sees a complete copy."""
    store, bucket, key = _locate(url)
    rel = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    for name in [r for r in rel if r not in last] + [r for r in last if r in rel]:
        store.upload(local / name, bucket, f"{key}/{name}" if key else name)


@contextlib.contextmanager
def staged_output(path: str | Path, last: tuple[str, ...] = ()) -> Iterator[Path]:
    """A local directory to write a command's output into: `path` itself when local; for a
    URL a temp directory uploaded there (the `last` files after the others) when the block
    ends without an error, then removed."""
    if not is_remote(path):
        yield Path(path)
        return
    tmp = Path(tempfile.mkdtemp(prefix="meta-embed-out-"))
    try:
        yield tmp
        upload(tmp, str(path), last)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cache_dir() -> Path:
    """Where remote inputs are copied: $META_EMBED_CACHE, else a folder in the temp directory."""
    return Path(os.environ.get("META_EMBED_CACHE") or Path(tempfile.gettempdir(), "meta-embed-cache"))


def local_copy(path: str | Path, stamp: str) -> Path:
    """A local directory holding what `path` holds: `path` itself when local; for a URL a
    copy in `cache_dir()`, downloaded once per content of its `stamp` file (a VERSION)
    and reused while that file is unchanged."""
    if not is_remote(path):
        return Path(path)
    version = hashlib.sha256(read_bytes(join(path, stamp))).hexdigest()[:16]
    where = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    dest = cache_dir() / f"{where}-{version}"
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".copy-", dir=dest.parent))
    try:
        download(str(path), tmp)
        os.replace(tmp, dest)
    except OSError:
        if not dest.is_dir():  # not a concurrent copier that finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
