"""`EvalConfig`: the offline A/B evaluation's settings, light to import (the command line
reads its defaults from it), and the quick preset the demo runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from meta_embed.config import Device, MamlConfig, ModelConfig, TrainConfig, check_device, from_dict

DATASETS = ("movielens-1m", "movielens-100k", "synthetic")
REFERENCES = ("wd_static", "wd_retrained", "wd_no_id", "meta_init", "popularity")
"""The arms every arm's metrics are differenced against (paired bootstrap intervals): the
two W&D baselines, and the references of the decomposition (shared model and lift)."""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The evaluation. `dataset` is one of DATASETS, a prepared data folder, or a folder of
    raw MovieLens files (prepared under OUT/work/data); `model`,
    `maml` and `train` configure the meta model (its seed, epochs, threads and device come
    from `seed`, `meta_epochs`, `torch_threads` and `device`). `device` is where the meta
    models and W&D train and the nightly refreshes adapt (`auto`: CUDA when present); the
    replay scores every arm on the CPU."""

    dataset: str = "movielens-1m"
    out: str = "reports/ml-1m"
    days: int = 56
    t0_quantile: float = 0.8
    valid_quantile: float = 0.7
    retrain_every: int = 7
    weights_arm: bool = True
    user_id_arm: int = 16  # user-id embedding size of the meta_refresh_user_ids arm (0: no such arm)
    meta_epochs: int = 30
    wd_lrs: tuple[float, ...] = (1e-3, 3e-3)
    wd_dims: tuple[int, ...] = (16, 32)
    wd_max_epochs: int = 8
    resamples: int = 1000
    seed: int = 0
    melu: bool = True
    melu_steps: tuple[int, ...] = (1, 5)
    beam_args: tuple[str, ...] = ("--direct_running_mode=in_memory", "--direct_num_workers=1")
    synth_users: int = 400
    torch_threads: int = 1  # torch threads of training and scoring: 1 avoids spinning on a shared machine
    device: Device = "cpu"
    cache_dir: str | None = None
    note: str = ""  # printed in the report (e.g. why fewer days)
    model: ModelConfig = ModelConfig()
    maml: MamlConfig = MamlConfig()
    train: TrainConfig = TrainConfig()

    def __post_init__(self) -> None:
        check_device("EvalConfig", self.device)
        for name in ("wd_lrs", "wd_dims", "melu_steps", "beam_args"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name, cls in (("model", ModelConfig), ("maml", MamlConfig), ("train", TrainConfig)):
            if isinstance(getattr(self, name), dict):  # read back from config.json
                object.__setattr__(self, name, from_dict(cls, getattr(self, name)))
        if self.user_id_arm < 0:
            raise ValueError(f"EvalConfig.user_id_arm must be >= 0 (0: no such arm), got {self.user_id_arm}")
        if self.dataset not in DATASETS and not Path(self.dataset).is_dir():
            raise ValueError(
                f"EvalConfig.dataset must be one of {DATASETS} or a data folder (prepared or raw "
                f"MovieLens), got {self.dataset!r}"
            )
        if not 0 < self.valid_quantile < self.t0_quantile < 1:
            raise ValueError(
                f"EvalConfig: need 0 < valid_quantile < t0_quantile < 1, got "
                f"{self.valid_quantile}, {self.t0_quantile}"
            )
        for name in (
            "days",
            "retrain_every",
            "meta_epochs",
            "wd_max_epochs",
            "resamples",
            "synth_users",
            "torch_threads",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"EvalConfig.{name} must be > 0, got {getattr(self, name)}")
        if not self.wd_lrs or not self.wd_dims or any(v <= 0 for v in self.wd_lrs + self.wd_dims):
            raise ValueError(
                f"EvalConfig.wd_lrs and wd_dims must be non-empty positive grids, got {self.wd_lrs}, "
                f"{self.wd_dims}"
            )
        if self.melu and (not self.melu_steps or min(self.melu_steps) < 1):
            raise ValueError(f"EvalConfig.melu_steps must be inner-step counts >= 1, got {self.melu_steps}")


def quick_config(out: str = "reports/ml-100k-quick") -> EvalConfig:
    """The demo: MovieLens-100K, two weeks of nightly refreshes, a small grid, no MeLU table."""
    return EvalConfig(
        dataset="movielens-100k",
        out=out,
        days=14,
        meta_epochs=10,
        wd_lrs=(3e-3,),
        wd_dims=(16, 32),
        wd_max_epochs=6,
        melu=False,
        user_id_arm=0,
        note="Quick demo: MovieLens-100K with a 14-day test period (not 8 weeks) and a reduced W&D grid.",
    )
