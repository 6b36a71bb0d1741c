"""`parse_model_type` and `source_model_type`: the family of a base model, named or detected."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onetrainer.model_loader.family import parse_model_type, source_model_type
from onetrainer.util.atomic import save_safetensors
from onetrainer.util.enums import ModelType
from onetrainer.util.errors import UserError


def test_parse_model_type_keeps_none_and_reads_names() -> None:
    assert parse_model_type(None) is None
    assert parse_model_type("sd2") is ModelType.SD2


def test_parse_model_type_suggests_the_closest_name() -> None:
    with pytest.raises(UserError, match="unknown model type 'sdx'; did you mean 'sdxl'"):
        parse_model_type("sdx")


def test_source_model_type_prefers_the_explicit_name() -> None:
    assert source_model_type("tiny:sd15", "sd2") is ModelType.SD2


def test_source_model_type_reads_tiny_names() -> None:
    assert source_model_type("tiny:sd2-v") is ModelType.SD2


def test_source_model_type_refuses_a_lora(tmp_path: Path) -> None:
    lora = tmp_path / "lora.safetensors"
    save_safetensors({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 768)}, lora)
    with pytest.raises(UserError, match="not a base model"):
        source_model_type(str(lora))
