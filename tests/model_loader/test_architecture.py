"""Architecture sources for single files: the shipped configs, folders, hub ids and tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onetrainer.model.configs import VARIANTS, config_dir
from onetrainer.model_loader.architecture import resolve_architecture
from onetrainer.util.enums import ModelType
from onetrainer.util.errors import UserError

# Parameter counts of the released models (UNet, VAE, text encoder); SD 2.x uses 23 of OpenCLIP-H's
# 24 text layers, as its diffusers text encoder does.
RELEASED_SIZES = {
    (ModelType.SD15, False): (859_520_964, 83_653_863, 123_060_480),
    (ModelType.SD2, False): (865_910_724, 83_653_863, 340_387_840),
    (ModelType.SD2, True): (865_910_724, 83_653_863, 340_387_840),
}


def _parameters(configs: dict) -> tuple[int, int, int]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        modules = (
            UNet2DConditionModel.from_config(configs["unet"]),
            AutoencoderKL.from_config(configs["vae"]),
            CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"])),
        )
    return tuple(sum(p.numel() for p in module.parameters()) for module in modules)


@pytest.mark.parametrize(("model_type", "v_prediction"), list(RELEASED_SIZES))
def test_shipped_configs_build_the_released_architectures(model_type: ModelType, v_prediction: bool) -> None:
    architecture = resolve_architecture(None, model_type, v_prediction=v_prediction)
    assert _parameters(architecture.configs) == RELEASED_SIZES[(model_type, v_prediction)]
    scheduler = architecture.configs["scheduler"]
    assert scheduler["prediction_type"] == ("v_prediction" if v_prediction else "epsilon")
    assert (scheduler["beta_start"], scheduler["beta_end"], scheduler["beta_schedule"]) == (
        0.00085,
        0.012,
        "scaled_linear",
    )


def test_sd2_variants_differ_in_resolution_and_attention_upcast() -> None:
    base = resolve_architecture(None, ModelType.SD2, v_prediction=False).configs["unet"]
    v768 = resolve_architecture(None, ModelType.SD2, v_prediction=True).configs["unet"]
    assert (base["sample_size"], v768["sample_size"]) == (64, 96)
    assert (base["upcast_attention"], v768["upcast_attention"]) == (False, True)


def test_shipped_folders_hold_configs_only() -> None:
    for variant in VARIANTS:
        files = {p.relative_to(config_dir(variant)).as_posix() for p in config_dir(variant).rglob("*") if p.is_file()}
        assert files == {
            "model_index.json",
            "unet/config.json",
            "vae/config.json",
            "text_encoder/config.json",
            "scheduler/scheduler_config.json",
        }


def test_folder_and_tiny_sources(tiny_sd15_dir: Path) -> None:
    folder = resolve_architecture(str(tiny_sd15_dir), ModelType.SD15, v_prediction=False)
    assert folder.configs["unet"]["block_out_channels"] == [32, 64]
    assert folder.tokenizer_at == (str(tiny_sd15_dir), "tokenizer")
    tiny = resolve_architecture("tiny:sd2-v", ModelType.SD2, v_prediction=True)
    assert tiny.configs["scheduler"]["prediction_type"] == "v_prediction"


def test_a_file_or_an_incomplete_folder_is_not_an_architecture(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x")
    with pytest.raises(UserError, match="not a file"):
        resolve_architecture(str(file), ModelType.SD15, v_prediction=False)
    with pytest.raises(UserError, match=r"has no unet/config\.json"):
        resolve_architecture(str(tmp_path), ModelType.SD15, v_prediction=False)


def test_uncached_hub_config_offline_is_explained() -> None:
    with pytest.raises(UserError, match="not in the Hugging Face cache") as caught:
        resolve_architecture("onetrainer-test/no-such-model", ModelType.SD15, v_prediction=False)
    assert caught.value.where == "model.config"
