"""The device and dtype words that `sample`, `caption` and `mask` share."""

from __future__ import annotations

import pytest
import torch

from onetrainer.util.devices import (
    WeightsDtype,
    gpu_memory,
    parse_dtype,
    resolve_device,
    resolve_dtype,
    torch_dtype,
)
from onetrainer.util.errors import UserError


def test_auto_picks_a_gpu_when_there_is_one() -> None:
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(" CPU ") == "cpu"


@pytest.mark.parametrize(("name", "message"), [("tpu", "unknown device 'tpu'"), ("cuda:99", "is not available")])
def test_unknown_or_missing_devices_are_user_errors(name: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as caught:
        resolve_device(name)
    assert caught.value.where == "--device"


def test_auto_dtype_is_half_only_on_a_gpu() -> None:
    assert resolve_dtype("auto", "cpu") == "fp32"
    assert resolve_dtype(WeightsDtype.AUTO, "cuda:0") == "fp16"
    assert resolve_dtype("bf16", "cpu") == "bf16"
    assert torch_dtype("bf16", "cpu") is torch.bfloat16


def test_the_vocabulary_is_the_config_files_one() -> None:
    with pytest.raises(UserError, match="unknown dtype 'float16'") as caught:
        parse_dtype("float16")
    assert "auto, fp32, fp16, bf16" in (caught.value.hint or "")


def test_gpu_memory_is_the_training_gpus_total_or_none(monkeypatch: pytest.MonkeyPatch) -> None:
    class Properties:
        def __init__(self, index: int) -> None:
            self.total_memory = (index + 1) * 8 * 10**9

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", Properties)
    assert gpu_memory("auto") == gpu_memory("cuda") == gpu_memory("CUDA:0") == 8 * 10**9
    assert gpu_memory("cuda:1") == 16 * 10**9
    assert gpu_memory("cuda:2") is None, "a GPU this machine lacks: the config may be planned for another one"
    assert gpu_memory("cpu") is None
    assert gpu_memory("mps") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_memory("cuda") is None
