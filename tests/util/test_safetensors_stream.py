"""The streaming safetensors writer: files the library reads back exactly, written one tensor at a time."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from onetrainer.util.atomic import save_safetensors
from onetrainer.util.safetensors_stream import DATA_ALIGNMENT, state_dict_stream, write_safetensors_stream


def test_every_dtype_and_shape_reads_back_exactly(tmp_path: Path) -> None:
    tensors = {
        "matrix": torch.randn(3, 5),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0),
        "half": torch.randn(7, dtype=torch.float16),
        "brain": torch.randn(2, 3, dtype=torch.bfloat16),
        "ints": torch.arange(9).reshape(3, 3),
        "flags": torch.tensor([True, False]),
        "view": torch.randn(4, 6)[:, ::2],
    }
    path = tmp_path / "all.safetensors"
    assert write_safetensors_stream(path, state_dict_stream(tensors), {"k": "v"}) == len(tensors)
    loaded = load_file(str(path))
    assert loaded.keys() == tensors.keys()
    for key, tensor in tensors.items():
        assert loaded[key].dtype == tensor.dtype, key
        assert torch.equal(loaded[key], tensor), key
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"k": "v"}


def test_dtype_casts_floats_only(tmp_path: Path) -> None:
    path = tmp_path / "cast.safetensors"
    write_safetensors_stream(path, state_dict_stream({"w": torch.randn(4), "i": torch.arange(3)}, torch.float16))
    loaded = load_file(str(path))
    assert (loaded["w"].dtype, loaded["i"].dtype) == (torch.float16, torch.int64)


def test_tensors_are_released_as_soon_as_they_are_written(tmp_path: Path) -> None:
    alive: list[weakref.ref] = []

    def stream(meta: bool) -> Iterator[tuple[str, torch.Tensor]]:
        for index in range(5):
            if meta:
                yield f"t{index}", torch.empty(1000, device="meta")
                continue
            assert sum(ref() is not None for ref in alive) == 0, "an earlier tensor is still held"
            tensor = torch.full((1000,), float(index))
            alive.append(weakref.ref(tensor))
            yield f"t{index}", tensor
            del tensor

    write_safetensors_stream(tmp_path / "lazy.safetensors", stream)
    assert torch.equal(load_file(str(tmp_path / "lazy.safetensors"))["t4"], torch.full((1000,), 4.0))


def test_progress_reports_each_tensor(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    write_safetensors_stream(
        tmp_path / "p.safetensors",
        state_dict_stream({"a": torch.ones(1), "b": torch.ones(2)}),
        progress=lambda d, t: seen.append((d, t)),
    )
    assert seen == [(1, 2), (2, 2)]


def test_a_failed_write_leaves_no_file(tmp_path: Path) -> None:
    def stream(meta: bool) -> Iterator[tuple[str, torch.Tensor]]:
        yield "a", torch.empty(2, device="meta") if meta else torch.ones(3)

    with pytest.raises(RuntimeError, match="changed between passes"):
        write_safetensors_stream(tmp_path / "bad.safetensors", stream)
    assert list(tmp_path.iterdir()) == []


def _data_offset(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def _stream_writer(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    write_safetensors_stream(path, state_dict_stream(tensors), metadata)


@pytest.mark.parametrize("write", [_stream_writer, save_safetensors], ids=["stream", "save_safetensors"])
@pytest.mark.parametrize("title_length", [0, 1, 7, 8, 40, 48, 55, 56, 63, 64, 200])
def test_tensor_data_starts_64_byte_aligned_whatever_the_header(tmp_path: Path, write, title_length: int) -> None:
    tensors = {"w": torch.randn(5, 3), "b": torch.randn(3, dtype=torch.float16)}
    path = tmp_path / "aligned.safetensors"
    write(tensors, path, {"modelspec.title": "t" * title_length})
    assert DATA_ALIGNMENT == 64
    assert _data_offset(path) % 64 == 0
    raw = path.read_bytes()[8 : _data_offset(path)]
    assert raw.rstrip(b" ").endswith(b"}")  # padded with spaces only, as the library pads
    loaded = load_file(str(path))
    assert all(torch.equal(loaded[key], tensor) for key, tensor in tensors.items())
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"modelspec.title": "t" * title_length}
