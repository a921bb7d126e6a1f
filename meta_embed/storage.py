"""Where the system's files live: a local path or an object-store URL (`s3://bucket/key`).

The few operations publishing and serving need, one meaning on both backends:

- `read_bytes` / `write_bytes`: a whole object. A local write goes to a temp file that
  is fsynced and renamed in; an object-store PUT is atomic by itself.
- `swap`: compare-and-swap of a small object (CURRENT). It writes only if the object
  still holds what the caller last read, else raises `Conflict`: on S3 a conditional
  PUT (`If-Match` on the ETag read, `If-None-Match: *` when it was absent); on a local
  disk under an exclusive `flock` of a lock file beside it.
- `listdir`, `exists`, `delete_tree`, and `download` / `upload` of a whole prefix.
- `staged_output` (a command writes a local folder that is uploaded when it is done) and
  `local_copy` (a remote folder such as a checkpoint, copied once into a local cache).

s3:// goes through boto3 (installed with `apache-beam[aws]`), configured the standard way
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION) or by `configure`,
which the refresh calls with Beam's `--s3_*` options so that launcher and workers reach
the same store. Other schemes (gs://) are refused with the reason; the pipeline's inputs
may still use any scheme Beam's FileSystems knows.
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

_S3: dict[str, Any] = {}  # overrides of the environment's S3 settings (see `configure`)
_client: Any = None


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
    global _client
    given = {
        "endpoint_url": endpoint_url,
        "aws_access_key_id": aws_access_key_id,
        "aws_secret_access_key": aws_secret_access_key,
        "region_name": region_name,
    }
    _S3.update({k: v for k, v in given.items() if v})
    _client = None


def overrides() -> tuple[tuple[str, str], ...]:
    """The settings given to `configure`, to hand to another process (`configure(**dict(...))`)."""
    return tuple(sorted(_S3.items()))


def _s3() -> Any:
    global _client
    if _client is None:
        import boto3

        _client = boto3.session.Session().client("s3", **_S3)
    return _client


def _split(url: str) -> tuple[str, str]:
    scheme, _, rest = str(url).partition("://")
    if scheme != "s3":
        raise ValueError(
            f"{url}: only local paths and s3:// URLs are supported for snapshots, checkpoints and "
            "indexes (Beam reads the refresh's inputs from any scheme it knows)"
        )
    bucket, _, key = rest.partition("/")
    return bucket, key.rstrip("/")


def _missing(err: Exception) -> bool:
    code = getattr(err, "response", {}).get("Error", {}).get("Code", "")
    return code in ("NoSuchKey", "404", "NotFound")


def read_bytes(path: str | Path) -> bytes:
    """The whole file or object; FileNotFoundError when there is none."""
    if not is_remote(path):
        return Path(path).read_bytes()
    return _read_remote(str(path))[0]


def _read_remote(url: str) -> tuple[bytes, str]:
    from botocore.exceptions import ClientError

    bucket, key = _split(url)
    try:
        got = _s3().get_object(Bucket=bucket, Key=key)
    except ClientError as err:
        if _missing(err):
            raise FileNotFoundError(url) from err
        raise
    return got["Body"].read(), got["ETag"]


def read_text(path: str | Path) -> str:
    return read_bytes(path).decode()


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write a whole file or object atomically (readers see the old content or the new)."""
    if is_remote(path):
        bucket, key = _split(str(path))
        _s3().put_object(Bucket=bucket, Key=key, Body=data)
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
    from botocore.exceptions import ClientError

    try:
        now, etag = _read_remote(str(path))
    except FileNotFoundError:
        now, etag = None, None
    if now != expected:
        raise Conflict(_conflict(path, expected, now))
    bucket, key = _split(str(path))
    condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
    try:
        _s3().put_object(Bucket=bucket, Key=key, Body=new, **condition)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
            raise Conflict(f"{path}: changed by another writer while this one was writing it") from err
        raise


def _conflict(path: str | Path, expected: bytes | None, now: bytes | None) -> str:
    def show(b: bytes | None) -> str:
        return "absent" if b is None else repr(b.decode(errors="replace").strip())

    return f"{path}: expected {show(expected)}, found {show(now)}; another writer changed it"


def exists(path: str | Path) -> bool:
    if not is_remote(path):
        return Path(path).exists()
    from botocore.exceptions import ClientError

    bucket, key = _split(str(path))
    try:
        _s3().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as err:
        if _missing(err):
            return bool(listdir(path))  # a "directory": a prefix with objects under it
        raise


def _keys(url: str) -> Iterator[tuple[str, int]]:
    """(key relative to `url`, size) of every object under the prefix `url`/."""
    bucket, key = _split(url)
    prefix = f"{key}/" if key else ""
    for page in _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield obj["Key"][len(prefix) :], obj["Size"]


def listdir(path: str | Path) -> list[str]:
    """Names directly under a directory or prefix (files and sub-directories), sorted; [] if none."""
    if not is_remote(path):
        return sorted(p.name for p in Path(path).iterdir()) if Path(path).is_dir() else []
    bucket, key = _split(str(path))
    prefix = f"{key}/" if key else ""
    names: set[str] = set()
    pages = _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
    for page in pages:
        names.update(o["Key"][len(prefix) :] for o in page.get("Contents", []))
        names.update(p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", []))
    return sorted(names - {""})


def delete_tree(path: str | Path) -> None:
    """Remove a file, or a directory or prefix and everything under it (nothing there: no error)."""
    if not is_remote(path):
        if Path(path).is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            Path(path).unlink(missing_ok=True)
        return
    bucket, key = _split(str(path))
    files = [rel for rel, _ in _keys(str(path))]
    keys = [key] + [f"{key}/{rel}" for rel in files]
    for start in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[start : start + 1000]]
        _s3().delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
    # a store with folders (SeaweedFS) keeps the empty ones: remove them too, deepest first
    folders = {rel.rsplit("/", k)[0] for rel in files for k in range(1, rel.count("/") + 1)}
    for folder in sorted(folders, key=lambda f: -f.count("/")) + [""]:
        _s3().delete_object(Bucket=bucket, Key=f"{key}/{folder}/" if folder else f"{key}/")


def download(url: str, local: Path) -> list[Path]:
    """Copy every object under the prefix `url` into the directory `local`; returns the files."""
    bucket, _ = _split(url)
    out = []
    for rel, _size in _keys(url):
        dest = local / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        _s3().download_file(bucket, f"{_split(url)[1]}/{rel}", str(dest))
        out.append(dest)
    return out


def upload(local: Path, url: str, last: tuple[str, ...] = ()) -> None:
    """Copy the directory `local` to the prefix `url`; the files named in `last` (relative
    paths) go after all others, so a reader that waits for them sees a complete copy."""
    rel = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    for name in [r for r in rel if r not in last] + [r for r in last if r in rel]:
        bucket, key = _split(join(url, name))
        _s3().upload_file(str(local / name), bucket, key)


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
