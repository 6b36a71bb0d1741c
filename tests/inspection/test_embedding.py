"""`inspect` on textual-inversion embeddings in the A1111, SDXL, diffusers and legacy pickle layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from onetrainer.inspection.dispatch import inspect_path
from onetrainer.util.family import find_family


def test_a1111_sd15_embedding(tmp_path: Path) -> None:
    save_file({"emb_params": torch.zeros(3, 768)}, tmp_path / "sks.safetensors")

    result = inspect_path(tmp_path / "sks.safetensors")

    assert (result.kind, result.format, result.model_type) == ("embedding", "a1111", "sd15")
    assert (result.details["vectors"], result.details["width"], result.details["fits"]) == (3, "768", "SD 1.x")


def test_sdxl_embedding_has_one_tensor_per_encoder(tmp_path: Path) -> None:
    if find_family("sdxl") is None:
        pytest.skip("the SDXL family is not registered in this build yet")
    save_file({"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)}, tmp_path / "xl.safetensors")

    result = inspect_path(tmp_path / "xl.safetensors")

    assert result.model_type == "sdxl"
    assert result.details["tensors"]["clip_g"] == {
        "encoder": "CLIP-G (bigG)",
        "vectors": 2,
        "width": 1280,
        "dtype": "float32",
    }
    assert result.details["width"] == "1280+768"


def test_diffusers_embedding_names_its_token(tmp_path: Path) -> None:
    save_file({"<my-cat>": torch.zeros(1, 1024, dtype=torch.float16)}, tmp_path / "learned_embeds.safetensors")

    result = inspect_path(tmp_path / "learned_embeds.safetensors")

    assert (result.format, result.model_type, result.details["token"]) == ("diffusers", "sd2", "<my-cat>")
    assert result.details["tensors"]["<my-cat>"]["dtype"] == "float16"


def test_legacy_a1111_pickle(tmp_path: Path) -> None:
    payload = {"string_to_param": {"*": torch.zeros(4, 768)}, "string_to_token": {"*": 265}, "name": "mytoken"}
    torch.save(payload, tmp_path / "mytoken.pt")

    result = inspect_path(tmp_path / "mytoken.pt")

    assert (result.kind, result.format, result.model_type) == ("embedding", "a1111-pt", "sd15")
    assert (result.details["token"], result.details["vectors"]) == ("mytoken", 4)


def test_embedding_of_unknown_width_does_not_guess(tmp_path: Path) -> None:
    save_file({"emb_params": torch.zeros(2, 32)}, tmp_path / "tiny.safetensors")

    result = inspect_path(tmp_path / "tiny.safetensors")

    assert result.model_type is None
    assert result.details["fits"] is None
    assert "undetermined" in result.summary
