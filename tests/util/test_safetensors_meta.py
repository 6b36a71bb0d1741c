from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
import torch

from onetrainer.util.atomic import save_safetensors
from onetrainer.util.errors import UserError
from onetrainer.util.safetensors_meta import (
    HeaderError,
    modelspec_architecture,
    modelspec_metadata,
    read_safetensors_header,
    ss_metadata,
)


@pytest.mark.parametrize(
    ("family", "v", "adapter", "expected"),
    [
        ("sd15", False, None, "stable-diffusion-v1"),
        ("sd2", False, None, "stable-diffusion-v2-512"),
        ("sd2", True, None, "stable-diffusion-v2-768-v"),
        ("sdxl", False, None, "stable-diffusion-xl-v1-base"),
        ("sd15", False, "lora", "stable-diffusion-v1/lora"),
        ("sdxl", False, "embedding", "stable-diffusion-xl-v1-base/textual-inversion"),
    ],
)
def test_architecture_strings(family: str, v: bool, adapter: str | None, expected: str) -> None:
    assert modelspec_architecture(family, v_prediction=v, adapter=adapter) == expected


def test_modelspec_holds_the_required_keys_and_strings_only() -> None:
    date = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    meta = modelspec_metadata(
        family="sd2",
        title="cats",
        v_prediction=True,
        adapter="lora",
        date=date,
        trigger_phrase="a cat",
        author=None,
    )
    assert meta == {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v2-768-v/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": "cats",
        "modelspec.resolution": "768x768",
        "modelspec.date": "2025-01-02T03:04:05+00:00",
        "modelspec.prediction_type": "v",
        "modelspec.trigger_phrase": "a cat",
    }


def test_checkpoints_name_stability_ai_as_implementation() -> None:
    meta = modelspec_metadata(family="sd15", title="t", resolution=(640, 512), description="d")
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert meta["modelspec.resolution"] == "640x512"
    assert meta["modelspec.prediction_type"] == "epsilon"
    assert meta["modelspec.description"] == "d"


def test_ss_keys_follow_sd_scripts_formatting() -> None:
    meta = ss_metadata(
        family="sd2",
        v_prediction=True,
        network_module="networks.lora",
        network_dim=16,
        network_alpha=8.0,
        network_args={"conv_dim": 4},
        resolution=(768, 768),
        tag_frequency={"cats": {"cat": 3}},
        seed=None,
    )
    assert meta == {
        "ss_base_model_version": "sd_v2_v",
        "ss_v2": "True",
        "ss_network_module": "networks.lora",
        "ss_network_dim": "16",
        "ss_network_alpha": "8.0",
        "ss_network_args": '{"conv_dim": 4}',
        "ss_resolution": "(768, 768)",
        "ss_tag_frequency": '{"cats": {"cat": 3}}',
    }
    assert ss_metadata(family="sdxl")["ss_base_model_version"].startswith("sdxl_")


def test_unknown_ss_key_is_refused() -> None:
    with pytest.raises(UserError, match="network_dimm"):
        ss_metadata(family="sd15", network_dimm=4)


def test_header_matches_safetensors_and_metadata_survives(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    tensors = {"a": torch.zeros(2, 3, dtype=torch.float16), "b": torch.zeros((), dtype=torch.float32)}
    meta = modelspec_metadata(family="sd15", title="x")
    save_safetensors(tensors, path, meta)
    metadata, header = read_safetensors_header(path)
    assert metadata == meta
    assert header == {"a": ("F16", (2, 3)), "b": ("F32", ())}


def test_header_is_read_without_touching_tensor_data(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    save_safetensors({"w": torch.zeros(1024, 1024)}, path)
    length = int.from_bytes(path.read_bytes()[:8], "little")
    os.truncate(path, 8 + length)  # the 4 MB of data are gone; the header alone must suffice
    assert read_safetensors_header(path)[1] == {"w": ("F32", (1024, 1024))}


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x05\x00",
        (10**9).to_bytes(8, "little") + b"{}",
        (2).to_bytes(8, "little") + b"\xff\xfe",
        b"\x02" + bytes(7) + b"[]",
    ],
)
def test_broken_files_raise_a_header_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(HeaderError):
        read_safetensors_header(path)
