"""The configs of the training jobs (`train`, `evidence`): light to import, so the command
line reads its defaults from them."""

from __future__ import annotations

import dataclasses

from meta_embed.config import MamlConfig, ModelConfig, TrainConfig
from meta_embed.flags import parse_time


@dataclasses.dataclass(frozen=True)
class TrainJobConfig:
    """`data` holds interactions, users and items (`NAME.parquet` or a folder `NAME/` of
    shards); only events with ts < `until` (ISO-8601, optional) are used; `out` is the
    checkpoint directory."""

    data: str
    out: str
    until: str | None = None
    model: ModelConfig = ModelConfig()
    maml: MamlConfig = MamlConfig()
    train: TrainConfig = TrainConfig()

    def __post_init__(self) -> None:
        if not self.data or not self.out:
            raise ValueError("TrainJobConfig: data and out must name a folder (prepared data, checkpoint)")
        if self.until is not None:
            try:
                parse_time(self.until)
            except ValueError as err:
                raise ValueError(f"TrainJobConfig.until: {err}") from err


@dataclasses.dataclass(frozen=True)
class EvidenceJobConfig:
    """The evidence candidates of `checkpoint` on the prepared `data` (events before
    `until`): the top `k`, written to `out` if given; with `compare`, held-out users are
    adapted on k events chosen by each strategy and scored on their last `query` events."""

    checkpoint: str
    data: str
    k: int = 20
    until: str | None = None
    out: str | None = None
    compare: bool = False
    query: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k <= 0 or self.query <= 0:
            raise ValueError(
                f"EvidenceJobConfig: k and query must be > 0, got k={self.k}, query={self.query}"
            )
