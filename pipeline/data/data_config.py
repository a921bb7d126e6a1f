"""The configs of the data jobs (`data fetch`, `data prepare`, `data synth`): light to
import, so the command line reads its defaults from them."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from pipeline.data.fetch import SOURCES


@dataclasses.dataclass(frozen=True)
class FetchConfig:
    dataset: str
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.dataset not in SOURCES:
            raise ValueError(f"FetchConfig.dataset must be one of {sorted(SOURCES)}, got {self.dataset!r}")


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """`source` is a dataset name of `pipeline.data.fetch.SOURCES` or a GroupLens folder."""

    source: str
    out: str
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("PrepareConfig.source must be a dataset name or a folder, got ''")
        if self.source not in SOURCES and not Path(self.source).is_dir():
            raise ValueError(
                f"PrepareConfig.source {self.source!r} is neither a known dataset {sorted(SOURCES)} "
                f"nor an existing folder (the unpacked GroupLens ml-100k or ml-1m archive)"
            )
        if not self.out:
            raise ValueError("PrepareConfig.out must name an output folder")


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Size, seed and planted-signal knobs of the synthetic world."""

    n_users: int = 1000
    n_items: int = 500
    events_per_user: float = 50.0  # mean; per-user counts are Pareto(activity_alpha)
    seed: int = 0
    latent_dim: int = 16
    signal: float = 2.0  # logit scale of taste . item
    drift: float = 0.5  # norm of a user's taste change over the whole period (taste norm ~ 1)
    activity_alpha: float = 1.5
    popularity_exponent: float = 0.8  # Zipf exponent of item popularity
    start: str = "2020-01-01T00:00:00+00:00"
    end: str = "2021-01-01T00:00:00+00:00"
    n_shards: int = 4
    write_truth: bool = False

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items", "events_per_user", "latent_dim", "activity_alpha", "n_shards"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SynthConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("signal", "drift", "popularity_exponent"):
            if getattr(self, name) < 0:
                raise ValueError(f"SynthConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.activity_alpha <= 1:
            raise ValueError(
                f"SynthConfig.activity_alpha must be > 1 (finite mean), got {self.activity_alpha}"
            )
        if self.period_us[1] <= self.period_us[0]:
            raise ValueError(f"SynthConfig.end {self.end} must be after start {self.start}")

    @property
    def period_us(self) -> tuple[int, int]:
        def us(text: str) -> int:
            t = dt.datetime.fromisoformat(text)
            t = t if t.tzinfo else t.replace(tzinfo=dt.UTC)
            return int(round(t.timestamp() * 1e6))

        return us(self.start), us(self.end)
