"""Frozen, validated configuration dataclasses shared by several stages, and the
helpers that serialize a config next to the artifact it produced."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

EmbeddingMode = Literal["activation", "weights"]
Objective = Literal["binary", "regression"]

T = TypeVar("T")


def _positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{owner}.{name} must be > 0, got {value}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape of the two-block model.

    `meta_dim` is the meta embedding size in `activation` mode. In `weights` mode the
    embedding is the personal layer, (personal_rank x item_dim) weights plus a
    personal_rank bias, flattened: see `embedding_dim`.

    `history_inputs` adds a summary of the user's support events to the meta block's
    inputs (`TwoBlockModel.with_history`): the mean item vector, the mean item vector
    weighted by the user-centered target, and log(1 + events). Cold users get zeros.
    """

    embedding_mode: EmbeddingMode = "activation"
    objective: Objective = "binary"
    meta_dim: int = 32
    meta_hidden: int = 64
    item_dim: int = 32
    global_hidden: tuple[int, ...] = (64, 32)
    personal_rank: int = 8
    retrieval_dim: int = 32
    history_inputs: bool = True

    def __post_init__(self) -> None:
        if self.embedding_mode not in ("activation", "weights"):
            raise ValueError(f"ModelConfig.embedding_mode must be 'activation' or 'weights', got {self.embedding_mode!r}")
        if self.objective not in ("binary", "regression"):
            raise ValueError(f"ModelConfig.objective must be 'binary' or 'regression', got {self.objective!r}")
        _positive("ModelConfig", meta_dim=self.meta_dim, meta_hidden=self.meta_hidden, item_dim=self.item_dim,
                  personal_rank=self.personal_rank, retrieval_dim=self.retrieval_dim)
        if not self.global_hidden or any(h <= 0 for h in self.global_hidden):
            raise ValueError(f"ModelConfig.global_hidden must be non-empty positive sizes, got {self.global_hidden}")
        object.__setattr__(self, "global_hidden", tuple(self.global_hidden))

    @property
    def embedding_dim(self) -> int:
        """Length of the stored meta embedding for this mode."""
        if self.embedding_mode == "activation":
            return self.meta_dim
        return self.personal_rank * self.item_dim + self.personal_rank


@dataclasses.dataclass(frozen=True)
class MamlConfig:
    """The inner loop: K steps of size `inner_lr` on at most `max_support` recent events.

    `learn_inner_lr` turns on Meta-SGD (a learned step size per parameter element);
    `first_order` drops the second-order terms of the meta-gradient.
    """

    inner_steps: int = 3
    inner_lr: float = 0.5
    learn_inner_lr: bool = False
    first_order: bool = False
    max_support: int = 100

    def __post_init__(self) -> None:
        if self.inner_steps < 0:
            raise ValueError(f"MamlConfig.inner_steps must be >= 0, got {self.inner_steps}")
        _positive("MamlConfig", inner_lr=self.inner_lr, max_support=self.max_support)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build `cls` from a dict, naming unknown keys instead of ignoring them."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; known keys are {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        if isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def write_config(cfg: Any, directory: str | Path, name: str = "config.json") -> Path:
    """Write `cfg` as JSON into `directory` (created if needed); returns the path."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"type": type(cfg).__name__, "config": to_dict(cfg)}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path
