"""`--device`: auto is CUDA when present and the CPU otherwise; cuda without CUDA and an
unknown name are refused naming the flag and the fix; the configs refuse a bad name too."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from meta_embed.config import DEVICES, TrainConfig, WideDeepConfig
from meta_embed.devices import CPU, device_of, resolve_device

CUDA = torch.cuda.is_available()


def test_cpu_is_the_cpu_and_auto_is_cuda_only_where_present():
    assert DEVICES == ("auto", "cpu", "cuda")
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")


@pytest.mark.skipif(CUDA, reason="CUDA is present here: --device cuda is accepted")
def test_cuda_without_cuda_is_refused_naming_the_flag_and_the_fix():
    with pytest.raises(ValueError, match="--device cuda") as err:
        resolve_device("cuda")
    assert "use --device cpu or auto" in str(err.value)


def test_an_unknown_device_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="--device must be one of auto, cpu, cuda, got 'gpu'"):
        resolve_device("gpu")


@pytest.mark.parametrize("cls", [TrainConfig, WideDeepConfig])
def test_configs_refuse_an_unknown_device_naming_the_field(cls):
    assert cls().device == "cpu"  # the default: results stay what they were on every machine
    with pytest.raises(ValueError, match=f"{cls.__name__}.device must be one of auto, cpu, cuda"):
        cls(device="gpu")


def test_device_of_a_module_is_where_its_parameters_are():
    assert device_of(nn.Linear(2, 1)) == CPU
    assert device_of(nn.ReLU()) == CPU  # no parameters: the CPU
