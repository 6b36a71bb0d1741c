"""The FLUX.1 families (dev and schnell, and the models fine-tuned from them): their specs and options.

A rectified-flow transformer (diffusers' `FluxTransformer2DModel`: double-stream blocks that attend
over image and text tokens side by side, then single-stream blocks over both concatenated) conditioned
on T5-XXL's hidden states (the text tokens) and CLIP ViT-L's pooled output (added to the timestep
embedding). The 16-channel VAE downscales 8x and shifts then scales its latents; the transformer sees
them packed into 2x2 patches (64-wide tokens) with 3-axis position ids, so image sides are multiples
of 16 px. dev is guidance-distilled: its transformer takes the guidance scale as an input (trained
at 1.0 by default) and its schedule shifts by resolution; schnell is timestep-distilled (no guidance,
a fixed shift of 1). Both read up to 512 T5 tokens; schnell was distilled with 256.

Black Forest Labs ship the transformer alone as a single file (`double_blocks.*` / `single_blocks.*`
with fused q/k/v); ComfyUI users keep the text encoders and the VAE as files of their own, so a single
file loads with `model.config` naming a diffusers folder or hub id for the rest. kohya-style LoRAs use
the same BFL module names (`lora_unet_double_blocks_0_img_attn_qkv`); A1111-style embeddings hold
`clip_l` and `t5xxl` (the key ComfyUI's T5 tokenizer looks up).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from onetrainer.model.adapters.targets import T5_PRESETS
from onetrainer.model.text_encoders import CLIP_L, T5_EMBEDDING_KEYS
from onetrainer.util.config.base import Section
from onetrainer.util.family import (
    Component,
    Evidence,
    FamilySpec,
    Objective,
    OneTrainerLayerPreset,
    Recognisers,
    Role,
    Shapes,
    TinyModel,
    register_family,
)
from onetrainer.util.keymaps.flux_lora import LORA_NAMING
from onetrainer.util.keymaps.flux_single_file import COMFY_PREFIX, FLUX_LAYOUT

DEV, SCHNELL = "flux-dev", "flux-schnell"
CANDIDATES = (DEV, SCHNELL)
TITLES = {DEV: "FLUX.1-dev", SCHNELL: "FLUX.1-schnell"}
LATENT_CHANNELS = 16
PACKED_CHANNELS = LATENT_CHANNELS * 4
"""What the transformer's `x_embedder` reads: 16 channels x a 2x2 patch (Fill and Depth models read more)."""

TRANSFORMER_PRESETS: dict[str, tuple[str, ...]] = {
    "attn": (
        r"\.transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)$",
        r"\.single_transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v)$",
    ),
    "attn-mlp": (
        r"\.transformer_blocks\.\d+\.ff(_context)?\.net\.(0\.proj|2)$",
        r"\.single_transformer_blocks\.\d+\.(proj_mlp|proj_out)$",
    ),
    "full": (
        r"\.transformer_blocks\.\d+\.norm1(_context)?\.linear$",
        r"\.single_transformer_blocks\.\d+\.norm\.linear$",
    ),
}
"""diffusers' FluxTransformer2DModel, block by block: attention projections of both streams; the
feed-forward layers and the single blocks' MLP in / fused out projections; the adaptive-norm
modulation layers (kohya's default set: every linear layer inside the blocks)."""
ONETRAINER_PRESETS = {
    "attn-mlp": OneTrainerLayerPreset("attn,ff.net,proj_mlp"),
    "attn-only": OneTrainerLayerPreset("attn", same_as="attn"),
    "blocks": OneTrainerLayerPreset("transformer_block", same_as="full"),
}
"""OneTrainer's layer-filter presets of FLUX.1. Its attn-mlp leaves out the text stream's feed-forward layers
(`ff_context`) and the single blocks' fused out projections, which our attn-mlp adapts."""


class FluxDevOptions(Section):
    t5_max_length: int = Field(
        512, ge=1, le=512, description="T5 tokens read per caption (the rest is cut); FLUX.1-dev reads 512."
    )
    guidance: float = Field(
        1.0,
        ge=0,
        description="The guidance scale the transformer is given while training (the reference trainers use 1).",
    )
    true_cfg: float = Field(
        1.0,
        ge=1,
        description="Sampling: real classifier-free guidance with the negative prompt when above 1 (twice the "
        "compute); the prompt's cfg is the distilled guidance scale.",
    )


class FluxSchnellOptions(Section):
    t5_max_length: int = Field(
        256, ge=1, le=512, description="T5 tokens read per caption (the rest is cut); FLUX.1-schnell was made with 256."
    )
    true_cfg: float = Field(
        1.0,
        ge=1,
        description="Sampling: real classifier-free guidance with the negative prompt when above 1 "
        "(twice the compute).",
    )


TRANSFORMER_BLOCKS = (r"^\.transformer_blocks\.\d+$", r"^\.single_transformer_blocks\.\d+$")
"""The 19 double-stream and 38 single-stream blocks: the units diffusers' gradient checkpointing recomputes."""

COMPONENTS = (
    Component(
        "transformer",
        Role.DENOISER,
        "FLUX.1 transformer",
        trains_by_default=True,
        kohya_prefix="lora_unet_",
        lora_presets=TRANSFORMER_PRESETS,
        blocks=TRANSFORMER_BLOCKS,
        input_layer="x_embedder.weight",
    ),
    dataclasses.replace(CLIP_L, takes_layer_skip=False),  # (its pooled output only)
    Component(
        "text_encoder_2",
        Role.TEXT_ENCODER,
        "T5-XXL text encoder",
        tokenizer="tokenizer_2",
        kohya_prefix="lora_te3_",
        embedding_key=T5_EMBEDDING_KEYS[0],
        embedding_aliases=T5_EMBEDDING_KEYS[1:],
        lora_presets=T5_PRESETS,
        lora_kohya_only="ComfyUI",
        takes_layer_skip=False,
    ),
    Component("vae", Role.VAE, "VAE"),
)


def _unprefixed(shapes: Shapes) -> dict[str, tuple[int, ...]]:
    return {key.removeprefix(COMFY_PREFIX): shape for key, shape in shapes.items()}


def recognise_single_file(shapes: Shapes) -> Evidence | None:
    """A BFL transformer file (bare, or under ComfyUI's `model.diffusion_model.`): fused-qkv double blocks
    and `vector_in`; dev has `guidance_in`. FLUX.1 Fill / Depth (more input channels), Chroma (no
    `vector_in`) and FLUX.2 (other block names) are other architectures."""
    keys = _unprefixed(shapes)
    if "double_blocks.0.img_attn.qkv.weight" not in keys or "vector_in.in_layer.weight" not in keys:
        return None
    img_in = keys.get("img_in.weight")
    if img_in is not None and len(img_in) == 2 and img_in[1] != PACKED_CHANNELS:
        return None
    if "guidance_in.in_layer.weight" in keys:
        return Evidence(DEV, "BFL transformer with a guidance embedder (guidance_in)")
    return Evidence(SCHNELL, "BFL transformer without a guidance embedder")


def recognise_configs(configs: Mapping[str, Mapping[str, Any]]) -> Evidence | None:
    transformer = configs.get("transformer", {})
    if transformer.get("_class_name") not in (None, "FluxTransformer2DModel") or not transformer:
        return None
    if transformer.get("in_channels", PACKED_CHANNELS) != PACKED_CHANNELS:
        return None
    if transformer.get("guidance_embeds"):
        return Evidence(DEV, "transformer with guidance_embeds")
    return Evidence(SCHNELL, "transformer without guidance_embeds")


LORA_MARKERS = (
    "lora_unet_double_blocks_",
    "lora_unet_single_blocks_",
    "lora_transformer_transformer_blocks_",
    "lora_transformer_single_transformer_blocks_",
    "transformer.transformer_blocks.",
    "transformer.single_transformer_blocks.",
    "lora_te2_encoder_block_",
    "lycoris_transformer_blocks_",
    "lycoris_single_transformer_blocks_",
)
"""Block names, not bare prefixes: `lora_transformer_` is kohya's prefix of any diffusers transformer (`lycoris_`
SimpleTuner's). T5 under `lora_te2_` is OneTrainer's name of FLUX.1's second encoder (SD 3's second is CLIP-G,
SDXL's `text_model_`)."""
GUIDANCE_MARKERS = (
    "lora_unet_guidance_in_",
    "transformer.time_text_embed.guidance_embedder.",
    "lora_transformer_time_text_embed_guidance_embedder_",
    "lycoris_time_text_embed_guidance_embedder_",
)


def recognise_lora(shapes: Shapes) -> Evidence | None:
    """BFL module names (kohya / sd-scripts), or diffusers' Flux transformer blocks (kohya-style or as paths);
    dev and schnell share them, unless the guidance embedder is adapted (dev only)."""
    keys = list(shapes)
    if any(key.startswith(GUIDANCE_MARKERS) for key in keys):
        return Evidence(DEV, "FLUX.1 LoRA adapting the guidance embedder")
    if not any(key.startswith(LORA_MARKERS) for key in keys):
        return None
    return Evidence(None, "FLUX.1 LoRA (dev and schnell share its layout)", candidates=CANDIDATES)


def recognise_embedding(shapes: Shapes) -> Evidence | None:
    for t5 in T5_EMBEDDING_KEYS:
        if set(shapes) == {"clip_l", t5}:
            return Evidence(None, f"clip_l and {t5} vectors", candidates=CANDIDATES)
    return None


RECOGNISERS = Recognisers(
    single_file=recognise_single_file, configs=recognise_configs, lora=recognise_lora, embedding=recognise_embedding
)


RELEASED_WIDTH_ONLY = "diffusers' FLUX.1 converters split single blocks at the released width (3072), hard-coded"
"""Why diffusers reads BFL-layout files of the tiny models with no success (tests/model_saver/test_flux_interop.py
checks the same files' conversion at the released width)."""


def _tiny(kind: str, description: str) -> TinyModel:
    def build(seed: int) -> object:
        from onetrainer.util.tiny.models import build_tiny_pipeline

        return build_tiny_pipeline(kind, seed)

    unreadable = {"kohya": RELEASED_WIDTH_ONLY, "single-file": RELEASED_WIDTH_ONLY}
    return TinyModel(build, description, diffusers_cannot_read=unreadable)


ONETRAINER_OPTIONS = {
    DEV: {"transformer.guidance_scale": "guidance", "text_encoder_2_sequence_length": "t5_max_length"},
    SCHNELL: {"text_encoder_2_sequence_length": "t5_max_length"},
}
"""OneTrainer's settings that are our options: the guidance the transformer trains with, and the T5 length
(OneTrainer's second text encoder of FLUX.1 is T5; its default of 77 tokens is kept for old configs)."""


def _spec(name: str, modelspec: str, options: type[Section], hub_id: str) -> FamilySpec:
    return FamilySpec(
        name=name,
        title=TITLES[name],
        components=COMPONENTS,
        objective=Objective.FLOW_MATCHING,
        latent_channels=LATENT_CHANNELS,
        bucket_step=16,
        patch_size=2,
        default_resolution=1024,
        methods=frozenset({"lora", "full", "embedding"}),
        modelspec_architecture=modelspec,
        kohya_base_model_version="flux1",
        pipeline_classes=("FluxPipeline",),
        recognise=RECOGNISERS,
        lora_naming=LORA_NAMING,
        single_file=FLUX_LAYOUT,
        shipped_config=name,
        tiny={name: _tiny(name, f"tiny random-weight {TITLES[name]} (CLIP-L + T5, 2+2 transformer blocks)")},
        hub_ids=(hub_id,),
        options=options,
        onetrainer_model_types=("FLUX_DEV_1",),
        onetrainer_options=ONETRAINER_OPTIONS[name],
        onetrainer_bucket_step=64,
        onetrainer_layer_presets=ONETRAINER_PRESETS,
        onetrainer_sample_defaults={"width": 1024, "height": 1024, "cfg_scale": 3.5},
    )


FLUX_DEV = register_family(_spec(DEV, "flux-1-dev", FluxDevOptions, "black-forest-labs/FLUX.1-dev"))
FLUX_SCHNELL = register_family(_spec(SCHNELL, "flux-1-schnell", FluxSchnellOptions, "black-forest-labs/FLUX.1-schnell"))


def flux_options(spec: FamilySpec, options: Mapping[str, Any]) -> Any:
    """The family's validated options (`model.options`), defaults filled in."""
    assert spec.options is not None
    return spec.options.model_validate(dict(options))
