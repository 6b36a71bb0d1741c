"""The training device, and the memory in use for the progress display (ranks: see `distributed`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def memory_use(device: torch.device) -> dict[str, Any]:
    """A step record's memory fields, in GiB: `memory_allocated_gb` and `memory_peak_gb`, and their kind.

    On CUDA they are the tensors' accelerator memory (`memory_kind` "gpu"); elsewhere, where training
    lives in RAM, the process's resident memory (`memory_kind` "ram"), or None where the OS does not say.
    """
    import torch

    if device.type == "cuda":
        allocated = torch.cuda.memory_allocated(device) / _GIB
        peak = torch.cuda.max_memory_allocated(device) / _GIB
        return {"memory_kind": "gpu", "memory_allocated_gb": allocated, "memory_peak_gb": peak}
    resident, resident_peak = process_memory_gb()
    return {"memory_kind": "ram", "memory_allocated_gb": resident, "memory_peak_gb": resident_peak}


def process_memory_gb() -> tuple[float | None, float | None]:
    """(resident, peak resident) memory of this process in GiB, from /proc and getrusage (no psutil)."""
    try:
        import resource
    except ImportError:  # Windows
        return None, None
    peak_units = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = peak_units * (1 if sys.platform == "darwin" else 1024) / _GIB  # bytes on macOS, KiB on Linux
    try:
        resident_pages = int(Path("/proc/self/statm").read_text(encoding="ascii").split()[1])
    except (OSError, ValueError, IndexError):  # no /proc (macOS): the peak is the best figure there is
        return peak, peak
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / _GIB, peak
