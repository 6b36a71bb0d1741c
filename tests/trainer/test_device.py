"""Device choice: auto falls back to the CPU; asking for a missing accelerator is a user error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onetrainer.trainer.device import memory_use, resolve_device
from onetrainer.trainer.distributed import current_world
from onetrainer.util.errors import UserError


def test_cpu_and_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_single_process_is_rank_0_of_1() -> None:
    world = current_world()
    assert (world.rank, world.size, world.is_main, world.distributed) == (0, 1, True, False)


@pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="reads the resident size from /proc")
def test_the_cpu_reports_the_process_resident_memory() -> None:
    """Training on the CPU lives in RAM: the display shows this process's resident size, not nothing."""
    import mmap

    before = memory_use(torch.device("cpu"))
    # 64 MiB of fresh pages, each touched so it is resident. Not a tensor: malloc may serve that from
    # memory an earlier test freed but the process still holds, and then the resident size stays put.
    block = mmap.mmap(-1, 64 * 1024 * 1024)
    for offset in range(0, len(block), mmap.PAGESIZE):
        block[offset] = 1
    after = memory_use(torch.device("cpu"))
    assert before["memory_kind"] == after["memory_kind"] == "ram"
    assert 0.01 < before["memory_allocated_gb"] <= before["memory_peak_gb"] + 0.01
    assert after["memory_allocated_gb"] - before["memory_allocated_gb"] > 0.05
    assert after["memory_peak_gb"] >= after["memory_allocated_gb"] - 0.01
    block.close()


@pytest.mark.gpu
def test_cuda_reports_accelerator_memory() -> None:
    device = torch.device("cuda")
    block = torch.ones(32 * 1024 * 1024, dtype=torch.uint8, device=device)
    use = memory_use(device)
    assert use["memory_kind"] == "gpu"
    assert use["memory_allocated_gb"] >= 32 / 1024
    del block
