"""diffusers <-> SDXL's original (SGM) single-file layout: round trips, real key names, what is ignored."""

from __future__ import annotations

import pytest
import torch

from onetrainer.model_loader.architecture import resolve_architecture
from onetrainer.util.family import get_family
from onetrainer.util.keymaps.sdxl_single_file import SDXL_LAYOUT
from onetrainer.util.tiny.models import build_tiny_sdxl_pipeline

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def _diffusers_state(pipe: object) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value for name in COMPONENTS for key, value in getattr(pipe, name).state_dict().items()}


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return _diffusers_state(build_tiny_sdxl_pipeline())


@pytest.fixture(scope="module")
def released_keys() -> list[str]:
    """Every diffusers key of stable-diffusion-xl-base-1.0, from the shipped architecture on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = resolve_architecture(None, get_family("sdxl"), None).configs
    with torch.device("meta"):
        modules = {
            "unet": UNet2DConditionModel.from_config(configs["unet"]),
            "vae": AutoencoderKL.from_config(configs["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"])),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig.from_dict(configs["text_encoder_2"])),
        }
    return [f"{name}.{key}" for name, module in modules.items() for key in module.state_dict()]


def test_tiny_pipeline_round_trips_exactly(tiny_state: dict[str, torch.Tensor]) -> None:
    single = SDXL_LAYOUT.writer(tiny_state).convert(tiny_state)
    prefixes = ("model.diffusion_model.", "first_stage_model.", "conditioner.embedders.")
    assert all(key.startswith(prefixes) for key in single)
    back = SDXL_LAYOUT.reader(single).convert(single)
    assert set(back) == set(tiny_state)
    assert all(torch.equal(back[key], tiny_state[key]) for key in tiny_state)


def test_open_clip_tower_is_fused_and_its_projection_transposed(tiny_state: dict[str, torch.Tensor]) -> None:
    single = SDXL_LAYOUT.writer(tiny_state).convert(tiny_state)
    prefix = "conditioner.embedders.1.model."
    q, k, v = (tiny_state[f"text_encoder_2.text_model.encoder.layers.0.self_attn.{p}_proj.weight"] for p in "qkv")
    assert torch.equal(single[prefix + "transformer.resblocks.0.attn.in_proj_weight"], torch.cat([q, k, v]))
    assert torch.equal(single[prefix + "text_projection"], tiny_state["text_encoder_2.text_projection.weight"].T)
    assert prefix + "positional_embedding" in single


# Key names of stable-diffusion-xl-base-1.0's original checkpoint, one per kind of module.
RELEASED_SGM_KEYS = [
    "model.diffusion_model.input_blocks.0.0.weight",
    "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
    "model.diffusion_model.input_blocks.3.0.op.weight",
    "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight",
    "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.ff.net.0.proj.weight",
    "model.diffusion_model.middle_block.1.transformer_blocks.9.attn2.to_k.weight",
    "model.diffusion_model.middle_block.2.emb_layers.1.weight",
    "model.diffusion_model.output_blocks.2.2.conv.weight",
    "model.diffusion_model.output_blocks.5.2.conv.weight",
    "model.diffusion_model.output_blocks.8.0.skip_connection.weight",
    "model.diffusion_model.label_emb.0.0.weight",
    "model.diffusion_model.label_emb.0.2.weight",
    "model.diffusion_model.time_embed.2.weight",
    "model.diffusion_model.out.2.weight",
    "first_stage_model.decoder.up.0.block.2.conv2.weight",
    "first_stage_model.encoder.mid.attn_1.q.weight",
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
    "conditioner.embedders.0.transformer.text_model.encoder.layers.11.self_attn.q_proj.weight",
    "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
    "conditioner.embedders.1.model.token_embedding.weight",
    "conditioner.embedders.1.model.positional_embedding",
    "conditioner.embedders.1.model.text_projection",
    "conditioner.embedders.1.model.ln_final.weight",
    "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight",
    "conditioner.embedders.1.model.transformer.resblocks.31.mlp.c_proj.bias",
]


def test_released_model_gets_the_original_key_names(released_keys: list[str]) -> None:
    writer = SDXL_LAYOUT.writer(released_keys)
    written = {name for key in released_keys if (name := writer.table.map_key(key)) is not None}
    assert all(writer.table.map_key(key) is not None for key in released_keys if "position_ids" not in key)
    assert set(RELEASED_SGM_KEYS) <= written
    assert not any(key.startswith("model.diffusion_model.output_blocks.8.2") for key in written), "no last upsampler"


def test_reader_drops_what_real_files_carry_besides_the_weights(tiny_state: dict[str, torch.Tensor]) -> None:
    single = SDXL_LAYOUT.writer(tiny_state).convert(tiny_state)
    extras = {
        "conditioner.embedders.0.transformer.text_model.embeddings.position_ids": torch.arange(77)[None],
        "conditioner.embedders.1.model.logit_scale": torch.tensor(4.6052),
        "denoiser.sigmas": torch.ones(1000),
        "alphas_cumprod": torch.ones(1000),
        "model_ema.decay": torch.tensor(0.999),
        "ztsnr": torch.empty(0),
    }
    reader = SDXL_LAYOUT.reader([*single, *extras])
    back = reader.convert({**single, **extras})
    assert set(back) == set(tiny_state)
    assert set(reader.ignored) == set(extras)


def test_reader_keeps_only_the_encoder_layers_the_architecture_has(tiny_state: dict[str, torch.Tensor]) -> None:
    single = SDXL_LAYOUT.writer(tiny_state).convert(tiny_state)
    back = SDXL_LAYOUT.reader(single, text_encoder_layers={"text_encoder_2": 1}).convert(single)
    assert not any(key.startswith("text_encoder_2.text_model.encoder.layers.1.") for key in back)
    assert any(key.startswith("text_encoder.") and "encoder.layers.1." in key for key in back), "CLIP-L keeps its"


def test_markers_say_v_prediction_as_comfyui_reads_it() -> None:
    assert set(SDXL_LAYOUT.markers("v_prediction")) == {"v_pred"}
    assert SDXL_LAYOUT.markers("epsilon") == {}
