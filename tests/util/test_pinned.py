"""Pinned copies in one buffer of their summed size: same values and layouts, one registration, undone when
the last copy is gone, and torch's per-tensor pinning where registering fails."""

from __future__ import annotations

import gc
import mmap
from typing import TYPE_CHECKING

import pytest
import torch

from onetrainer.util.pinned import ALIGNMENT, pinned_copies

if TYPE_CHECKING:
    from conftest import PageLocks


def _tensors() -> list[torch.Tensor]:
    """Tensors as a model holds them: a channels-last convolution weight, a transposed view, bf16, int8
    values with their scales, a bias, an empty one."""
    generator = torch.Generator().manual_seed(0)
    conv = torch.randn(8, 4, 3, 3, generator=generator).to(memory_format=torch.channels_last)
    return [
        conv,
        torch.randn(24, 40, generator=generator).t(),
        torch.randn(33, 7, generator=generator).to(torch.bfloat16),
        torch.randint(-128, 127, (16, 16), generator=generator, dtype=torch.int8),
        torch.rand(16, generator=generator),
        torch.randn(5, generator=generator),
        torch.empty(0, 3),
    ]


def test_copies_keep_values_shapes_and_strides_in_one_registered_buffer(page_locks: PageLocks) -> None:
    tensors = _tensors()
    copies = pinned_copies(tensors)

    assert len(page_locks.registered) == 1
    start, length = page_locks.registered[0]
    assert start % mmap.PAGESIZE == 0, "the buffer has whole pages of its own"
    assert length % mmap.PAGESIZE == 0
    for tensor, copy in zip(tensors, copies, strict=True):
        assert copy.device.type == "cpu"
        assert (copy.dtype, copy.shape, copy.stride()) == (tensor.dtype, tensor.shape, tensor.stride())
        assert torch.equal(copy, tensor)
        if copy.numel():
            assert copy.data_ptr() % ALIGNMENT == 0
            assert copy.is_pinned(), "torch sees the copy as pinned (the fixture answers from the registration)"
            assert start <= copy.data_ptr()
            assert copy.data_ptr() + copy.nbytes <= start + length
    assert len({copy.data_ptr() for copy in copies if copy.numel()}) == sum(1 for copy in copies if copy.numel())
    copies[0].zero_()
    assert tensors[0].abs().sum() > 0, "copies, not views of the originals"


def test_the_buffer_takes_the_summed_size_not_a_power_of_two_per_tensor(page_locks: PageLocks) -> None:
    """Three FLUX.1-like projections, scaled down: torch's allocator would round each 3 MiB tensor up to
    4 MiB (1.33x); the buffer adds at most a page and the alignment."""
    tensors = [torch.zeros(768, 1024, dtype=torch.float32) for _ in range(3)]
    pinned_copies(tensors)

    ((_, length),) = page_locks.registered
    payload = sum(tensor.nbytes for tensor in tensors)
    assert payload <= length < payload + mmap.PAGESIZE + len(tensors) * ALIGNMENT


def test_the_registration_is_undone_when_the_last_copy_is_gone(page_locks: PageLocks) -> None:
    copies = pinned_copies([torch.ones(1000), torch.ones(10)])
    ((start, _),) = page_locks.registered
    kept = copies[1]
    del copies
    gc.collect()
    assert page_locks.unregistered == [], "a copy still views the buffer"
    del kept
    gc.collect()
    assert page_locks.unregistered == [start]


@pytest.fixture
def refused(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The driver refuses to register (cudaError 2, out of memory); torch's own pinning is recorded."""
    from onetrainer.util import pinned

    torch_pinned: list[torch.Tensor] = []

    def pin(tensor: torch.Tensor) -> torch.Tensor:
        copy = tensor.clone()
        torch_pinned.append(copy)
        return copy

    monkeypatch.setattr(pinned, "_register", lambda pointer, length: "cudaError 2")
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    return torch_pinned


def test_where_registering_fails_the_error_is_cleared_and_torch_pins_each_tensor(
    refused: list[torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    from onetrainer.util import pinned

    drained: list[bool] = []
    monkeypatch.setattr(pinned, "_drain_pending_error", lambda: drained.append(True) or True)
    tensors = _tensors()
    with pytest.warns(RuntimeWarning, match=r"cudaError 2.*tensor by tensor"):
        copies = pinned_copies(tensors)

    assert drained == [True], "the failure is not left for the next kernel launch to report"
    assert all(any(copy is other for other in refused) for copy in copies)
    assert all(torch.equal(copy, tensor) for copy, tensor in zip(copies, tensors, strict=True))


def test_where_the_error_cannot_be_cleared_the_run_stops_with_the_reason(
    refused: list[torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    from onetrainer.util import pinned
    from onetrainer.util.errors import RuntimeFailure

    monkeypatch.setattr(pinned, "_drain_pending_error", lambda: False)
    with pytest.raises(RuntimeFailure, match=r"page-locking \d+ MiB of CPU memory failed \(cudaError 2\)") as caught:
        pinned_copies(_tensors())
    assert caught.value.exit_code == 1
    assert "offload_blocks" in (caught.value.hint or "")
    assert refused == [], "nothing pinned after a failure the next CUDA call would trip on"


def test_the_runtime_libraries_are_found_in_the_memory_map_once_each() -> None:
    from onetrainer.util.pinned import runtime_libraries

    maps = "\n".join(
        [
            "7f00-7f10 r-xp 00000000 08:01 11 /usr/lib/libc.so.6",
            "7f10-7f20 r--p 00000000 08:01 12 /site-packages/torch/lib/libcudart-d0da41ae.so.12",
            "7f20-7f30 r-xp 00001000 08:01 12 /site-packages/torch/lib/libcudart-d0da41ae.so.12",
            "7f30-7f40 r-xp 00000000 08:01 13 /site-packages/nvidia/cuda_runtime/lib/libcudart.so.12 (deleted)",
            "7f40-7f50 r-xp 00000000 08:01 14 /opt/rocm/lib/libamdhip64.so.6",
            "7f50-7f60 rw-p 00000000 00:00 0",
            "7f60-7f70 r-xp 00000000 08:01 15 /opt/notlibcudart.so",
        ]
    )
    assert runtime_libraries(maps) == [
        ("/site-packages/torch/lib/libcudart-d0da41ae.so.12", "cudaGetLastError"),
        ("/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12", "cudaGetLastError"),
        ("/opt/rocm/lib/libamdhip64.so.6", "hipGetLastError"),
    ]


def test_nothing_to_pin_registers_nothing(page_locks: PageLocks) -> None:
    assert pinned_copies([]) == []
    empty = pinned_copies([torch.empty(0, 3), torch.empty(0)])
    assert [tuple(tensor.shape) for tensor in empty] == [(0, 3), (0,)]
    assert page_locks.registered == [], "registering zero bytes is an error the next CUDA call would report"


@pytest.mark.gpu
def test_on_a_gpu_the_copies_are_page_locked_and_copy_in_without_waiting() -> None:
    tensors = _tensors()
    copies = pinned_copies(tensors)
    assert all(copy.is_pinned() for copy in copies if copy.numel())
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        on_gpu = [copy.to("cuda", non_blocking=True) for copy in copies]
    stream.synchronize()
    for tensor, copy in zip(tensors, on_gpu, strict=True):
        assert torch.equal(copy.cpu(), tensor)
    del copies, on_gpu
    gc.collect()
    again = pinned_copies(tensors)
    assert all(copy.is_pinned() for copy in again if copy.numel())
