"""The training device, this process's rank, and accelerator memory for the progress display."""

from __future__ import annotations

from typing import TYPE_CHECKING

from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch

_GIB = 1024**3


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; an explicit accelerator that is missing is a user error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("training.device asks for CUDA, but no CUDA GPU is available", hint="Use training.device=cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"no CUDA device {device.index}; this machine has {torch.cuda.device_count()}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("training.device asks for Apple MPS, which is not available here")
    return device


def distributed_rank() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless torch.distributed was initialised (by torchrun)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def memory_gb(device: torch.device) -> tuple[float | None, float | None]:
    """(allocated, peak) accelerator memory in GiB, or (None, None) on the CPU."""
    import torch

    if device.type != "cuda":
        return None, None
    return torch.cuda.memory_allocated(device) / _GIB, torch.cuda.max_memory_allocated(device) / _GIB
