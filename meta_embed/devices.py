"""Where torch work runs: `resolve_device` turns a `--device` value (`auto`, `cpu`, `cuda`;
see `meta_embed.config.DEVICES`) into a `torch.device`, and `device_of` says where a model is.

Training and adaptation build their batches on the model's device and bring results back
with `.cpu()`; checkpoints are written from, and loaded onto, the CPU, so they do not
depend on the device that produced them.
"""

from __future__ import annotations

import torch
from torch import nn

from meta_embed.config import DEVICES

CPU = torch.device("cpu")


def resolve_device(name: str) -> torch.device:
    """`cpu` -> the CPU; `cuda` -> the current CUDA device, refused where there is none;
    `auto` -> CUDA when present, else the CPU."""
    if name not in DEVICES:
        raise ValueError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cpu":
        return CPU
    if torch.cuda.is_available():
        return torch.device("cuda")
    if name == "auto":
        return CPU
    why = (
        "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
    )
    raise ValueError(f"--device cuda: {why} on this machine; use --device cpu or auto (CUDA when present)")


def device_of(module: nn.Module) -> torch.device:
    """The device of a module's parameters (the CPU for a module without any)."""
    return next(module.parameters(), torch.empty(0)).device
