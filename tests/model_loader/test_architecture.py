"""Architecture sources for single files: the shipped configs, folders, hub ids and tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onetrainer.model.configs import config_dir, shipped_configs
from onetrainer.model_loader.architecture import resolve_architecture
from onetrainer.util.errors import UserError
from onetrainer.util.family import families, get_family

SD15, SD2 = get_family("sd15"), get_family("sd2")

# Parameter counts of the released models (UNet, VAE, text encoder); SD 2.x uses 23 of OpenCLIP-H's
# 24 text layers, as its diffusers text encoder does.
RELEASED_SIZES = {
    ("sd15", "epsilon"): (859_520_964, 83_653_863, 123_060_480),
    ("sd2", "epsilon"): (865_910_724, 83_653_863, 340_387_840),
    ("sd2", "v_prediction"): (865_910_724, 83_653_863, 340_387_840),
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


@pytest.mark.parametrize(("model_type", "prediction"), list(RELEASED_SIZES))
def test_shipped_configs_build_the_released_architectures(model_type: str, prediction: str) -> None:
    architecture = resolve_architecture(None, get_family(model_type), prediction)
    assert _parameters(architecture.configs) == RELEASED_SIZES[(model_type, prediction)]
    scheduler = architecture.configs["scheduler"]
    assert scheduler["prediction_type"] == prediction
    assert (scheduler["beta_start"], scheduler["beta_end"], scheduler["beta_schedule"]) == (
        0.00085,
        0.012,
        "scaled_linear",
    )


# FLUX.1's released parameter counts: transformer (dev has the guidance embedder), CLIP-L, T5-XXL encoder, VAE.
FLUX_SIZES = {
    "flux-dev": (11_901_408_320, 123_060_480, 4_762_310_656, 83_819_683),
    "flux-schnell": (11_891_178_560, 123_060_480, 4_762_310_656, 83_819_683),
}


@pytest.mark.parametrize("model_type", list(FLUX_SIZES))
def test_shipped_flux_configs_build_the_released_architectures(model_type: str) -> None:
    """The memory estimate of a FLUX.1 run names a hub id, which it does not read: it builds these."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    configs = resolve_architecture(None, get_family(model_type), None).configs
    with torch.device("meta"):
        modules = (
            FluxTransformer2DModel.from_config(configs["transformer"]),
            CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"])),
            T5EncoderModel(T5Config.from_dict(configs["text_encoder_2"])),
            AutoencoderKL.from_config(configs["vae"]),
        )
    assert tuple(sum(p.numel() for p in module.parameters()) for module in modules) == FLUX_SIZES[model_type]
    scheduler = configs["scheduler"]
    assert scheduler["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    assert scheduler["use_dynamic_shifting"] is (model_type == "flux-dev")


def test_sd2_variants_differ_in_resolution_and_attention_upcast() -> None:
    base = resolve_architecture(None, SD2, "epsilon").configs["unet"]
    v768 = resolve_architecture(None, SD2, "v_prediction").configs["unet"]
    assert resolve_architecture(None, SD2, None).configs["unet"] == v768  # an unmarked 2.x file is 768-v
    assert (base["sample_size"], v768["sample_size"]) == (64, 96)
    assert (base["upcast_attention"], v768["upcast_attention"]) == (False, True)


def test_shipped_folders_hold_configs_only() -> None:
    """Each shipped folder is one family's: a config per component of its spec, the scheduler's, no weights."""
    owners = {
        name: spec
        for spec in families()
        for name in (spec.shipped_config, *(variant.shipped_config for variant in spec.variants.values()))
        if name
    }
    assert set(owners) == set(shipped_configs())
    for variant, spec in owners.items():
        files = {p.relative_to(config_dir(variant)).as_posix() for p in config_dir(variant).rglob("*") if p.is_file()}
        assert files == {
            "model_index.json",
            "scheduler/scheduler_config.json",
            *(f"{name}/config.json" for name in spec.component_names),
        }, variant


def test_folder_and_tiny_sources(tiny_sd15_dir: Path) -> None:
    folder = resolve_architecture(str(tiny_sd15_dir), SD15, None)
    assert folder.configs["unet"]["block_out_channels"] == [32, 64]
    assert folder.tokenizer_at == (str(tiny_sd15_dir), "tokenizer")
    tiny = resolve_architecture("tiny:sd2-v", SD2, "v_prediction")
    assert tiny.configs["scheduler"]["prediction_type"] == "v_prediction"


def test_a_file_or_an_incomplete_folder_is_not_an_architecture(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x")
    with pytest.raises(UserError, match="not a file"):
        resolve_architecture(str(file), SD15, None)
    with pytest.raises(UserError, match=r"has no unet/config\.json"):
        resolve_architecture(str(tmp_path), SD15, None)


def test_uncached_hub_config_offline_is_explained() -> None:
    with pytest.raises(UserError, match="not in the Hugging Face cache") as caught:
        resolve_architecture("onetrainer-test/no-such-model", SD15, None)
    assert caught.value.where == "model.config"


@pytest.mark.parametrize("spec", families(), ids=lambda spec: spec.name)
def test_the_released_denoiser_takes_the_familys_latents_through_its_input_layer(spec) -> None:
    """What tells a text-to-image file from an inpainting one: a patchifying linear layer (FLUX.1's 64 inputs)
    takes as many latent channels as a convolution (SD 3's 16, a UNet's 4)."""
    from onetrainer.model_loader.single_file import build_module, empty_weights

    architecture = resolve_architecture(None, spec, None)
    with empty_weights():
        denoiser = build_module(*architecture.classes[spec.denoiser.name], architecture.configs[spec.denoiser.name])
    layer = spec.denoiser.input_layer
    assert layer is not None
    assert spec.input_channels(tuple(denoiser.state_dict()[layer].shape)) == spec.latent_channels
