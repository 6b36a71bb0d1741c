"""Write a safetensors file one tensor at a time, so a converted checkpoint never exists twice in memory.

The safetensors library serialises a complete dict, which forces a conversion to build the whole
output first. The format is simple (an 8-byte header length, a JSON header of dtype/shape/offsets, then
the raw little-endian bytes), so we write it ourselves: a first pass over the tensor stream with
data-less meta tensors fixes every key, shape and dtype (hence the header), and a second pass writes
the data, one tensor at a time, into an atomic temporary file.

Every safetensors file onetrainer writes comes from here (`util.atomic.save_safetensors` included), so
all of them share one layout rule: the header is padded with spaces (valid JSON whitespace, as the
library pads) until the tensor data starts on a 64-byte boundary. The library itself pads to 8 bytes
only, so where the data started depended on the header's length (the title, the embedded config), and
with it the memory alignment of the mapped tensors: on AVX-512 CPUs that alignment changes which
kernels run and hence the last bits of a model's outputs, and unaligned mapped tensors load slower.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from onetrainer.util.atomic import atomic_file
from onetrainer.util.safetensors_meta import DTYPE_NAMES

if TYPE_CHECKING:
    import torch

TensorStream = Callable[[bool], Iterator[tuple[str, "torch.Tensor"]]]
"""`stream(meta)` yields (key, tensor) pairs; with `meta=True` the tensors are meta-device stand-ins."""

DATA_ALIGNMENT = 64
"""Tensor data starts at a multiple of this many bytes from the start of the file (a cache line, an
AVX-512 register)."""
_CODES = {name: code for code, name in DTYPE_NAMES.items()}


def _dtype_name(dtype: torch.dtype) -> str:
    return _CODES[str(dtype).removeprefix("torch.")]


def _encode_header(plan: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: Mapping[str, str] | None) -> bytes:
    """The length prefix and JSON header for tensors laid out in `plan` order, padded to `DATA_ALIGNMENT`."""
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for key, dtype, shape in plan:
        count = 1
        for size in shape:
            count *= size
        nbytes = count * dtype.itemsize
        header[key] = {"dtype": _dtype_name(dtype), "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % DATA_ALIGNMENT)
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors_stream(
    path: str | os.PathLike[str],
    stream: TensorStream,
    metadata: Mapping[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write `stream` to `path` atomically; returns the number of tensors. `progress(done, total)` per tensor."""
    import torch

    plan = [(key, tensor.dtype, tuple(tensor.shape)) for key, tensor in stream(True)]
    keys = [key for key, _, _ in plan]
    if len(set(keys)) != len(keys):
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        raise ValueError(f"duplicate tensor names in the output: {', '.join(duplicates[:5])}")
    with atomic_file(path, "wb") as handle:
        handle.write(_encode_header(plan, metadata))
        tensors = stream(False)
        for done, (planned, dtype, shape) in enumerate(plan, 1):
            key, tensor = next(tensors, (None, None))
            if tensor is None or key != planned or tensor.dtype != dtype or tuple(tensor.shape) != shape:
                raise RuntimeError(f"the tensor stream changed between passes at {planned} (got {key})")
            data = tensor.detach().to("cpu").contiguous().reshape(-1)
            if data.numel():
                handle.write(data.view(torch.uint8).numpy().data)
            del tensor, data  # hold nothing while the stream produces the next tensor
            if progress is not None:
                progress(done, len(plan))
        if next(tensors, None) is not None:
            raise RuntimeError("the tensor stream yielded more tensors than planned")
    return len(plan)


def state_dict_stream(
    state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None, *, uncast: str | None = None
) -> TensorStream:
    """A replayable stream over an in-memory state dict, cast to `dtype` tensor by tensor as it is written;
    keys ending in `uncast` keep their own dtype (a LoRA's alphas: loaders scale by the value stored)."""

    def stream(meta: bool) -> Iterator[tuple[str, torch.Tensor]]:
        for key, tensor in state_dict.items():
            if meta:
                tensor = tensor.to("meta")
            kept = uncast is not None and key.endswith(uncast)
            if dtype is not None and tensor.is_floating_point() and not kept:
                tensor = tensor.to(dtype)
            yield key, tensor

    return stream
