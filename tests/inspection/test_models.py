"""`inspect` on full models: diffusers folders, our single files, pickled checkpoints, huge headers."""

from __future__ import annotations

import json
import math
import struct
import time
from pathlib import Path

import pytest

from onetrainer.inspection.dispatch import inspect_path
from onetrainer.util.family import find_family


def _parameters(folder: Path) -> int:
    """Counted independently of the header reader under test: through safetensors' own API."""
    from safetensors import safe_open

    with safe_open(str(next(folder.glob("*.safetensors"))), framework="numpy") as handle:
        return sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())  # noqa: SIM118


def test_diffusers_folder_lists_components_with_parameter_counts(tiny_sd15_dir: Path) -> None:
    result = inspect_path(tiny_sd15_dir)

    assert (result.kind, result.format, result.model_type) == ("model", "diffusers", "sd15")
    components = result.details["components"]
    assert set(components) == {"scheduler", "text_encoder", "tokenizer", "unet", "vae"}
    for name in ("unet", "vae", "text_encoder"):
        assert components[name]["parameters"] == _parameters(tiny_sd15_dir / name)
        assert components[name]["dtype"] == "float32"
    assert components["scheduler"] == {"class": "diffusers.DDPMScheduler"}
    assert result.details["prediction_type"] == "epsilon"


def test_sdxl_folder_has_two_text_encoders(tiny_sdxl_dir: Path) -> None:
    result = inspect_path(tiny_sdxl_dir)

    assert {"text_encoder", "text_encoder_2", "tokenizer_2"} <= set(result.details["components"])
    if find_family("sdxl") is None:  # a pipeline of no registered family is still described, family unknown
        assert result.model_type is None
        assert result.summary.startswith("unknown-family model")
        assert "StableDiffusionXLPipeline" in result.details["detected_by"]
    else:
        assert result.model_type == "sdxl"


def test_single_file_components_match_the_folder(single_file: Path, tiny_sd15_dir: Path) -> None:
    result = inspect_path(single_file)

    assert (result.kind, result.format, result.model_type) == ("model", "single-file", "sd15")
    components = result.details["components"]
    assert list(components) == ["unet", "vae", "text_encoder"]
    for name in ("unet", "vae"):
        assert components[name]["parameters"] == _parameters(tiny_sd15_dir / name)
    assert result.details["in_channels"] == 4
    metadata = result.details["metadata"]
    assert metadata["modelspec"]["architecture"] == "stable-diffusion-v1"
    assert metadata["kohya"]["ss_base_model_version"] == "sd_v1"
    assert "version" in metadata["onetrainer"]


def test_ckpt_pickle_is_read_weights_only(single_file: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    target = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(single_file), "global_step": 7}, target)

    result = inspect_path(target)

    assert (result.kind, result.format, result.model_type) == ("model", "ckpt", "sd15")
    assert result.details["components"] == {
        name: {**component, "dtype": "float32"}
        for name, component in inspect_path(single_file).details["components"].items()
    }
    assert result.details["metadata"]["other"]["global_step"] == "7"


def test_a_multi_gigabyte_file_is_described_from_its_header(tmp_path: Path) -> None:
    """A sparse 4 GiB single file: only the header is read, so this takes milliseconds."""
    width = 32768
    header = {
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": {
            "dtype": "F16",
            "shape": [320, 768],
            "data_offsets": [0, 320 * 768 * 2],
        },
        "model.diffusion_model.out.2.weight": {
            "dtype": "F16",
            "shape": [width, width],
            "data_offsets": [320 * 768 * 2, 320 * 768 * 2 + width * width * 2],
        },
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": {
            "dtype": "F16",
            "shape": [768],
            "data_offsets": [320 * 768 * 2 + width * width * 2, 320 * 768 * 2 + width * width * 2 + 768 * 2],
        },
    }
    encoded = json.dumps(header).encode()
    path = tmp_path / "huge.safetensors"
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)) + encoded)
        handle.truncate(8 + len(encoded) + max(entry["data_offsets"][1] for entry in header.values()))
    assert path.stat().st_size > 2**31

    start = time.perf_counter()
    result = inspect_path(path)
    elapsed = time.perf_counter() - start

    assert elapsed < 0.5
    assert result.model_type == "sd15"
    assert result.details["components"]["unet"]["parameters"] == 320 * 768 + width * width
    assert result.details["components"]["unet"]["dtype"] == "float16"


@pytest.mark.parametrize("name", ["model.safetensors", "model.ckpt"])
def test_corrupt_weights_are_a_user_error_saying_what_was_seen(tmp_path: Path, name: str) -> None:
    from onetrainer.util.errors import UserError

    path = tmp_path / name
    path.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(UserError) as caught:
        inspect_path(path)
    assert "Recognised: a 90 B file" in (caught.value.hint or "")
