"""Page-locked CPU memory of the size asked for, for weights that live in CPU memory and are copied to the GPU.

torch's pinned allocator rounds every allocation up to a power of two (unless `PYTORCH_CUDA_ALLOC_CONF`
sets `pinned_max_round_threshold_mb`, torch 2.13 on), so pinning a model tensor by tensor can take up to
twice its size in RAM: a 75 MiB projection takes 128 MiB. `pinned_copies` packs a group of
tensors into one ordinary CPU buffer of their summed size (each aligned to `ALIGNMENT` bytes) and
page-locks it with `cudaHostRegister`, as torch's distributed checkpoint stager does; the copies are
views into it, pinned as far as torch can tell (`is_pinned`, copies without waiting). The buffer covers
whole pages of its own, so two buffers never share a page the driver would refuse to register twice,
and the registration is undone when the last view is gone.

Where registering fails (not enough free RAM, a limit on page-locked memory such as WSL's), the failure
stays behind as the CUDA runtime's pending error, which the next kernel launch would report as its own
(torch binds no `cudaGetLastError` to clear it). It is cleared in each copy of the runtime library the
process has loaded, and the tensors are pinned one by one by torch instead, with a warning: correct, only
larger. Where it cannot be cleared (no such library found), the run stops here with the reason, rather than
later with a misleading one.
"""

from __future__ import annotations

import mmap
import warnings
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

from onetrainer.util.errors import RuntimeFailure

if TYPE_CHECKING:
    import numpy as np
    import torch

ALIGNMENT = 512
"""Bytes each copy starts on a multiple of (what the CUDA allocator gives device tensors)."""

_PAGE = mmap.PAGESIZE

_PORTABLE = 1
"""`cudaHostRegisterPortable`: pinned for every CUDA context of the process, not only the current device's, as
torch's checkpoint stager registers memory."""


def pinned_copies(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Pinned CPU copies of `tensors` (any device, plain tensors), with their shapes, strides and values,
    sharing one buffer that takes their summed size rounded up to `ALIGNMENT` each."""
    import numpy as np
    import torch

    if not tensors:
        return []
    offsets, total = _layout(tensors)
    length = -(-total // _PAGE) * _PAGE
    if length == 0:  # only empty tensors: nothing to page-lock (and registering zero bytes is an error)
        return [tensor.detach().to("cpu", copy=True) for tensor in tensors]
    memory = np.empty(length + _PAGE, dtype=np.uint8)
    start = -memory.ctypes.data % _PAGE
    buffer = torch.from_numpy(memory[start : start + length])
    copies = []
    for tensor, offset in zip(tensors, offsets, strict=True):
        span = _span(tensor) * tensor.element_size()
        view = buffer[offset : offset + span].view(tensor.dtype)
        copy = view.as_strided(tensor.size(), tensor.stride())
        copy.copy_(tensor.detach())
        copies.append(copy)
    error = _register(buffer.data_ptr(), length)
    if error is None:
        _unregister_when_gone(memory, buffer.data_ptr())
        return copies
    failed = f"page-locking {length / 2**20:.0f} MiB of CPU memory failed ({error})"
    if not _drain_pending_error():
        raise RuntimeFailure(
            f"{failed}, and the CUDA runtime's error could not be cleared",
            hint="Free RAM, or keep fewer weights in CPU memory (parts.<name>.offload_blocks, "
            "training.optimizer_offload).",
        )
    warnings.warn(
        f"{failed}, so those weights are pinned tensor by tensor, taking up to twice their size in RAM",
        RuntimeWarning,
        stacklevel=2,
    )
    del copies, buffer, memory  # the pageable buffer goes before torch pins the tensors again
    return [tensor.detach().to("cpu").pin_memory() for tensor in tensors]


def _layout(tensors: Sequence[torch.Tensor]) -> tuple[list[int], int]:
    """Each tensor's byte offset in the buffer, and the buffer's size."""
    offsets = []
    total = 0
    for tensor in tensors:
        offsets.append(total)
        total += -(-_span(tensor) * tensor.element_size() // ALIGNMENT) * ALIGNMENT
    return offsets, total


def _span(tensor: torch.Tensor) -> int:
    """Elements from a tensor's first to its last, as its strides lay them out (its numel when dense)."""
    if tensor.numel() == 0:
        return 0
    return 1 + sum((size - 1) * stride for size, stride in zip(tensor.size(), tensor.stride(), strict=True))


def _register(pointer: int, length: int) -> str | None:
    """Page-lock `length` bytes at `pointer` for the CUDA driver; what went wrong, or None."""
    import torch

    try:
        code = int(torch.cuda.cudart().cudaHostRegister(pointer, length, _PORTABLE))
    except (AssertionError, AttributeError, RuntimeError) as error:  # a CPU-only torch asserts
        return str(error)
    return f"cudaError {code}" if code else None


_RUNTIMES = {"libcudart": "cudaGetLastError", "libamdhip64": "hipGetLastError"}
"""The runtime libraries torch may have loaded (a wheel's may carry a hash: `libcudart-1a2b3c4d.so.12`), and
the function that returns and clears their pending error."""


def _drain_pending_error() -> bool:
    """Clear the pending runtime error in every runtime library loaded; whether one was found (Linux)."""
    import ctypes
    from pathlib import Path

    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    drained = False
    for path, function in runtime_libraries(maps):
        try:
            getattr(ctypes.CDLL(path), function)()
        except (OSError, AttributeError):
            continue
        drained = True
    return drained


def runtime_libraries(maps: str) -> list[tuple[str, str]]:
    """(path, error-clearing function) of each runtime library in `/proc/self/maps`' text, once each."""
    found: dict[str, str] = {}
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6:
            continue
        path = fields[5].removesuffix(" (deleted)")
        name = path.rsplit("/", 1)[-1]
        for prefix, function in _RUNTIMES.items():
            if name.startswith(prefix):
                found.setdefault(path, function)
    return list(found.items())


def _unregister(pointer: int) -> None:
    import torch

    if int(torch.cuda.cudart().cudaHostUnregister(pointer)):
        _drain_pending_error()


def _unregister_when_gone(memory: np.ndarray, pointer: int) -> None:
    """Undo the registration before `memory` is freed, that is once no tensor views it any more.

    Not at exit: the process's memory goes with it, and the CUDA runtime may already be torn down.
    """
    finalizer = weakref.finalize(memory, _unregister, pointer)
    finalizer.atexit = False
