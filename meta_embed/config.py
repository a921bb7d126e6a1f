"""Frozen, validated configuration dataclasses shared by several stages, and the
helpers that serialize a config next to the artifact it produced."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

EmbeddingMode = Literal["activation", "weights"]
Objective = Literal["binary", "regression"]
Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = typing.get_args(Device)
"""Where torch work runs (`--device`): `auto` is CUDA when present, else the CPU
(`meta_embed.devices.resolve_device`)."""

T = TypeVar("T")


def default_threshold(objective: Objective) -> float:
    """The target above which an event is a positive: label 0.5 (binary), rating 3.5 (regression)."""
    return 0.5 if objective == "binary" else 3.5


def _positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{owner}.{name} must be > 0, got {value}")


def check_device(owner: str, value: str) -> None:
    """Refuse a device name that is not one of DEVICES, naming the field."""
    if value not in DEVICES:
        raise ValueError(f"{owner}.device must be one of {', '.join(DEVICES)}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape of the two-block model.

    `meta_dim` is the meta embedding size in `activation` mode. In `weights` mode the
    embedding is the personal layer, (personal_rank x item_dim) weights plus a
    personal_rank bias, flattened: see `embedding_dim`.

    `history_inputs` adds a summary of the user's support events to the meta block's
    inputs (`TwoBlockModel.with_history`): the mean item vector, the mean item vector
    weighted by the user-centered target, and log(1 + events). Cold users get zeros.

    `user_id_dim` > 0 adds a user-id embedding of that size to the meta block's inputs,
    learned in the outer loop (the feature spec gets a vocabulary of the users with
    training events; any other user, a new one, reads the out-of-vocabulary row).
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
    user_id_dim: int = 0

    def __post_init__(self) -> None:
        if self.user_id_dim < 0:
            raise ValueError(
                f"ModelConfig.user_id_dim must be >= 0 (0: no user-id input), got {self.user_id_dim}"
            )
        if self.embedding_mode not in ("activation", "weights"):
            raise ValueError(
                f"ModelConfig.embedding_mode must be 'activation' or 'weights', got {self.embedding_mode!r}"
            )
        if self.objective not in ("binary", "regression"):
            raise ValueError(
                f"ModelConfig.objective must be 'binary' or 'regression', got {self.objective!r}"
            )
        _positive(
            "ModelConfig",
            meta_dim=self.meta_dim,
            meta_hidden=self.meta_hidden,
            item_dim=self.item_dim,
            personal_rank=self.personal_rank,
            retrieval_dim=self.retrieval_dim,
        )
        if not self.global_hidden or any(h <= 0 for h in self.global_hidden):
            raise ValueError(
                f"ModelConfig.global_hidden must be non-empty positive sizes, got {self.global_hidden}"
            )
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


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The outer loop. `positive_threshold` (default 0.5 for labels, 3.5 for ratings)
    decides which query events count as positives for the retrieval loss and the AUC.

    `loss_weighting`: `event` averages the query loss over every query event of the
    batch (heavy users count by their events, as in GAUC); `user` averages per user
    first. `select_on`: the held-out users' query metric that early stopping and the
    restored state follow in binary mode: per-user AUC (`user_auc`, within-user ranking)
    or pooled AUC (`auc`, which also rewards getting each user's level right).
    Regression always selects on MSE.

    The shared model (what scores a user at zero steps) can be trained directly too:
    `pretrain_epochs` passes over every training event at zero steps before meta-training
    (`meta_embed.pretrain`), and `zero_step_weight` adds the query events' loss at zero
    steps to every meta-training batch. `user_id_dropout`: the share of training tasks whose
    user id (where the spec has a user-id column) is replaced by the out-of-vocabulary row,
    besides every cold task, so that the OOV row learns what a new user looks like.

    `device`: where meta-training runs (`auto`: CUDA when present). The model is built and
    seeded on the CPU, trained on the device and handed back on the CPU, so a checkpoint
    is the same files whichever device trained it; CUDA agrees with the CPU within float
    tolerance, not bit for bit.
    """

    seed: int = 0
    batch_users: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    max_epochs: int = 30
    patience: int = 4
    retrieval_weight: float = 0.1
    retrieval_loss: Literal["softmax", "bce"] = "softmax"
    max_query: int = 200
    val_fraction: float = 0.1
    cold_fraction: float = 0.1
    grad_clip: float = 5.0
    positive_threshold: float | None = None
    eval_batch_users: int = 512
    select_on: Literal["auc", "user_auc"] = "user_auc"
    loss_weighting: Literal["user", "event"] = "event"
    threads: int | None = None
    deterministic: bool = True
    progress: bool = True
    pretrain_epochs: int = 0
    pretrain_batch: int = 2048
    zero_step_weight: float = 0.0
    user_id_dropout: float = 0.1
    device: Device = "cpu"

    def __post_init__(self) -> None:
        check_device("TrainConfig", self.device)
        for name in (
            "batch_users",
            "lr",
            "max_epochs",
            "patience",
            "max_query",
            "grad_clip",
            "eval_batch_users",
            "pretrain_batch",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.pretrain_epochs < 0 or self.zero_step_weight < 0:
            raise ValueError("TrainConfig.pretrain_epochs and zero_step_weight must be >= 0")
        for name in ("val_fraction", "cold_fraction", "user_id_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"TrainConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.retrieval_weight < 0 or self.weight_decay < 0:
            raise ValueError("TrainConfig.retrieval_weight and weight_decay must be >= 0")
        if self.retrieval_loss not in ("softmax", "bce"):
            raise ValueError(
                f"TrainConfig.retrieval_loss must be 'softmax' or 'bce', got {self.retrieval_loss!r}"
            )
        if self.select_on not in ("auc", "user_auc"):
            raise ValueError(f"TrainConfig.select_on must be 'auc' or 'user_auc', got {self.select_on!r}")
        if self.loss_weighting not in ("user", "event"):
            raise ValueError(
                f"TrainConfig.loss_weighting must be 'user' or 'event', got {self.loss_weighting!r}"
            )
        if self.threads is not None and self.threads <= 0:
            raise ValueError(f"TrainConfig.threads must be > 0 or None, got {self.threads}")

    def threshold(self, objective: Objective) -> float:
        return default_threshold(objective) if self.positive_threshold is None else self.positive_threshold


@dataclasses.dataclass(frozen=True)
class WideDeepConfig:
    """Hyper-parameters of the wide-and-deep baseline and its training loop.

    `user_ids` False removes every user-id input (the id embedding, the wide id weight and
    the crosses keyed by user id): the `wd_no_id` arm, W&D's shared part alone.
    `device`: where it trains (`auto`: CUDA when present); the fitted model comes back on the CPU.
    """

    objective: Literal["binary", "regression"] = "binary"
    embedding_dim: int = 16
    hidden: tuple[int, ...] = (128, 64)
    crosses: tuple[tuple[str, str], ...] = (("user_id", "genres"), ("age", "genres"), ("item_id", "age"))
    max_cross_rows: int = 1 << 22
    init_std: float = 0.01
    oov_rate: float = 0.05
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 2048
    max_epochs: int = 10
    patience: int = 2
    seed: int = 0
    user_ids: bool = True
    device: Device = "cpu"

    def __post_init__(self) -> None:
        check_device("WideDeepConfig", self.device)
        if self.objective not in ("binary", "regression"):
            raise ValueError(
                f"WideDeepConfig.objective must be 'binary' or 'regression', got {self.objective!r}"
            )
        for name in ("embedding_dim", "batch_size", "max_epochs", "patience", "max_cross_rows"):
            if getattr(self, name) <= 0:
                raise ValueError(f"WideDeepConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.lr <= 0 or self.init_std <= 0 or self.weight_decay < 0:
            raise ValueError(
                f"WideDeepConfig: need lr > 0, init_std > 0, weight_decay >= 0; got "
                f"{self.lr}, {self.init_std}, {self.weight_decay}"
            )
        if not 0 <= self.oov_rate < 1:
            raise ValueError(f"WideDeepConfig.oov_rate must be in [0, 1), got {self.oov_rate}")
        object.__setattr__(self, "hidden", tuple(self.hidden))
        crosses = tuple(tuple(c) for c in self.crosses)
        object.__setattr__(
            self, "crosses", crosses if self.user_ids else tuple(c for c in crosses if "user_id" not in c)
        )
        if any(len(c) != 2 for c in self.crosses):
            raise ValueError(f"WideDeepConfig.crosses must be pairs of column names, got {self.crosses}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def from_dict(cls: type[T], data: Any) -> T:
    """Build `cls` from a dict (read from JSON), refusing what does not fit with a ValueError
    that names the field: a non-dict, unknown or missing keys, a value of the wrong type."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a JSON object of its fields, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; known keys are {sorted(fields)}")
    missing = sorted(n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)  # fmt: skip
    if missing:
        raise ValueError(f"{cls.__name__}: missing keys {missing}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        if isinstance(value, list):
            value = tuple(value)
        _check_type(f"{cls.__name__}.{name}", hints[name], value)
        kwargs[name] = value
    return cls(**kwargs)


def _check_type(where: str, hint: Any, value: Any) -> None:
    """Refuse a JSON value whose type does not fit the field's simple type hint."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return
    for kind in options:
        base = typing.get_origin(kind) or kind
        if base is bool and isinstance(value, bool):
            return
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if base is str and isinstance(value, str):
            return
        if base is tuple and isinstance(value, tuple):
            args = typing.get_args(kind)
            if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: every element an X
                for k, item in enumerate(value):
                    _check_type(f"{where}[{k}]", args[0], tuple(item) if isinstance(item, list) else item)
            return
        if base is typing.Literal and value in typing.get_args(kind):
            return
        if base not in (bool, int, float, str, tuple, typing.Literal, type(None)):
            return  # a type this check does not know: the dataclass validates it
    raise ValueError(f"{where} must be {' or '.join(_type_name(k) for k in options)}, got {value!r}")


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    return names.get(hint, getattr(typing.get_origin(hint) or hint, "__name__", str(hint)))


def write_config(cfg: Any, directory: str | Path, name: str = "config.json") -> str:
    """Write `cfg` as JSON into `directory` (local, created if needed, or an object-store
    prefix: `meta_embed.storage`); returns the path."""
    from meta_embed import storage

    path = storage.join(directory, name)
    payload = {"type": type(cfg).__name__, "config": to_dict(cfg)}
    storage.write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path
