"""The Stable Diffusion 1.x and 2.x families: their specs, the one place their facts are written.

Both are a UNet2DConditionModel conditioned on one CLIP text encoder's last hidden states (CLIP ViT-L
for 1.x, OpenCLIP ViT-H for 2.x), a 4-channel VAE with an 8x downscale, and a DDPM schedule with
epsilon (1.x, 2.x-512) or v prediction (2.x-768). Their kohya LoRA names are the diffusers module
paths (how sd-scripts trains 1.x/2.x), and their A1111 embeddings hold one `emb_params` tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from onetrainer.model.adapters.targets import CLIP_PRESETS, UNET_ONETRAINER_PRESETS, UNET_PRESETS
from onetrainer.model.blocks import UNET_BLOCKS
from onetrainer.model.text_encoders import OPENCLIP_FUSED_ATTENTION
from onetrainer.util.family import (
    Component,
    Evidence,
    FamilySpec,
    Objective,
    Recognisers,
    Role,
    Shapes,
    TinyModel,
    Variant,
    register_family,
)
from onetrainer.util.keymaps.kohya_names import UNET_CLIP_COMPOUND_NAMES, DottedKohyaNaming
from onetrainer.util.keymaps.stable_diffusion_single_file import CLIP_LAYOUT, OPENCLIP_LAYOUT

METHODS = frozenset({"lora", "full", "embedding"})
LORA_NAMING = DottedKohyaNaming.of(
    (("lora_unet_", "unet"), ("lora_te_", "text_encoder"), ("lora_te1_", "text_encoder"), ("lycoris_", "unet")),
    UNET_CLIP_COMPOUND_NAMES,
    text_encoders=("text_encoder",),
)
"""sd-scripts trains 1.x/2.x LoRAs on a UNet with diffusers module names (only its later UNets use the
original names), so nearly every 1.x/2.x LoRA in the wild uses them: A1111/Forge convert them to their
own modules, ComfyUI maps both namings, and diffusers' kohya loader reads them. The text encoder uses
transformers CLIP paths with `text_model_` kept, for 2.x too (A1111 fuses q/k/v itself for OpenCLIP).
Read only: the text encoder under `lora_te1_` (diffusers' `convert_state_dict_to_kohya` writes it so, and
ComfyUI maps it) and SimpleTuner's LyCORIS UNet under `lycoris_`."""


def _components(
    text_encoder_title: str, all_or_none: tuple[str, ...] = (), pad_token: str | None = None
) -> tuple[Component, ...]:
    return (
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
        Component(
            "text_encoder",
            Role.TEXT_ENCODER,
            text_encoder_title,
            tokenizer="tokenizer",
            kohya_prefix="lora_te_",
            embedding_key="emb_params",
            lora_presets=CLIP_PRESETS,
            lora_all_or_none=all_or_none,
            pad_token=pad_token,
        ),
        Component("vae", Role.VAE, "VAE"),
    )


CONTEXT_WIDTHS = {768: "sd15", 1024: "sd2"}
"""Cross-attention and text-encoder width of the real models: CLIP ViT-L (1.x) and OpenCLIP ViT-H (2.x)."""
CANDIDATES = ("sd15", "sd2")
UNET = "model.diffusion_model."


def _by_width(width: int | None, what: str) -> Evidence | None:
    family = CONTEXT_WIDTHS.get(width or 0)
    return Evidence(family, f"{what} width {width}") if family else None


def _by_projection(shape: tuple[int, ...] | None) -> Evidence:
    """Tiny models have no real width: 2.x UNets project into attention with Linear layers, 1.x with 1x1 convs."""
    if shape is None:
        return Evidence(None, "SD 1.x/2.x keys; nothing says which", candidates=CANDIDATES)
    linear = len(shape) == 2
    return Evidence(
        "sd2" if linear else "sd15", "linear attention projections" if linear else "conv attention projections"
    )


def recognise_single_file(shapes: Shapes) -> Evidence | None:
    """An original 1.x / 2.x checkpoint: its text encoder's layout, else the UNet's context width or projections."""
    prediction = "v_prediction" if "v_pred" in shapes else None
    if any(key.startswith("cond_stage_model.transformer.") for key in shapes):
        return Evidence("sd15", "CLIP text encoder under cond_stage_model.transformer", prediction)
    if any(key.startswith("cond_stage_model.model.") for key in shapes):
        return Evidence("sd2", "OpenCLIP text encoder under cond_stage_model.model", prediction)
    unet = [key for key in shapes if key.startswith(UNET + "input_blocks.")]
    if not unet or any(key.startswith((UNET + "label_emb.", "conditioner.")) for key in shapes):
        return None
    context = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight") and len(s) == 2), None)
    proj_in = next((s for k, s in shapes.items() if k.startswith(UNET) and k.endswith("proj_in.weight")), None)
    evidence = _by_width(context, "cross-attention") or _by_projection(proj_in)
    return Evidence(evidence.family, evidence.reason, prediction, evidence.candidates)


def recognise_configs(configs: Mapping[str, Mapping[str, Any]]) -> Evidence | None:
    unet = configs.get("unet", {})
    if unet.get("addition_embed_type") == "text_time":
        return None
    width = unet.get("cross_attention_dim")
    evidence = _by_width(width if isinstance(width, int) else None, "cross-attention")
    if evidence is not None or "use_linear_projection" not in unet:
        return evidence
    return _by_projection((1, 1) if unet["use_linear_projection"] else (1, 1, 1, 1))


def _is_down(key: str) -> bool:
    return key.endswith((".lora_down.weight", ".lora_A.weight", ".hada_w1_b", ".hada_w2_b"))


def recognise_lora(shapes: Shapes) -> Evidence | None:
    """A LoRA over diffusers module names with one text encoder (`lora_te_`, or `lora_te1_` as diffusers'
    kohya converter writes it, or `text_encoder.`)."""
    keys = list(shapes)
    own = (
        "lora_unet_down_blocks_",
        "lora_unet_up_blocks_",
        "lora_unet_mid_block_",
        "lora_te_",
        "lora_te1_",
        "unet.",
        "text_encoder.",
    )
    if not any(key.startswith(own) for key in keys) or any(
        key.startswith(("lora_te2_", "text_encoder_2.")) for key in keys
    ):
        return None
    if any(".transformer_blocks.1." in key or "_transformer_blocks_1_" in key for key in keys):
        return None  # 1.x/2.x attention blocks hold one transformer block; deeper ones are another family's
    for marker, what in (
        ("attn2_to_k", "cross-attention"),
        ("attn2.to_k", "cross-attention"),
        ("q_proj", "text encoder"),
    ):
        width = next((s[1] for k, s in shapes.items() if marker in k and _is_down(k) and len(s) >= 2), None)
        evidence = _by_width(width, what)
        if evidence is not None:
            return evidence
    proj_in = next((s for k, s in shapes.items() if "proj_in" in k and _is_down(k)), None)
    return _by_projection(proj_in)


def recognise_embedding(shapes: Shapes) -> Evidence | None:
    """One tensor of vectors (`emb_params`, a legacy `string_to_param`, or a diffusers token key)."""
    if len(shapes) != 1:
        return None
    width = next(iter(shapes.values()))[-1]
    return _by_width(width, "vector") or Evidence(None, f"vector width {width} matches no known family")


RECOGNISERS = Recognisers(
    single_file=recognise_single_file,
    configs=recognise_configs,
    lora=recognise_lora,
    embedding=recognise_embedding,
)


def _tiny(kind: str, description: str) -> TinyModel:
    def build(seed: int) -> object:
        from onetrainer.util.tiny.models import build_tiny_pipeline

        return build_tiny_pipeline(kind, seed)

    return TinyModel(build, description)


SD15 = register_family(
    FamilySpec(
        name="sd15",
        title="SD 1.x",
        is_default=True,
        components=_components("CLIP ViT-L text encoder"),
        objective=Objective.DDPM,
        latent_channels=4,
        bucket_step=8,
        patch_size=1,
        default_resolution=512,
        methods=METHODS,
        modelspec_architecture="stable-diffusion-v1",
        kohya_base_model_version="sd_v1",
        kohya_v_suffix=True,
        pipeline_classes=("StableDiffusionPipeline",),
        recognise=RECOGNISERS,
        lora_naming=LORA_NAMING,
        single_file=CLIP_LAYOUT,
        shipped_config="sd15",
        tiny={"sd15": _tiny("sd15", "tiny random-weight SD 1.5")},
        onetrainer_model_types=("STABLE_DIFFUSION_15",),
        onetrainer_layer_presets=UNET_ONETRAINER_PRESETS,
        onetrainer_sample_defaults={"cfg_scale": 7.5, "noise_scheduler": "EULER_A"},
        hub_ids=(
            "openai/clip-vit-large-patch14",
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            "runwayml/stable-diffusion-v1-5",
        ),
    )
)

SD2 = register_family(
    FamilySpec(
        name="sd2",
        title="SD 2.x",
        # OpenCLIP ViT-H was trained padding with "!" (id 0), as the released 2.x tokenizers pad
        components=_components("OpenCLIP ViT-H text encoder", OPENCLIP_FUSED_ATTENTION, pad_token="!"),
        objective=Objective.DDPM,
        latent_channels=4,
        bucket_step=8,
        patch_size=1,
        default_resolution=512,
        methods=METHODS,
        modelspec_architecture="stable-diffusion-v2-512",
        kohya_base_model_version="sd_v2",
        kohya_v_suffix=True,
        kohya_v2=True,
        pipeline_classes=("StableDiffusionPipeline",),
        recognise=RECOGNISERS,
        lora_naming=LORA_NAMING,
        single_file=OPENCLIP_LAYOUT,
        tiny={
            "sd2": _tiny("sd2", "tiny random-weight SD 2.x, epsilon prediction"),
            "sd2-v": _tiny("sd2-v", "tiny random-weight SD 2.x, v-prediction"),
        },
        hub_ids=(
            "stabilityai/stable-diffusion-2-1",
            "stabilityai/stable-diffusion-2-1-base",
            "stabilityai/stable-diffusion-2",
        ),
        shipped_config="sd2-768-v",
        onetrainer_model_types=(
            "STABLE_DIFFUSION_21",
            "STABLE_DIFFUSION_21_BASE",
            "STABLE_DIFFUSION_20",
            "STABLE_DIFFUSION_20_BASE",
        ),
        onetrainer_layer_presets=UNET_ONETRAINER_PRESETS,
        onetrainer_sample_defaults={"width": 768, "height": 768, "cfg_scale": 7.5},
        variants={
            "epsilon": Variant(modelspec_architecture="stable-diffusion-v2-512", shipped_config="sd2-512"),
            "v_prediction": Variant(
                modelspec_architecture="stable-diffusion-v2-768-v", default_resolution=768, shipped_config="sd2-768-v"
            ),
        },
    )
)
