"""Every safetensors file a saver writes starts its tensor data on a 64-byte boundary.

Where the data starts used to follow the header's length (the title, the embedded config): on
AVX-512 CPUs that changed the last bits of a loaded model's outputs (issue 11, item 0).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from onetrainer.model.adapters.embedding import add_embedding
from onetrainer.model_loader.stable_diffusion import load_stable_diffusion
from onetrainer.model_saver.stable_diffusion import StableDiffusionSaver
from onetrainer.util.enums import TrainingMethod


def _data_offsets(root: Path) -> dict[str, int]:
    files = sorted(root.rglob("*.safetensors"))
    assert files
    return {str(path.relative_to(root)): 8 + int.from_bytes(path.read_bytes()[:8], "little") for path in files}


@pytest.mark.parametrize(("method", "fmt"), [("lora", "kohya"), ("lora", "peft"), ("dora", "kohya")])
@pytest.mark.parametrize("title", ["a", "a-longer-title-of-another-length"])
def test_lora_files_are_aligned(lora_model: Callable, tmp_path: Path, method: str, fmt: str, title: str) -> None:
    StableDiffusionSaver().save(
        lora_model(method), tmp_path / f"{title}.safetensors", method=TrainingMethod.LORA, format=fmt
    )
    assert all(offset % 64 == 0 for offset in _data_offsets(tmp_path).values()), _data_offsets(tmp_path)


@pytest.mark.parametrize("fmt", ["a1111", "diffusers"])
def test_embedding_files_are_aligned(tiny_sd15_dir: Path, tmp_path: Path, fmt: str) -> None:
    model = load_stable_diffusion(tiny_sd15_dir)
    model.adapters["embeddings"] = [add_embedding(model, "<x>", vectors=torch.randn(3, 32))]
    StableDiffusionSaver().save(model, tmp_path / "x.safetensors", method=TrainingMethod.EMBEDDING, format=fmt)
    assert all(offset % 64 == 0 for offset in _data_offsets(tmp_path).values()), _data_offsets(tmp_path)


@pytest.mark.parametrize("output", ["model.safetensors", "pipeline"])
def test_full_model_files_are_aligned(tmp_path: Path, output: str) -> None:
    StableDiffusionSaver().save(load_stable_diffusion("tiny:sd15"), tmp_path / output, method=TrainingMethod.FULL)
    offsets = _data_offsets(tmp_path)
    assert len(offsets) == (1 if output.endswith(".safetensors") else 3)
    assert all(offset % 64 == 0 for offset in offsets.values()), offsets
