"""Serving configuration: one frozen dataclass per concern, validated on construction.

`IndexConfig` decides how the FAISS indexes are built and searched; `ServingConfig`
says where the snapshots, checkpoint and feature tables are and how the server behaves.
Both serialize with `meta_embed.config.to_dict` next to the indexes they produced.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

ApproxKind = Literal["ivf", "hnsw"]

MAX_ITEMS_PER_REQUEST = 1000
MAX_K = 1000
MAX_ID_LENGTH = 256


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    """FAISS index choice by size: exact `Flat` below `exact_below` vectors, else IVF or HNSW.

    Each index may be IVF or HNSW. IVF is the default for both: it builds fast (the user
    index is rebuilt with every snapshot) and its recall rises to exact as `nprobe` grows,
    whereas an HNSW graph under the inner product can leave items unreachable when the
    vectors are nearly collinear (seen with untrained models; see docs/api.md). HNSW gives
    more recall per query-millisecond on well-spread vectors and suits a large item
    catalog, whose index is built once per model release and reused across snapshots.
    `nlist` 0 means about sqrt(n) lists (rounded to a power of two). The search budgets
    (`nprobe`, `ef_search`) are the serving defaults (figures in docs/api.md).
    """

    exact_below: int = 50_000
    items_approx: ApproxKind = "ivf"
    users_approx: ApproxKind = "ivf"
    nlist: int = 0
    nprobe: int = 64
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 256
    train_size: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("items_approx", "users_approx"):
            if getattr(self, name) not in ("ivf", "hnsw"):
                raise ValueError(f"IndexConfig.{name} must be 'ivf' or 'hnsw', got {getattr(self, name)!r}")
        for name in ("exact_below", "nprobe", "hnsw_m", "ef_construction", "ef_search", "train_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"IndexConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.nlist < 0:
            raise ValueError(f"IndexConfig.nlist must be >= 0 (0 = automatic), got {self.nlist}")


@dataclasses.dataclass(frozen=True)
class ServingConfig:
    """Where the serving inputs are and how the server behaves.

    The checkpoint that matches a snapshot is found in this order: the snapshot
    manifest's `checkpoint` key, the `ROOT/MODEL` pointer file, then `checkpoint` here;
    the first whose model_version equals the snapshot's is used (see docs/api.md).
    """

    root: Path | str  # a local directory, or a URL served from a local mirror (serving/mirror.py)
    items: Path | str  # a Parquet file or directory, or the URL of one file
    checkpoint: Path | str | None = None  # a path, or an s3:// or gs:// URL
    users: Path | str | None = None
    max_age_s: float = 2 * 24 * 3600.0
    fp16: bool = False
    threads: int = 1
    reload_interval_s: float = 10.0
    rerank_depth: int = 200
    max_body_bytes: int = 1 << 20
    index: IndexConfig = dataclasses.field(default_factory=IndexConfig)
    cache_dir: Path | None = None  # where the server's private artifact copies go (None: a temporary one)
    keep_alive_s: float = 5.0  # an idle kept-alive connection is closed after this
    header_timeout_s: float = 10.0  # a request's headers must arrive within this, else the connection closes
    max_header_bytes: int = 64 * 1024  # larger request headers are answered 431
    max_connections: int = 1024  # per server process; requests beyond them are answered 503
    access_log: bool = False  # one log line per request (uvicorn's access log)

    def __post_init__(self) -> None:
        for name in ("root", "items", "checkpoint", "users", "cache_dir"):
            value = getattr(self, name)
            if (
                value is not None
                and not isinstance(value, Path)
                and "://" not in str(value)  # a URL stays a URL
            ):
                object.__setattr__(self, name, Path(value))
        if isinstance(self.index, dict):
            object.__setattr__(self, "index", IndexConfig(**self.index))
        if self.max_age_s <= 0:
            raise ValueError(f"ServingConfig.max_age_s must be > 0 seconds, got {self.max_age_s}")
        if self.threads <= 0:
            raise ValueError(f"ServingConfig.threads must be > 0, got {self.threads}")
        if self.reload_interval_s < 0:
            raise ValueError(
                f"ServingConfig.reload_interval_s must be >= 0 (0 = off), got {self.reload_interval_s}"
            )
        if not 1 <= self.rerank_depth <= 100_000:
            raise ValueError(f"ServingConfig.rerank_depth must be in 1..100000, got {self.rerank_depth}")
        for name in ("keep_alive_s", "header_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ServingConfig.{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.max_header_bytes < 1024 or self.max_connections < 1:
            raise ValueError(
                f"ServingConfig: need max_header_bytes >= 1024 and max_connections >= 1, got "
                f"{self.max_header_bytes}, {self.max_connections}"
            )
        if self.max_body_bytes < 1024:
            raise ValueError(f"ServingConfig.max_body_bytes must be >= 1024, got {self.max_body_bytes}")
