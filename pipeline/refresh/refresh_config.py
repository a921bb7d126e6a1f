"""`RefreshConfig`: one run of the refresh job, and the flags that set it.

Light to import (no Beam, no torch): the command line reads its flags, help and defaults
from the fields here (`meta_embed.flags.flag_specs`), and so does the job's own `run(argv)`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from meta_embed.config import DEVICES, check_device
from meta_embed.flags import flag

SHUFFLES = ("auto", "beam", "files")


@dataclasses.dataclass(frozen=True)
class RefreshConfig:
    """One refresh run. `max_support` None takes the checkpoint's MamlConfig.max_support;
    `buckets` None sizes the user buckets from the input (about 4,000 users each)."""

    interactions: str = dataclasses.field(metadata=flag("interactions Parquet: file, directory or glob"))
    users: str = dataclasses.field(metadata=flag("users Parquet (features rows)"))
    items: str = dataclasses.field(metadata=flag("items Parquet (item features for the item tower)"))
    checkpoint: str = dataclasses.field(metadata=flag("checkpoint directory written by `meta-embed train`"))
    as_of: dt.datetime = dataclasses.field(metadata=flag("use events with ts < this time (ISO-8601)"))
    out: str = dataclasses.field(metadata=flag("snapshot root (CURRENT, snapshots/, staging/)"))
    max_support: int | None = dataclasses.field(
        default=None, metadata=flag("most recent events per user (default: the checkpoint's)")
    )
    incremental: bool = dataclasses.field(
        default=False, metadata=flag("re-adapt only users with new events since CURRENT")
    )
    keep: int = dataclasses.field(default=3, metadata=flag("snapshots to keep"))
    batch_size: int = dataclasses.field(default=64, metadata=flag("users per inner-loop batch"))
    buckets: int | None = dataclasses.field(
        default=None, metadata=flag("user buckets (default: about 4,000 users each)")
    )
    cold_users: bool = dataclasses.field(
        default=True, metadata=flag("write zero-step embeddings for users without events")
    )
    seen_items: int = dataclasses.field(
        default=50, metadata=flag("recent items kept per user, left out of recommendations (0 = none)")
    )
    expect_spec_hash: str | None = dataclasses.field(
        default=None, metadata=flag("refuse a checkpoint whose feature spec has another hash")
    )
    torch_threads: int = dataclasses.field(default=1, metadata=flag("torch threads per Beam worker process"))
    device: str = dataclasses.field(
        default="cpu",
        metadata=flag("where the adapt step runs: auto = CUDA when the worker has it", choices=DEVICES),
    )
    read_batch_rows: int = dataclasses.field(
        default=1 << 18, metadata=flag("rows per Arrow batch when reading")
    )
    allow_empty: bool = dataclasses.field(
        default=False, metadata=flag("publish even when no event precedes --as-of (every user at zero steps)")
    )
    shuffle: str = dataclasses.field(
        default="auto",
        metadata=flag(
            "event exchange: Beam's shuffle, spill files in staging/, or auto (files on local runners)",
            choices=SHUFFLES,
        ),
    )

    def __post_init__(self) -> None:
        check_device("RefreshConfig", self.device)
        for name in ("interactions", "users", "items", "checkpoint", "out"):
            if not getattr(self, name):
                raise ValueError(f"RefreshConfig.{name} must be a path, got {getattr(self, name)!r}")
        if not isinstance(self.as_of, dt.datetime) or self.as_of.tzinfo is None:
            raise ValueError(
                f"RefreshConfig.as_of must be a timezone-aware datetime (UTC), got {self.as_of!r}"
            )
        for name in ("keep", "batch_size", "torch_threads", "read_batch_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"RefreshConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.seen_items < 0:
            raise ValueError(f"RefreshConfig.seen_items must be >= 0, got {self.seen_items}")
        if self.shuffle not in SHUFFLES:
            raise ValueError(f"RefreshConfig.shuffle must be one of {SHUFFLES}, got {self.shuffle!r}")
        for name in ("max_support", "buckets"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"RefreshConfig.{name} must be >= 1 or None, got {getattr(self, name)}")
