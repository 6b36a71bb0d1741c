"""The SDXL family (SDXL 1.0 base and the models fine-tuned from it): its spec, the one place its facts live.

A UNet2DConditionModel conditioned on two text encoders, CLIP ViT-L and OpenCLIP ViT-bigG (with the
projection that makes its pooled output), whose penultimate hidden states are concatenated along the
width; the bigG pooled output and six size numbers (original size, crop top-left, target size) enter
through the UNet's `add_embedding` ("micro-conditioning"). A 4-channel VAE with an 8x downscale
(which overflows in fp16), a DDPM schedule with epsilon prediction, about one megapixel per image in
buckets of 64 px. Its original files use Stability's SGM layout, and sd-scripts names its LoRAs after
the SGM modules; A1111 embeddings hold one tensor per encoder (`clip_l`, `clip_g`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from onetrainer.model.adapters.targets import UNET_ONETRAINER_PRESETS, UNET_PRESETS
from onetrainer.model.blocks import UNET_BLOCKS
from onetrainer.model.text_encoders import CLIP_G, CLIP_L, OPENCLIP_FUSED_ATTENTION
from onetrainer.util.family import (
    Component,
    Evidence,
    FamilySpec,
    Objective,
    Recognisers,
    Role,
    Shapes,
    TinyModel,
    register_family,
)
from onetrainer.util.keymaps.sdxl_lora import LORA_NAMING
from onetrainer.util.keymaps.sdxl_single_file import BIGG_PREFIX, SDXL_LAYOUT

UNET = "model.diffusion_model."
REFINER_TEXT = "conditioner.embedders.0.model."
"""The refiner's only text encoder (OpenCLIP bigG, first embedder): a different model, not supported yet."""
REFINER_ADM_WIDTH = 2560
"""The refiner's size-conditioning input (5 numbers x 256 + 1280), where the base takes 2816."""
CONTEXT_WIDTH = 2048
"""The released UNet's cross-attention width (CLIP-L and bigG hidden states joined)."""

COMPONENTS = (
    Component(
        "unet",
        Role.DENOISER,
        "UNet",
        trains_by_default=True,
        kohya_prefix="lora_unet_",
        lora_presets=UNET_PRESETS,
        blocks=UNET_BLOCKS,
        lora_kohya_only="ComfyUI",
        input_layer="conv_in.weight",
    ),
    CLIP_L,
    dataclasses.replace(CLIP_G, lora_all_or_none=OPENCLIP_FUSED_ATTENTION),  # A1111 runs bigG as OpenCLIP
    Component("vae", Role.VAE, "VAE"),
)


def recognise_single_file(shapes: Shapes) -> Evidence | None:
    """An SGM checkpoint: OpenCLIP bigG as the second embedder, or a UNet with the base's size conditioning."""
    prediction = "v_prediction" if "v_pred" in shapes else None
    if any(key.startswith(REFINER_TEXT) for key in shapes):
        return None
    if any(key.startswith(BIGG_PREFIX) for key in shapes):
        return Evidence("sdxl", "OpenCLIP bigG text encoder under conditioner.embedders.1", prediction)
    label = shapes.get(UNET + "label_emb.0.0.weight")
    if label is not None and (len(label) < 2 or label[1] != REFINER_ADM_WIDTH):
        return Evidence("sdxl", "UNet with size conditioning (label_emb)", prediction)
    return None


def recognise_configs(configs: Mapping[str, Mapping[str, Any]]) -> Evidence | None:
    unet = configs.get("unet", {})
    if unet.get("addition_embed_type") != "text_time":
        return None
    return Evidence("sdxl", "UNet with text_time size conditioning")


SGM_UNET_NAMES = (
    "lora_unet_input_blocks_",
    "lora_unet_middle_block_",
    "lora_unet_output_blocks_",
    "lora_unet_label_emb_",
)


NOT_SDXL = (
    "lora_te3_",
    "text_encoder_3.",
    "lora_transformer_",
    "transformer.",
    "lora_unet_double_blocks_",
    "lora_unet_single_blocks_",
    "lora_te2_encoder_block_",
)
"""A third text encoder or a transformer denoiser: a family with more encoders than SDXL's two (SD 3, FLUX.1's
CLIP and T5 under te1 / te3, or te1 / te2 in OneTrainer's names: T5's `encoder_block_`, where SDXL's second
encoder is `text_model_`), whose LoRAs share SDXL's encoder prefixes and `transformer_blocks` names."""


def recognise_lora(shapes: Shapes) -> Evidence | None:
    """A second text encoder (`lora_te2_` / `text_encoder_2.`), or UNet modules under SGM names, or UNet
    attention deeper than one transformer block, or SDXL's cross-attention width; never with a third encoder or
    a transformer. `lora_te1_` alone says nothing: diffusers' kohya converter names SD 1.x's encoder so too."""
    keys = list(shapes)
    if any(key.startswith(NOT_SDXL) for key in keys):
        return None
    if any(key.startswith(("lora_te2_", "text_encoder_2.")) for key in keys):
        return Evidence("sdxl", "LoRA for two text encoders")
    if any(key.startswith(SGM_UNET_NAMES) for key in keys):
        return Evidence("sdxl", "UNet modules under the original SGM names")
    if any(".transformer_blocks.1." in key or "_transformer_blocks_1_" in key for key in keys):
        return Evidence("sdxl", "attention blocks deeper than one transformer block")
    if any(
        ("attn2_to_k" in key or "attn2.to_k" in key) and _is_down(key) and shape[1:2] == (CONTEXT_WIDTH,)
        for key, shape in shapes.items()
    ):
        return Evidence("sdxl", f"cross-attention width {CONTEXT_WIDTH}")
    return None


def _is_down(key: str) -> bool:
    return key.endswith((".lora_down.weight", ".lora_A.weight", ".hada_w1_b", ".hada_w2_b"))


def recognise_embedding(shapes: Shapes) -> Evidence | None:
    if set(shapes) == {"clip_l", "clip_g"}:
        return Evidence("sdxl", "clip_l and clip_g vectors")
    return None


def _tiny(seed: int) -> object:
    from onetrainer.util.tiny.models import build_tiny_sdxl_pipeline

    return build_tiny_sdxl_pipeline(seed)


SDXL = register_family(
    FamilySpec(
        name="sdxl",
        title="SDXL",
        components=COMPONENTS,
        objective=Objective.DDPM,
        latent_channels=4,
        bucket_step=64,
        patch_size=1,
        default_resolution=1024,
        methods=frozenset({"lora", "full", "embedding"}),
        modelspec_architecture="stable-diffusion-xl-v1-base",
        kohya_base_model_version="sdxl_base_v1-0",
        onetrainer_model_types=("STABLE_DIFFUSION_XL_10_BASE",),
        onetrainer_layer_presets=UNET_ONETRAINER_PRESETS,
        onetrainer_sample_defaults={"width": 1024, "height": 1024, "cfg_scale": 7.5, "noise_scheduler": "EULER_A"},
        pipeline_classes=("StableDiffusionXLPipeline",),
        recognise=Recognisers(
            single_file=recognise_single_file,
            configs=recognise_configs,
            lora=recognise_lora,
            embedding=recognise_embedding,
        ),
        lora_naming=LORA_NAMING,
        single_file=SDXL_LAYOUT,
        shipped_config="sdxl",
        tiny={"sdxl": TinyModel(_tiny, "tiny random-weight SDXL (two text encoders, size conditioning)")},
        hub_ids=("stabilityai/stable-diffusion-xl-base-1.0",),
    )
)
