"""Random access to the tensors of one weights file, whatever its container.

Loaders and `convert` read a checkpoint key by key: a safetensors file is memory-mapped and each
tensor is read only when asked for, so converting a multi-GB file never holds it twice. A mapped
file's pages stay resident (and counted as the process's memory) once read, so a loader that keeps
only a quantised copy of each tensor opens the file unmapped instead: each tensor is read into a
buffer of its own, which is freed with it (`read_tensor`). Pickled files (.ckpt/.pt/.bin) go through
`torch.load(weights_only=True)` only (see `util.detect`).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from onetrainer.util.detect import load_pickle_weights, sniff_container
from onetrainer.util.errors import UserError
from onetrainer.util.safetensors_meta import DTYPE_NAMES

if TYPE_CHECKING:
    import torch


def read_header(handle: Any) -> tuple[dict[str, Any], int]:
    """A safetensors file's tensor entries (metadata left out) and where its data section starts."""
    (length,) = struct.unpack("<Q", handle.read(8))
    header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return header, 8 + length


def read_tensor(handle: Any, start: int, entry: dict[str, Any]) -> torch.Tensor:
    """One tensor, read into its own buffer (nothing else of the file stays in memory)."""
    import torch

    begin, end = entry["data_offsets"]
    handle.seek(start + begin)
    buffer = torch.empty(end - begin, dtype=torch.uint8)
    if end > begin:
        values: Any = buffer.numpy()
        handle.readinto(values)
    dtype = getattr(torch, DTYPE_NAMES[entry["dtype"]])
    return buffer.view(dtype).reshape(entry["shape"])


class WeightsFile:
    """An open weights file: `keys()`, `shape(key)`, `dtype(key)`, `tensor(key)` and its string metadata.

    `mapped=False` reads a safetensors file's tensors without the memory map (see the module docstring).
    """

    def __init__(self, path: str | os.PathLike[str], *, mapped: bool = True) -> None:
        self.path = Path(path)
        self.container = sniff_container(self.path)
        self._handle: Any = None
        self._unmapped: Any = None
        self._entries: dict[str, Any] = {}
        self._start = 0
        self._tensors: dict[str, torch.Tensor] = {}
        if self.container == "safetensors":
            from safetensors import SafetensorError, safe_open

            try:
                self._handle = safe_open(str(self.path), framework="pt", device="cpu")
            except (SafetensorError, OSError, ValueError) as error:
                raise UserError(
                    f"cannot read {self.path.name}: not a valid safetensors file ({error})",
                    where=str(self.path),
                    hint="The file may be truncated or corrupt; download or export it again.",
                ) from None
            self.metadata: dict[str, str] = dict(self._handle.metadata() or {})
            self._keys = list(self._handle.keys())
            if not mapped:
                self._unmapped = self.path.open("rb")
                self._entries, self._start = read_header(self._unmapped)
        else:
            self._tensors, self.metadata = load_pickle_weights(self.path)
            self._keys = list(self._tensors)

    def keys(self) -> list[str]:
        return list(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __contains__(self, key: str) -> bool:
        return key in self._tensors or (self._handle is not None and key in self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        if self._handle is not None:
            return tuple(self._handle.get_slice(key).get_shape())
        return tuple(self._tensors[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        import torch

        if self._handle is not None:
            return getattr(torch, DTYPE_NAMES[self._handle.get_slice(key).get_dtype()])
        return self._tensors[key].dtype

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {key: self.shape(key) for key in self._keys}

    def tensor(self, key: str) -> torch.Tensor:
        if self._unmapped is not None:
            return read_tensor(self._unmapped, self._start, self._entries[key])
        if self._handle is not None:
            return self._handle.get_tensor(key)
        return self._tensors[key]

    def meta_tensor(self, key: str) -> torch.Tensor:
        """A data-less stand-in with the tensor's shape and dtype, for planning a conversion."""
        import torch

        return torch.empty(self.shape(key), dtype=self.dtype(key), device="meta")

    def close(self) -> None:
        if self._unmapped is not None:
            self._unmapped.close()
            self._unmapped = None
        self._handle = None
        self._tensors = {}

    def __enter__(self) -> WeightsFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
