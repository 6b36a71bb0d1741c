"""The SD 3 families (Stable Diffusion 3.5 Large and Medium, SD 3 Medium): their specs and options.

A rectified-flow MMDiT (diffusers' `SD3Transformer2DModel`: joint blocks in which image and text tokens
attend together, each stream with its own modulation and MLP) conditioned on three text encoders:
CLIP ViT-L and OpenCLIP ViT-bigG (their penultimate hidden states, concatenated along the width and
zero-padded to T5's width, form the first 77 text tokens; their pooled outputs, concatenated, enter with
the timestep) and T5-XXL (its last hidden states are the remaining text tokens). T5 is optional, as in
diffusers' pipeline: without it its tokens are zeros. The 16-channel VAE downscales 8x and shifts then
scales its latents (0.0609, 1.5305); the MMDiT patches latents 2x2 inside, so image sides are multiples
of 16 px. Training draws logit-normal noise levels shifted by 3 (the scheduler's `shift`), as the SD 3
paper does, and may drop each encoder's conditioning (`parts.<encoder>.dropout`).

- 3.5 Large (8.1 B, and its distilled Large Turbo, the same architecture): 38 blocks with q/k RMS norms;
- 3.5 Medium (2.5 B): MMDiT-X, 24 blocks of which the first 13 add a second image self-attention
  (`dual_attention_layers`), with q/k norms; samples with optional skip-layer guidance;
- SD 3 Medium (2 B): 24 blocks, no q/k norms.

Original files are Stability's / ComfyUI's checkpoints (`model.diffusion_model.joint_blocks.*`, the VAE
under `first_stage_model.`, optionally the encoders under `text_encoders.clip_l/clip_g/t5xxl`); a file
without encoders takes them from `model.config`. kohya LoRAs use diffusers' module names, which ComfyUI
maps (`util.keymaps.sd3_lora`); LoRAs are saved in diffusers' (peft) keys by default, except one that trains
T5, which no tool but ComfyUI reads, and that only as kohya. A1111-style embeddings hold `clip_l`, `clip_g`
and `t5xxl`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from onetrainer.model.adapters.targets import T5_PRESETS
from onetrainer.model.text_encoders import CLIP_G, CLIP_L, T5_EMBEDDING_KEYS
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
from onetrainer.util.keymaps.sd3_lora import LORA_NAMING
from onetrainer.util.keymaps.sd3_single_file import SD3_LAYOUT, recognise_mmdit

LARGE, MEDIUM, SD3_MEDIUM = "sd35-large", "sd35-medium", "sd3-medium"
CANDIDATES = (SD3_MEDIUM, LARGE, MEDIUM)
TITLES = {LARGE: "SD 3.5 Large", MEDIUM: "SD 3.5 Medium", SD3_MEDIUM: "SD 3 Medium"}
T5 = "text_encoder_3"
WIDTHS = {2432: (LARGE,), 1536: (SD3_MEDIUM, MEDIUM)}
"""The released MMDiTs' widths (64 per block): a LoRA's layer widths name the model it was made for."""

TRANSFORMER_PRESETS: dict[str, tuple[str, ...]] = {
    "attn": (
        r"\.transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)$",
        r"\.transformer_blocks\.\d+\.attn2\.(to_q|to_k|to_v|to_out\.0)$",
    ),
    "attn-mlp": (r"\.transformer_blocks\.\d+\.ff(_context)?\.net\.(0\.proj|2)$",),
    "full": (r"\.transformer_blocks\.\d+\.norm1(_context)?\.linear$",),
}
"""diffusers' SD3Transformer2DModel, block by block: both streams' attention projections (and MMDiT-X's
second image attention), their MLPs, their adaptive-norm modulations."""
ONETRAINER_PRESETS = {
    "attn-only": OneTrainerLayerPreset("attn", same_as="attn"),
    "blocks": OneTrainerLayerPreset("transformer_block", same_as="full"),
}
"""OneTrainer's layer-filter presets of SD 3 and 3.5 (it has no attn-mlp for them)."""


class Sd3Options(Section):
    t5_max_length: int = Field(
        256, ge=1, le=512, description="T5 tokens read per caption (the rest is cut); diffusers' pipeline reads 256."
    )
    t5: bool = Field(
        True,
        description="Load T5-XXL and condition on it; false leaves it out (its tokens are zeros, as diffusers' "
        "pipeline runs without it): about 9.5 GB less, weaker prompt following.",
    )


class Sd35MediumOptions(Sd3Options):
    skip_layer_guidance: float = Field(
        0.0,
        ge=0,
        description="Sampling: skip-layer guidance scale, 0 for none (Stability samples 3.5 Medium with 2.5; "
        "it needs cfg above 1 and costs a third transformer pass in its steps).",
    )
    skip_layer_guidance_layers: list[int] = Field(
        [7, 8, 9], description="Sampling: the transformer blocks skipped for skip-layer guidance."
    )
    skip_layer_guidance_start: float = Field(
        0.01, ge=0, le=1, description="Sampling: skip-layer guidance starts after this fraction of the steps."
    )
    skip_layer_guidance_stop: float = Field(
        0.2, ge=0, le=1, description="Sampling: skip-layer guidance stops after this fraction of the steps."
    )


def unused_transformer_layers(transformer: Any) -> list[str]:
    """The last block's text stream only modulates (`context_pre_only`): it computes a text query (and its q
    norm) for attention outputs the block discards, so those layers never get a gradient."""
    last = len(transformer.transformer_blocks) - 1
    attention = transformer.transformer_blocks[last].attn
    prefix = f"transformer_blocks.{last}.attn."
    return [prefix + name for name in ("add_q_proj", "norm_added_q") if getattr(attention, name, None) is not None]


COMPONENTS = (
    Component(
        "transformer",
        Role.DENOISER,
        "MMDiT transformer",
        trains_by_default=True,
        kohya_prefix="lora_transformer_",
        lora_presets=TRANSFORMER_PRESETS,
        unused_layers=unused_transformer_layers,
        input_layer="pos_embed.proj.weight",
    ),
    CLIP_L,
    CLIP_G,
    Component(
        T5,
        Role.TEXT_ENCODER,
        "T5-XXL text encoder",
        tokenizer="tokenizer_3",
        kohya_prefix="lora_te3_",
        embedding_key=T5_EMBEDDING_KEYS[0],
        embedding_aliases=T5_EMBEDDING_KEYS[1:],
        optional=True,
        lora_presets=T5_PRESETS,
        lora_kohya_only="ComfyUI",
        takes_layer_skip=False,
    ),
    Component("vae", Role.VAE, "VAE"),
)


def recognise_single_file(shapes: Shapes) -> Evidence | None:
    """A Stability / ComfyUI checkpoint with an MMDiT (`joint_blocks.*`, bare or under `model.diffusion_model.`)."""
    family = recognise_mmdit(shapes)
    if family is None:
        return None
    reasons = {
        MEDIUM: "MMDiT-X blocks with a second self-attention (x_block.attn2)",
        LARGE: "MMDiT blocks with q/k norms and no second self-attention",
        SD3_MEDIUM: "MMDiT blocks without q/k norms",
    }
    return Evidence(family, reasons[family])


def recognise_configs(configs: Mapping[str, Mapping[str, Any]]) -> Evidence | None:
    transformer = configs.get("transformer", {})
    if transformer.get("_class_name") != "SD3Transformer2DModel":
        return None
    if transformer.get("dual_attention_layers"):
        return Evidence(MEDIUM, "transformer with dual_attention_layers (MMDiT-X)")
    if transformer.get("qk_norm"):
        return Evidence(LARGE, "transformer with qk_norm and no dual attention layers")
    return Evidence(SD3_MEDIUM, "transformer without qk_norm")


MMDIT_BLOCKS = (
    "lora_transformer_transformer_blocks_",
    "transformer.transformer_blocks.",
    "lora_unet_joint_blocks_",
    "lycoris_transformer_blocks_",
)
"""An MMDiT's blocks in our kohya names, diffusers' paths, sd-scripts' original names or SimpleTuner's LyCORIS
names."""
FLUX_ONLY = ("single_transformer_blocks", "single_blocks", "guidance")
"""What only FLUX.1's transformer (which shares the joint-block names) has."""
FLUX_WIDTH = 3072
ATTENTION_DOWN = ("attn_to_q.lora_down", "attn.to_q.lora_A", "attn_to_q.hada_w1_b", "x_block_attn_qkv.lora_down")


def _width(shapes: Shapes) -> int | None:
    """The in-width of a LoRA's image-attention query (the model's width), from its down factor."""
    return next((s[-1] for k, s in shapes.items() if any(m in k for m in ATTENTION_DOWN) and len(s) == 2), None)


def recognise_lora(shapes: Shapes) -> Evidence | None:
    """MMDiT blocks without FLUX.1's single blocks or width, or three text encoders with bigG second."""
    keys = list(shapes)
    blocks = any(key.startswith(MMDIT_BLOCKS) for key in keys)
    three = any(key.startswith(("lora_te3_", "text_encoder_3.")) for key in keys) and any(
        key.startswith(("lora_te2_", "text_encoder_2.")) for key in keys
    )
    width = _width(shapes)
    if (not blocks and not three) or any(marker in key for key in keys for marker in FLUX_ONLY) or width == FLUX_WIDTH:
        return None
    if any("attn2" in key for key in keys if key.startswith(MMDIT_BLOCKS)):
        return Evidence(MEDIUM, "MMDiT-X blocks with a second self-attention (attn2)")
    named = WIDTHS.get(width or 0, CANDIDATES)
    if len(named) == 1:
        return Evidence(named[0], f"MMDiT blocks {width} wide")
    return Evidence(None, "SD 3 LoRA (the architectures share its layout)", candidates=named)


def recognise_embedding(shapes: Shapes) -> Evidence | None:
    for t5 in T5_EMBEDDING_KEYS:
        if set(shapes) == {"clip_l", "clip_g", t5}:
            return Evidence(None, f"clip_l, clip_g and {t5} vectors", candidates=CANDIDATES)
    return None


RECOGNISERS = Recognisers(
    single_file=recognise_single_file, configs=recognise_configs, lora=recognise_lora, embedding=recognise_embedding
)


KOHYA_UNREAD = "diffusers' SD 3 LoRA loader reads diffusers keys only (no kohya names; ComfyUI reads both)"


def _tiny(name: str, description: str) -> TinyModel:
    def build(seed: int) -> object:
        from onetrainer.util.tiny.models import build_tiny_pipeline

        return build_tiny_pipeline(name, seed)

    return TinyModel(build, description, diffusers_cannot_read={"kohya": KOHYA_UNREAD})


MODELSPEC_ALIASES = {
    LARGE: ("stable-diffusion-3-5-large", "stable-diffusion-v3.5", "stable-diffusion-3"),
    MEDIUM: ("stable-diffusion-3-5-medium", "stable-diffusion-v3.5", "stable-diffusion-3"),
    SD3_MEDIUM: ("stable-diffusion-3-medium", "stable-diffusion-3"),
}
"""`modelspec.architecture` values other trainers write: sd-scripts' ("stable-diffusion-3-" + its model type:
`5-large`, `5-medium`, `medium`; bare for an unknown one) and OneTrainer's (`stable-diffusion-v3.5` for both
3.5 sizes; its SD 3 value is ours). They tell an embedding of the CLIP encoders alone from SDXL's."""


def _leaves_out(options: Sd3Options) -> dict[str, str]:
    """T5, when the options say to go without it."""
    return {} if options.t5 else {T5: "t5"}


def _spec(
    name: str, modelspec: str, kohya: str, options: type[Section], hub_ids: tuple[str, ...], description: str
) -> FamilySpec:
    return FamilySpec(
        name=name,
        title=TITLES[name],
        components=COMPONENTS,
        objective=Objective.FLOW_MATCHING,
        latent_channels=16,
        bucket_step=16,
        patch_size=2,
        default_resolution=1024,
        methods=frozenset({"lora", "full", "embedding"}),
        modelspec_architecture=modelspec,
        modelspec_aliases=MODELSPEC_ALIASES[name],
        kohya_base_model_version=kohya,
        pipeline_classes=("StableDiffusion3Pipeline",),
        recognise=RECOGNISERS,
        lora_naming=LORA_NAMING,
        default_lora_format="peft",
        single_file=SD3_LAYOUT,
        shipped_config=name,
        tiny={name: _tiny(name, f"tiny random-weight {TITLES[name]} ({description})")},
        hub_ids=hub_ids,
        options=options,
        config_defaults={"noise": {"timesteps": {"distribution": "logit-normal"}}},
        onetrainer_model_types=("STABLE_DIFFUSION_3",) if name == SD3_MEDIUM else ("STABLE_DIFFUSION_35",),
        onetrainer_options={f"{T5}.include": "t5"},
        onetrainer_fixed_options={"t5_max_length": 77},  # its data loader tokenizes T5 to CLIP's length
        onetrainer_bucket_step=64,
        onetrainer_layer_presets=ONETRAINER_PRESETS,
        onetrainer_sample_defaults={"width": 1024, "height": 1024, "diffusion_steps": 28},
        leaves_out=_leaves_out,
        largest_side=_positional_reach,
    )


def _positional_reach(config: Mapping[str, Any]) -> int:
    """The MMDiT's positional embedding is a table of `pos_embed_max_size` patches a side (192 in the released
    models: 3,072 px); diffusers refuses a larger image."""
    return int(config["pos_embed_max_size"]) * 8 * 2  # (pixels a latent holds, latents a patch holds)


SD35_LARGE = register_family(
    _spec(
        LARGE,
        "stable-diffusion-v3.5-large",
        "3-5-large",
        Sd3Options,
        ("stabilityai/stable-diffusion-3.5-large", "stabilityai/stable-diffusion-3.5-large-turbo"),
        "CLIP-L + bigG + T5, 2 MMDiT blocks with q/k norms",
    )
)
SD35_MEDIUM = register_family(
    _spec(
        MEDIUM,
        "stable-diffusion-v3.5-medium",
        "3-5-medium",
        Sd35MediumOptions,
        ("stabilityai/stable-diffusion-3.5-medium",),
        "CLIP-L + bigG + T5, 2 MMDiT-X blocks, the first with a second self-attention",
    )
)
SD3_MEDIUM_SPEC = register_family(
    _spec(
        SD3_MEDIUM,
        "stable-diffusion-v3-medium",
        "3-medium",
        Sd3Options,
        ("stabilityai/stable-diffusion-3-medium-diffusers",),
        "CLIP-L + bigG + T5, 2 MMDiT blocks without q/k norms",
    )
)


def sd3_options(spec: FamilySpec, options: Mapping[str, Any]) -> Any:
    """The family's validated options (`model.options`), defaults filled in."""
    assert spec.options is not None
    return spec.options.model_validate(dict(options))
