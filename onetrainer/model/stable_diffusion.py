"""The Stable Diffusion 1.x and 2.x families: their specs, the one place their facts are written.

Both are a UNet2DConditionModel conditioned on one CLIP text encoder's last hidden states (CLIP ViT-L
for 1.x, OpenCLIP ViT-H for 2.x), a 4-channel VAE with an 8x downscale, and a DDPM schedule with
epsilon (1.x, 2.x-512) or v prediction (2.x-768). Their kohya LoRA names are the diffusers module
paths (how sd-scripts trains 1.x/2.x), and their A1111 embeddings hold one `emb_params` tensor.
"""

from __future__ import annotations

from collections.abc import Mapping

from onetrainer.model.adapters.targets import CLIP_PRESETS, UNET_PRESETS
from onetrainer.util.keymaps.stable_diffusion_lora import SD_LORA_NAMING
from onetrainer.util.family import (
    Component,
    Evidence,
    FamilySpec,
    Objective,
    Role,
    Shapes,
    TinyModel,
    Variant,
    register_family,
)

METHODS = frozenset({"lora", "full", "embedding"})


def _components(text_encoder_title: str) -> tuple[Component, ...]:
    return (
        Component("unet", Role.DENOISER, "UNet", trains_by_default=True, kohya_prefix="lora_unet_", lora_presets=UNET_PRESETS),
        Component(
            "text_encoder",
            Role.TEXT_ENCODER,
            text_encoder_title,
            tokenizer="tokenizer",
            kohya_prefix="lora_te_",
            embedding_key="emb_params",
            lora_presets=CLIP_PRESETS,
        ),
        Component("vae", Role.VAE, "VAE"),
    )


def recognise(shapes: Shapes, metadata: Mapping[str, str]) -> Evidence | None:
    """An original SD 1.x / 2.x checkpoint, from its keys: CLIP (1.x) or OpenCLIP (2.x) text encoder,
    else the cross-attention width, else (tiny models) the attention projections' kind."""
    from onetrainer.util.keymaps.stable_diffusion_single_file import detect_single_file_family

    info = detect_single_file_family(shapes)
    if info.family not in ("sd15", "sd2"):
        return None
    prediction = "v_prediction" if info.prediction_type == "v" else None
    return Evidence(info.family, info.reason, prediction)


def _tiny(kind: str, description: str) -> TinyModel:
    def build(seed: int) -> object:
        from onetrainer.util.tiny.models import build_tiny_pipeline

        return build_tiny_pipeline(kind, seed)

    return TinyModel(build, description)


SD15 = register_family(
    FamilySpec(
        name="sd15",
        title="SD 1.x",
        components=_components("CLIP ViT-L text encoder"),
        objective=Objective.DDPM,
        latent_channels=4,
        bucket_step=8,
        patch_size=1,
        default_resolution=512,
        methods=METHODS,
        modelspec_architecture="stable-diffusion-v1",
        kohya_base_model_version="sd_v1",
        pipeline_classes=("StableDiffusionPipeline",),
        recognise=recognise,
        lora_naming=SD_LORA_NAMING,
        tiny={"sd15": _tiny("sd15", "tiny random-weight SD 1.5")},
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
        components=_components("OpenCLIP ViT-H text encoder"),
        objective=Objective.DDPM,
        latent_channels=4,
        bucket_step=8,
        patch_size=1,
        default_resolution=512,
        methods=METHODS,
        modelspec_architecture="stable-diffusion-v2-512",
        kohya_base_model_version="sd_v2",
        pipeline_classes=("StableDiffusionPipeline",),
        recognise=recognise,
        lora_naming=SD_LORA_NAMING,
        tiny={
            "sd2": _tiny("sd2", "tiny random-weight SD 2.x, epsilon prediction"),
            "sd2-v": _tiny("sd2-v", "tiny random-weight SD 2.x, v-prediction"),
        },
        hub_ids=(
            "stabilityai/stable-diffusion-2-1",
            "stabilityai/stable-diffusion-2-1-base",
            "stabilityai/stable-diffusion-2",
        ),
        variants={"v_prediction": Variant(modelspec_architecture="stable-diffusion-v2-768-v", default_resolution=768)},
    )
)
