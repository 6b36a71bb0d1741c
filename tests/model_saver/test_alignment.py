"""Every safetensors file a saver writes starts its tensor data on a 64-byte boundary.

Where the data starts used to follow the header's length (the title, the embedded config): on
AVX-512 CPUs that changed the last bits of a loaded model's outputs (issue 11, item 0).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from onetrainer.model.adapters.embedding import add_embedding
from onetrainer.model_loader.pipeline import load_model
from onetrainer.model_saver.diffusion import DiffusionSaver
from onetrainer.util.enums import TrainingMethod


def _data_offsets(root: Path) -> dict[str, int]:
    files = sorted(root.rglob("*.safetensors"))
    assert files
    return {str(path.relative_to(root)): 8 + int.from_bytes(path.read_bytes()[:8], "little") for path in files}


@pytest.mark.parametrize(("method", "fmt"), [("lora", "kohya"), ("lora", "peft"), ("dora", "kohya")])
@pytest.mark.parametrize("title", ["a", "a-longer-title-of-another-length"])
def test_lora_files_are_aligned(lora_model: Callable, tmp_path: Path, method: str, fmt: str, title: str) -> None:
    DiffusionSaver().save(lora_model(method), tmp_path / f"{title}.safetensors", method=TrainingMethod.LORA, format=fmt)
    assert all(offset % 64 == 0 for offset in _data_offsets(tmp_path).values()), _data_offsets(tmp_path)


@pytest.mark.parametrize("fmt", ["a1111", "diffusers"])
def test_embedding_files_are_aligned(tiny_sd15_dir: Path, tmp_path: Path, fmt: str) -> None:
    model = load_model(tiny_sd15_dir)
    model.adapters.embeddings = [add_embedding(model, "<x>", vectors={"text_encoder": torch.randn(3, 32)})]
    DiffusionSaver().save(model, tmp_path / "x.safetensors", method=TrainingMethod.EMBEDDING, format=fmt)
    assert all(offset % 64 == 0 for offset in _data_offsets(tmp_path).values()), _data_offsets(tmp_path)


@pytest.mark.parametrize("output", ["model.safetensors", "pipeline"])
def test_full_model_files_are_aligned(tmp_path: Path, output: str) -> None:
    DiffusionSaver().save(load_model("tiny:sd15"), tmp_path / output, method=TrainingMethod.FULL)
    offsets = _data_offsets(tmp_path)
    assert len(offsets) == (1 if output.endswith(".safetensors") else 3)
    assert all(offset % 64 == 0 for offset in offsets.values()), offsets


def test_a_single_files_tensors_are_read_into_aligned_memory(tmp_path: Path) -> None:
    """safetensors packs tensors without gaps, so a mapped file's tensors after odd-sized ones lie off the
    boundary (SD 3's bigG projection follows CLIP-L's); the reader copies those, so a model read from its
    single file computes the very bits of the model that wrote it."""
    model = load_model("tiny:sd35-large")
    path = DiffusionSaver().save(model, tmp_path / "model.safetensors", method=TrainingMethod.FULL, dtype="fp32")[0]
    header = json.loads(path.read_bytes()[8 : _data_offsets(tmp_path)["model.safetensors"]])
    assert any(entry["data_offsets"][0] % 64 for key, entry in header.items() if key != "__metadata__")
    loaded = load_model(path, config="tiny:sd35-large")
    tensors = [(f"{name}.{key}", t) for name, module in loaded.modules() for key, t in module.state_dict().items()]
    assert [key for key, tensor in tensors if tensor.data_ptr() % 64] == []
