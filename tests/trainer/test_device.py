"""Device choice: auto falls back to the CPU; asking for a missing accelerator is a user error."""

from __future__ import annotations

import pytest
import torch

from onetrainer.trainer.device import distributed_rank, memory_gb, resolve_device
from onetrainer.util.errors import UserError


def test_cpu_and_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_single_process_is_rank_0_of_1_and_the_cpu_reports_no_memory() -> None:
    assert distributed_rank() == (0, 1)
    assert memory_gb(torch.device("cpu")) == (None, None)
